"""A loaded model: weights, tokenizer, head layout, fingerprint, and how to build its inputs."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from guard.errors import GuardError, ModelError, first_line
from guard.models.architectures import Architecture, HeadLayout, architecture_for, head_layout, o_proj_modules
from guard.models.capture import HeadTap
from guard.models.images import GuardImage
from guard.models.inputs import ImageInputs, ModelInput, TextInputs, Tokenized
from guard.models.loading import ModelSource, fingerprint, gguf_as_directory, hub_snapshot, resolve
from guard.models.offsets import Span, iter_token_spans, tokenizer_offsets
from guard.models.processors import load_processor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device '{device}' requested but no CUDA GPU is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device '{device}' (use cpu, cuda, cuda:N or auto)") from None


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (per forward) to `threads`, else to $GUARD_THREADS when set;
    otherwise leave torch's default (one per core). Returns the count in force.

    Process-wide. One forward at a time (the CLI, a server's single model worker) is fastest with
    every core; N threads checking at once on C cores are faster with about C / N each (on 2 cores
    and 4 threads, 1 thread per forward was 1.23x faster than the default; see BENCHMARKS.md).
    """
    if threads is None and os.environ.get("GUARD_THREADS"):
        try:
            threads = int(os.environ["GUARD_THREADS"])
        except ValueError:
            raise GuardError(f"GUARD_THREADS must be a whole number, not '{os.environ['GUARD_THREADS']}'") from None
    if threads is not None:
        if threads < 1:
            raise GuardError(f"threads must be at least 1 (got {threads})")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype is None:  # bfloat16 halves memory and time on GPUs; CPUs are fastest and exact in float32
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype '{dtype}' (use one of: {', '.join(DTYPES)})")
    return DTYPES[dtype]


@dataclass
class LoadedModel:
    """A model ready for guard. Safe to share between threads: forwards run concurrently (the head
    tap's hooks are installed once, see guard.models.capture), and tokenizer/processor calls take a lock
    (Hugging Face fast tokenizers are not safe to call from several threads at once)."""

    source: ModelSource
    model: nn.Module
    tokenizer: object  # a transformers tokenizer (text models) or processor (vision-language models)
    arch: Architecture
    layout: HeadLayout
    o_projs: list[nn.Module]
    fingerprint: str
    device: torch.device
    dtype: torch.dtype
    info: dict = field(default_factory=dict)
    tap: HeadTap = field(init=False, repr=False)
    inputs: TextInputs | ImageInputs = field(init=False, repr=False)

    def __post_init__(self):
        lm_head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        self.tap = HeadTap(self.o_projs, self.layout.num_heads, self.layout.head_dim, lm_head)
        if self.arch.multimodal:
            self.inputs = ImageInputs(self)
        else:
            name = f"model '{self.source.reference}' ({self.arch.family})"
            self.inputs = TextInputs(self.tokenizer, self.device, name)
        self._lock = threading.RLock()

    @property
    def takes_images(self) -> bool:
        return self.inputs.takes_images

    def prepare(self, prompt: str, images: Sequence[GuardImage] = ()) -> str | ModelInput:
        """What `encode` takes for one filled-in prompt: the chat-rendered string (text models),
        or a ModelInput with the images (vision-language models). The last token is where the
        answer would begin."""
        with self._lock:
            return self.inputs.prepare(prompt, images)

    def tokenize(self, rendered: str | ModelInput) -> Tokenized:
        """A prepared input tokenised once (text models; a ModelInput gets its estimated length):
        `encode` builds batches from these without tokenising again."""
        with self._lock:
            return self.inputs.tokenize(rendered)

    def encode(self, rendered: Sequence[str | ModelInput | Tokenized]) -> dict[str, torch.Tensor]:
        """Prepared inputs as one right-padded batch (positions of real tokens do not move, so a
        padded row computes exactly what it would alone); Tokenized text inputs are only padded."""
        with self._lock:
            return self.inputs.encode(rendered)

    def token_count(self, rendered: str | ModelInput) -> int:
        with self._lock:
            return self.inputs.token_count(rendered)

    def token_spans(self, text: str, start: int = 0, end: int | None = None) -> Iterator[Span]:
        """The character spans of the tokens of `text[start:end]` alone, lazily (guard.models.offsets)."""
        offsets = tokenizer_offsets(self.tokenizer)

        def locked(piece: str) -> list[Span]:
            with self._lock:
                return offsets(piece)

        return iter_token_spans(text, locked, start=start, end=end)


def load_model(
    reference: str, base_dir: Path | None = None, device: str = "auto", dtype: str | None = None
) -> LoadedModel:
    """Resolve and load a model reference (see guard.models.loading.resolve)."""
    source = resolve(reference, base_dir)
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    if source.kind == "hub":
        directory = hub_snapshot(source.reference)
        fp = fingerprint(source, directory)
    elif source.kind in ("bundled", "gguf"):
        fp = fingerprint(source)
        directory = gguf_as_directory(source.path, fp)
    else:
        directory = source.path
        fp = fingerprint(source)
    return _load_directory(source, directory, fp, torch_device, torch_dtype)


def _load_directory(
    source: ModelSource, directory: Path, fp: str, device: torch.device, dtype: torch.dtype
) -> LoadedModel:
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(directory)
    except Exception as exc:
        raise ModelError(f"cannot read the config of '{source.reference}': {exc}") from None
    arch = architecture_for(config)
    layout = head_layout(config)
    auto = getattr(transformers, arch.auto_class)
    try:
        model = auto.from_pretrained(directory, dtype=dtype, attn_implementation=arch.attention)
        if arch.multimodal:
            tokenizer = load_processor(directory, arch.processor)
        else:
            tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot load model '{source.reference}': {first_line(exc)}") from None
    model.to(device).eval()
    text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    text_tokenizer.padding_side = "right"
    if text_tokenizer.pad_token is None:
        text_tokenizer.pad_token = text_tokenizer.eos_token
    info = {
        "reference": source.reference,
        "kind": source.kind,
        "model_type": config.model_type,
        "num_layers": layout.num_layers,
        "num_heads": layout.num_heads,
        "head_dim": layout.head_dim,
        "config": config.to_diff_dict(),
    }
    return LoadedModel(
        source=source,
        model=model,
        tokenizer=tokenizer,
        arch=arch,
        layout=layout,
        o_projs=o_proj_modules(model, arch, layout),
        fingerprint=fp,
        device=device,
        dtype=dtype,
        info=info,
    )
