"""Check texts with an exported policy (guard.onnx.export) on onnxruntime, without the torch model.

The folder holds the graph, its manifest and the tokenizer. Rendering (prompt template, chat
template) and tokenisation are the same as the torch path's for text models (right padding, no
added special tokens when a chat template is used, field values escaped as the policy says); the
graph gives each selected head's similarity to each label (centroid or nearest prototype), and the
vote, calibration and thresholds are the torch path's own code (`PolicyHeads.verdicts_from_similarities`), so the same similarities give the same
verdict.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from guard.check.engine import PolicyHeads, Verdict
from guard.errors import GuardError
from guard.method.artifact import Artifact
from guard.models.capture import length_buckets
from guard.onnx.format import FORMAT, FORMAT_VERSION, MANIFEST, calibration_from_dict, onnxruntime_module
from guard.policy import Label, fill_prompt


class OnnxGuard:
    """An exported policy on onnxruntime: `check` / `check_batch` as `Guard`, for text inputs."""

    def __init__(self, directory: Path, manifest: dict, session, tokenizer):
        self.directory = directory
        self.manifest = manifest
        self.session = session
        self.tokenizer = tokenizer
        self.artifact = _artifact(manifest)
        self._heads = PolicyHeads(self.artifact)
        self._chat = bool(getattr(tokenizer, "chat_template", None))
        self._lock = threading.Lock()  # Hugging Face fast tokenizers are not safe to share between threads

    @classmethod
    def load(cls, directory: str | Path, *, threads: int | None = None) -> OnnxGuard:
        """Open an export folder written by `guard export NAME --onnx DIR` (threads: onnxruntime's
        intra-op threads; None lets it choose)."""
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise GuardError(
                f"'{directory}' holds no ONNX export ({MANIFEST} missing); run 'guard export NAME --onnx DIR'"
            )
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GuardError(f"{path}: not a readable export manifest ({exc})") from None
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise GuardError(
                f"{path}: export format {manifest.get('format')} v{manifest.get('format_version')} is not "
                f"{FORMAT} v{FORMAT_VERSION}; export the policy again with this guard"
            )
        ort = onnxruntime_module()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        model_file = directory / manifest["onnx"]["file"]
        try:
            session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise GuardError(f"cannot open {model_file}: {str(exc).splitlines()[0]}") from None
        return cls(directory, manifest, session, _tokenizer(directory / manifest["tokenizer"]))

    @property
    def name(self) -> str:
        return self.artifact.name

    def render(self, text: str | None = None, **fields: str) -> str:
        """The chat-rendered prompt the graph reads, as the torch path renders it."""
        if text is not None:
            fields["text"] = text
        if "text" in fields and not str(fields["text"]).strip():
            raise GuardError("empty text: nothing to check")
        try:
            prompt = fill_prompt(self.artifact.prompt, fields, self.artifact.escape)
        except KeyError as exc:
            raise GuardError(f"the policy prompt needs a value for {{{exc.args[0]}}}") from None
        if not self._chat:
            return prompt
        with self._lock:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )

    def run(self, rendered: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """One batch through the graph: heads `[B, k, head_dim]`, similarities `[B, k, labels]`."""
        with self._lock:
            batch = self.tokenizer(list(rendered), add_special_tokens=not self._chat, padding=True, return_tensors="np")
        feeds = {
            "input_ids": batch["input_ids"].astype(np.int64),
            "attention_mask": batch["attention_mask"].astype(np.int64),
        }
        heads, sims = self.session.run(["heads", "similarities"], feeds)
        return heads, sims

    def check(self, text: str | None = None, **fields: str) -> Verdict:
        item = {"text": text, **fields} if text is not None else fields
        return self.check_batch([item])[0]

    def check_batch(self, inputs: Sequence[str | dict], batch_size: int = 16) -> list[Verdict]:
        """Verdicts for texts (or dicts of prompt fields), in input order; length-bucketed batches."""
        items = [item if isinstance(item, dict) else {"text": item} for item in inputs]
        if any(item.get("images") for item in items):
            raise GuardError("the ONNX engine checks text only; check images with the torch engine")
        rendered = [self.render(**item) for item in items]
        with self._lock:
            lengths = [len(self.tokenizer(r, add_special_tokens=not self._chat)["input_ids"]) for r in rendered]
        results: list[Verdict | None] = [None] * len(items)
        for group in length_buckets(lengths, batch_size) if len(items) > batch_size else [list(range(len(items)))]:
            heads, sims = self.run([rendered[i] for i in group])
            verdicts = self._heads.verdicts_from_similarities(torch.from_numpy(sims), torch.from_numpy(heads))
            for i, verdict in zip(group, verdicts):
                results[i] = verdict
        return results  # type: ignore[return-value]


def _tokenizer(directory: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as exc:
        raise GuardError(f"cannot load the tokenizer in {directory}: {str(exc).splitlines()[0]}") from None
    tokenizer.padding_side = "right"  # the graph finds the last real token from the mask
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _artifact(manifest: dict) -> Artifact:
    """What the verdict code reads of a compiled policy (no centroids or head scores: the graph has them)."""
    labels = [Label(lab["name"], bool(lab["flagged"]), lab.get("description", "")) for lab in manifest["labels"]]
    heads = [(int(layer), int(head)) for layer, head in manifest["heads"]]
    empty = torch.empty(0)
    return Artifact(
        name=manifest["policy"],
        version=manifest["version"],
        prompt=manifest["prompt"],
        labels=labels,
        model_reference=manifest["model"]["reference"],
        model_fingerprint=manifest["model"]["fingerprint"],
        model_info={"model_type": manifest["model"].get("model_type")},
        scoring=manifest.get("scoring", ""),
        heads=heads,
        head_accuracy=empty,
        head_margin=empty,
        centroids=empty,
        exemplar_vectors=empty,
        exemplar_texts=[],
        exemplar_labels=[],
        description=manifest.get("description", ""),
        calibration=calibration_from_dict(manifest.get("calibration")),
        metrics={"method": manifest.get("method", {})},  # vote, escape: exports before 0.2 had neither
    )
