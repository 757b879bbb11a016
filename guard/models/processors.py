"""Building a vision-language model's processor: the real transformers class, images only, PIL backend.

Why not `AutoProcessor.from_pretrained`: in transformers 5 the processors of Qwen2-VL, Qwen2.5-VL,
LLaVA-OneVision and SmolVLM also own a *video* processor, and every video processor needs
torchvision. guard checks images, never videos, and ships with the small CPU build of torch, beside
which PyPI's torchvision does not import. So guard builds the family's real processor class with
its tokenizer and its image processor only (the video slot is dropped from the class's
sub-processor list; nothing else of the class changes), and always picks the image processor's
PIL backend. Picking PIL even where torchvision is installed keeps the pixels, hence the
activations and the activation cache, identical on every machine.
"""

from __future__ import annotations

import inspect
from functools import cache
from pathlib import Path

from guard.errors import ModelError

_DROPPED = ("video_processor",)


@cache
def image_only(processor_class: type) -> type:
    """`processor_class` without its video processor (the class itself when it has none).

    A subclass with the same name whose `get_attributes()` leaves out `video_processor`, so
    `ProcessorMixin.__init__` neither requires nor type-checks one; the class's own `__init__`
    and prompt expansion run unchanged. Its chat templating is `ProcessorMixin`'s: the only
    override among guard's families (SmolVLM's) adds video defaults read from the video processor.
    """
    from transformers.processing_utils import ProcessorMixin

    attributes = processor_class.get_attributes()
    kept = [name for name in attributes if name not in _DROPPED]
    if kept == attributes:
        return processor_class
    # ProcessorMixin pairs positional sub-processors with attribute names in order, so dropping
    # a slot is only safe when it comes after the kept ones (true for every family guard knows).
    if attributes[: len(kept)] != kept:
        raise ModelError(f"{processor_class.__name__}: cannot drop its video processor (unexpected argument order)")
    return type(
        processor_class.__name__,
        (processor_class,),
        {
            "__module__": processor_class.__module__,
            "__doc__": f"{processor_class.__name__} for images only (built by guard; see guard.models.processors).",
            "get_attributes": classmethod(lambda cls: list(kept)),
            "apply_chat_template": ProcessorMixin.apply_chat_template,
        },
    )


def init_parameters(processor_class: type) -> set[str]:
    """Keyword arguments the class's `__init__` names (sub-processors excluded)."""
    params = inspect.signature(processor_class.__init__).parameters
    return {
        name for name in params if name not in ("self", "args", "kwargs", *processor_class.get_attributes(), *_DROPPED)
    }


def build_processor(processor_class: type, image_processor, tokenizer, settings: dict | None = None):
    """An images-only instance of `processor_class` from its parts and its own settings
    (`processor_config.json`'s keys, the chat template; other keys are ignored)."""
    cls = image_only(processor_class)
    kwargs = {"image_processor": image_processor, "tokenizer": tokenizer}
    if cls is not processor_class:
        kwargs["video_processor"] = None
    accepted = init_parameters(processor_class)
    kwargs.update({k: v for k, v in (settings or {}).items() if k in accepted})
    return cls(**kwargs)


def load_processor(directory: Path, processor_class_name: str):
    """Load the processor saved in `directory` (a model snapshot) as images-only, PIL backend."""
    import transformers

    processor_class = getattr(transformers, processor_class_name, None)
    if processor_class is None:
        raise ModelError(f"transformers {transformers.__version__} has no {processor_class_name}; upgrade transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    image_processor = transformers.AutoImageProcessor.from_pretrained(directory, backend="pil")
    settings, _ = processor_class.get_processor_dict(str(directory))
    if not settings.get("chat_template") and getattr(tokenizer, "chat_template", None):
        settings["chat_template"] = tokenizer.chat_template  # older snapshots keep it with the tokenizer
    return build_processor(processor_class, image_processor, tokenizer, settings)
