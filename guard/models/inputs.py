"""Model inputs with images: chat rendering with image parts, and batches through the processor.

A `ModelInput` is what the model is run on: the chat-rendered prompt (with one placeholder per
image, where the family's template puts it) and the images in prompt order. Text-only models keep
plain strings as inputs (see LoadedModel), so their prompts, batches and cache keys are unchanged.

Batches are right-padded as on the text path: the processor expands each image placeholder into
that image's tokens (a count that can differ per image: Qwen2-VL's grid, LLaVA-NeXT/OneVision's
tiles, Idefics3's splits), tokenises, and pads on the right; capture finds each row's last real
token from the attention mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from guard.errors import GuardError, ModelError
from guard.images import GuardImage


@dataclass(frozen=True)
class ModelInput:
    """A chat-rendered prompt and its images, in the order their placeholders appear."""

    text: str
    images: tuple[GuardImage, ...] = ()

    @property
    def image_hashes(self) -> list[str]:
        return [image.sha256 for image in self.images]


def chat_messages(prompt: str, num_images: int, placement: str) -> list[dict]:
    images = [{"type": "image"} for _ in range(num_images)]
    text = [{"type": "text", "text": prompt}]
    return [{"role": "user", "content": images + text if placement == "before" else text + images}]


def render(loaded, prompt: str, num_images: int) -> str:
    """The prompt as a vision-language model sees it, before the processor expands image tokens."""
    arch, processor = loaded.arch, loaded.tokenizer
    if arch.needs_image and num_images == 0:
        raise GuardError(f"{arch.family} models need an image with every input; this one has none")
    if arch.images == "prefix":
        return processor.image_token * num_images + prompt
    if not getattr(processor, "chat_template", None):
        raise ModelError(
            f"model '{loaded.source.reference}' has no chat template (chat_template.jinja or "
            f"chat_template.json), so guard does not know where its images go"
        )
    return processor.apply_chat_template(
        chat_messages(prompt, num_images, arch.images), tokenize=False, add_generation_prompt=True
    )


def encode(loaded, items: Sequence[ModelInput | str]) -> dict[str, torch.Tensor]:
    """One right-padded batch: token ids, attention mask and the processor's image tensors."""
    processor = loaded.tokenizer
    items = [item if isinstance(item, ModelInput) else ModelInput(item) for item in items]
    texts = [item.text for item in items]
    kwargs = dict(text=texts, padding=True, padding_side="right", return_tensors="pt")
    if any(item.images for item in items):
        kwargs["images"] = [[image.image for image in item.images] for item in items]
    try:
        batch = processor(**kwargs)
    except GuardError:
        raise
    except Exception as exc:
        names = ", ".join(image.name for item in items for image in item.images) or "no images"
        raise ModelError(
            f"the {loaded.arch.family} processor cannot prepare this input ({names}): {_short(exc)}"
        ) from None
    batch.pop("labels", None)  # PaliGemma's processor adds training labels; a forward needs none
    out = {}
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor):
            continue
        out[key] = value.to(loaded.device, loaded.dtype if value.is_floating_point() else None)
    return out


def token_count(loaded, item: ModelInput | str) -> int:
    """About how many tokens `item` becomes (orders batches by length; exactness not needed)."""
    text = item.text if isinstance(item, ModelInput) else item
    count = len(loaded.tokenizer.tokenizer(text, add_special_tokens=False)["input_ids"])
    if isinstance(item, ModelInput) and item.images:
        try:
            sizes = [(image.size[1], image.size[0]) for image in item.images]  # (height, width)
            count += sum(loaded.tokenizer._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"])
        except Exception:  # not every processor can tell without processing; the order is a heuristic
            count += 256 * len(item.images)
    return count


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
