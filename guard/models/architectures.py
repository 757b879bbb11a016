"""Where SAV's tensor lives in each architecture: one declarative row per model family.

SAV reads the input of each decoder layer's attention output projection (`o_proj`): all query
heads' outputs, concatenated, `[batch, tokens, heads * head_dim]` (TransformerLens' `hook_z`).
A row says where the decoder layers are, what to call inside a layer, and which Auto class loads
the family. Head count and size are read from the model's (text) config, never assumed.
Adding a family = adding a row here and a tiny-model fixture in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from guard.errors import ModelError


@dataclass(frozen=True)
class Architecture:
    family: str
    layers: str  # dotted path from the loaded model to the ModuleList of decoder layers
    o_proj: str = "self_attn.o_proj"  # dotted path inside one decoder layer
    auto_class: str = "AutoModelForCausalLM"  # transformers class that loads the whole model
    multimodal: bool = False


_TEXT = "model.layers"

# config.model_type -> Architecture
ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("llama", _TEXT),
    "mistral": Architecture("mistral", _TEXT),
    "qwen2": Architecture("qwen2", _TEXT),
    "qwen3": Architecture("qwen3", _TEXT),
    "gemma": Architecture("gemma", _TEXT),
    "gemma2": Architecture("gemma2", _TEXT),
    "gemma3_text": Architecture("gemma3_text", _TEXT),
    "phi3": Architecture("phi3", _TEXT),
    "smollm3": Architecture("smollm3", _TEXT),
    "olmo2": Architecture("olmo2", _TEXT),
    "granite": Architecture("granite", _TEXT),
}


def _get(root: nn.Module, dotted: str) -> nn.Module:
    module = root
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


@dataclass(frozen=True)
class HeadLayout:
    """The model's attention-head geometry, from its config, checked against the weights."""

    num_layers: int
    num_heads: int
    head_dim: int


def architecture_for(config) -> Architecture:
    arch = ARCHITECTURES.get(config.model_type)
    if arch is None:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ModelError(f"model type '{config.model_type}' is not supported yet (supported: {known})")
    return arch


def head_layout(config) -> HeadLayout:
    text = config.get_text_config()
    num_heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // num_heads
    return HeadLayout(num_layers=text.num_hidden_layers, num_heads=num_heads, head_dim=head_dim)


def o_proj_modules(model: nn.Module, arch: Architecture, layout: HeadLayout) -> list[nn.Module]:
    """The `o_proj` of every decoder layer, in order; verifies the geometry against the weights."""
    try:
        layers = _get(model, arch.layers)
        projections = [_get(layer, arch.o_proj) for layer in layers]
    except AttributeError as exc:
        raise ModelError(f"{arch.family}: cannot find '{arch.layers}[*].{arch.o_proj}' in the model ({exc})") from None
    if len(projections) != layout.num_layers:
        raise ModelError(f"{arch.family}: config says {layout.num_layers} layers, model has {len(projections)}")
    width = getattr(projections[0], "in_features", None)
    if width is not None and width != layout.num_heads * layout.head_dim:
        raise ModelError(
            f"{arch.family}: o_proj takes {width} features, expected heads x head_dim = "
            f"{layout.num_heads} x {layout.head_dim}"
        )
    return projections
