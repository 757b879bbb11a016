"""A loaded model: weights, tokenizer, head layout, fingerprint, and how to build its inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from guard.errors import GuardError, ModelError
from guard.images import GuardImage
from guard.models import inputs
from guard.models.architectures import Architecture, HeadLayout, architecture_for, head_layout, o_proj_modules
from guard.models.inputs import ModelInput
from guard.models.loading import ModelSource, fingerprint, gguf_as_directory, hub_snapshot, resolve
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


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype is None:  # bfloat16 halves memory and time on GPUs; CPUs are fastest and exact in float32
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype '{dtype}' (use one of: {', '.join(DTYPES)})")
    return DTYPES[dtype]


@dataclass
class LoadedModel:
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

    def chat(self, prompt: str, num_images: int = 0) -> str:
        """The full prompt text the model sees: chat template with the generation prompt added,
        so the last token is where the answer would begin; vision-language models get one image
        placeholder per image where their family puts it (see guard.models.inputs)."""
        if self.arch.multimodal:
            return inputs.render(self, prompt, num_images)
        if num_images:
            raise GuardError(
                f"model '{self.source.reference}' ({self.arch.family}) is a text model; it cannot take images"
            )
        template = getattr(self.tokenizer, "chat_template", None)
        if not template:
            return prompt
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    def prepare(self, prompt: str, images: Sequence[GuardImage] = ()) -> str | ModelInput:
        """What `encode` takes for one filled-in prompt: the chat-rendered string for text models
        (as before images existed), a ModelInput with the images for vision-language models."""
        rendered = self.chat(prompt, len(images))
        return ModelInput(rendered, tuple(images)) if self.arch.multimodal else rendered

    def encode(self, rendered: list[str | ModelInput]) -> dict[str, torch.Tensor]:
        """Tokenise chat-rendered prompts, right-padded (positions of real tokens do not move,
        so a padded row computes exactly what it would alone)."""
        if self.arch.multimodal:
            return inputs.encode(self, rendered)
        batch = self.tokenizer(
            rendered,
            add_special_tokens=not getattr(self.tokenizer, "chat_template", None),
            padding=True,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    def token_count(self, rendered: str | ModelInput) -> int:
        if self.arch.multimodal:
            return inputs.token_count(self, rendered)
        return len(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])


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
        model = auto.from_pretrained(directory, dtype=dtype, attn_implementation="sdpa")
        if arch.multimodal:
            tokenizer = load_processor(directory, arch.processor)
        else:
            tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot load model '{source.reference}': {str(exc).splitlines()[0]}") from None
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
