"""Where SAV's tensor lives in each architecture: one declarative row per model family.

SAV reads the input of each decoder layer's attention output projection (`o_proj`): all query
heads' outputs, concatenated, `[batch, tokens, heads * head_dim]` (TransformerLens' `hook_z`).
A row says where the decoder layers are, what to call inside a layer, and which Auto class loads
the family. Head count and size are read from the model's (text) config, never assumed.
Adding a family = adding a row here and a tiny-model fixture in the tests.

Vision-language rows also name the family's processor class (built images-only, see
`guard.models.processors`) and where images go in the prompt: `before` / `after` the text in
the user turn's content (the chat template turns each image part into the family's image
placeholder, which the processor expands into the image's tokens), or `prefix`: the family has no
chat template and guard writes one image token per image before the prompt (PaliGemma).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch.nn as nn

from guard import plugins
from guard.errors import ModelError

# where a family's images go: before / after the text in the user turn, or image tokens first
ImagePlacement = Literal["before", "after", "prefix"]
IMAGE_PLACEMENTS: tuple[str, ...] = get_args(ImagePlacement)


@dataclass(frozen=True)
class Architecture:
    family: str
    layers: str  # dotted path from the loaded model to the ModuleList of decoder layers
    o_proj: str = "self_attn.o_proj"  # dotted path inside one decoder layer
    auto_class: str = "AutoModelForCausalLM"  # transformers class that loads the whole model
    multimodal: bool = False
    processor: str | None = None  # transformers processor class (vision-language models)
    images: ImagePlacement = "before"  # where images go: "before" / "after" the text in the user turn, or "prefix"
    needs_image: bool = False  # the model cannot run without at least one image per input
    attention: str = "sdpa"  # transformers attn_implementation; "eager" where a family has no SDPA path

    def __post_init__(self):
        if self.multimodal and not self.processor:
            raise ValueError(f"{self.family}: a multimodal row needs its processor class")
        if self.images not in IMAGE_PLACEMENTS:
            raise ValueError(f"{self.family}: images must be one of {IMAGE_PLACEMENTS}")


def _vlm(family: str, processor: str, layers: str = "model.language_model.layers", **kw) -> Architecture:
    """A vision-language row: loaded with AutoModelForImageTextToText, decoder layers of the language model."""
    return Architecture(
        family, layers, auto_class="AutoModelForImageTextToText", multimodal=True, processor=processor, **kw
    )


_TEXT = "model.layers"

# config.model_type -> Architecture
ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("llama", _TEXT),
    "mistral": Architecture("mistral", _TEXT),
    "qwen2": Architecture("qwen2", _TEXT),
    "qwen3": Architecture("qwen3", _TEXT),
    "gemma": Architecture("gemma", _TEXT),
    "gemma2": Architecture("gemma2", _TEXT, attention="eager"),  # no SDPA path in transformers
    "gemma3_text": Architecture("gemma3_text", _TEXT),
    "phi3": Architecture("phi3", _TEXT),
    "smollm3": Architecture("smollm3", _TEXT),
    "olmo2": Architecture("olmo2", _TEXT),
    "granite": Architecture("granite", _TEXT),
    # vision-language models: images before the text, as in each family's own examples and in SAV
    "llava": _vlm("llava", "LlavaProcessor"),  # LLaVA-1.5
    "llava_next": _vlm("llava_next", "LlavaNextProcessor"),  # LLaVA-NeXT (1.6)
    "llava_onevision": _vlm("llava_onevision", "LlavaOnevisionProcessor"),
    "qwen2_vl": _vlm("qwen2_vl", "Qwen2VLProcessor"),
    "qwen2_5_vl": _vlm("qwen2_5_vl", "Qwen2_5_VLProcessor"),
    "idefics3": _vlm("idefics3", "Idefics3Processor", layers="model.text_model.layers"),
    "smolvlm": _vlm("smolvlm", "SmolVLMProcessor", layers="model.text_model.layers"),
    "gemma3": _vlm("gemma3", "Gemma3Processor"),  # Gemma 3 4B and larger (1B is text-only: gemma3_text)
    "paligemma": _vlm("paligemma", "PaliGemmaProcessor", images="prefix", needs_image=True),
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


def register_architecture(model_type: str, arch: Architecture, *, replace: bool = False) -> None:
    """Teach guard a model family: `model_type` is the config's `model_type`. Refuses to replace a
    known row unless `replace` (a plugin fixing a row on purpose)."""
    if not isinstance(arch, Architecture):
        raise ModelError(f"architecture '{model_type}' must be a guard.models.Architecture, not {type(arch).__name__}")
    if model_type in ARCHITECTURES and not replace and ARCHITECTURES[model_type] != arch:
        raise ModelError(f"architecture '{model_type}' is already registered; pass replace=True to override it")
    ARCHITECTURES[model_type] = arch


def architecture_for(config) -> Architecture:
    plugins.load_entry_points(plugins.ARCHITECTURES_GROUP, register_architecture)
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
