"""The two input paths, chosen once when a model loads: `TextInputs` and `ImageInputs`.

Each renders a filled-in prompt the way the model expects it (its chat template, with the
generation prompt added so the last token is where the answer would begin), tokenises it once
into a `Tokenized` input, and builds batches from those. A `ModelInput` is what a vision-language model is run on: the
chat-rendered prompt (with one placeholder per image, where the family's template puts it) and the
images in prompt order. Text models keep plain strings as inputs, so their prompts, batches and
cache keys are those of guard 0.1.

Batches are right-padded as on the text path: the processor expands each image placeholder into
that image's tokens (a count that can differ per image: Qwen2-VL's grid, LLaVA-NeXT/OneVision's
tiles, Idefics3's splits), tokenises, and pads on the right; capture finds each row's last real
token from the attention mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from guard.errors import GuardError, ModelError, first_line
from guard.models.images import GuardImage


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


@dataclass(frozen=True)
class Tokenized:
    """One model input, rendered and tokenised once: what a batch is built from.

    Text models keep the token ids, so a batch is only padded, never tokenised again; a
    vision-language model's processor expands image tokens while it builds the batch, so
    `ids` is None and `length` its estimate (it orders and cuts batches; exactness not needed)."""

    rendered: str | ModelInput
    length: int  # tokens the model reads (with the images' tokens, estimated, for a ModelInput)
    ids: tuple[int, ...] | None = None


class TextInputs:
    """Text models: a prompt is the chat-rendered string; batches are its token ids, right-padded.

    Works on a tokenizer alone (the torch model's, or an ONNX export's), so both engines render,
    tokenise and pad the same way. Not thread-safe: callers hold a lock (Hugging Face fast
    tokenizers are not safe to share between threads)."""

    takes_images = False

    def __init__(self, tokenizer, device: torch.device | str = "cpu", name: str = "this model"):
        self.tokenizer = tokenizer
        self.device = device
        self.name = name  # for messages: "model 'REF' (family)"
        self.chat = bool(getattr(tokenizer, "chat_template", None))

    def prepare(self, prompt: str, images: Sequence[GuardImage] = ()) -> str:
        if images:
            raise GuardError(f"{self.name} is a text model; it cannot take images")
        if not self.chat:
            return prompt
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    def tokenize(self, rendered: str) -> Tokenized:
        """The rendered prompt's token ids, as the model reads them (special tokens added only
        without a chat template: the template writes its own)."""
        ids = self.tokenizer(rendered, add_special_tokens=not self.chat)["input_ids"]
        return Tokenized(rendered, len(ids), tuple(ids))

    def pad(self, rows: Sequence[Tokenized]) -> dict[str, torch.Tensor]:
        """One right-padded batch of tokenised inputs: what `encode` gives for their texts."""
        width = max(row.length for row in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : row.length] = torch.tensor(row.ids, dtype=torch.long)
            mask[r, : row.length] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in getattr(self.tokenizer, "model_input_names", ()):
            batch["token_type_ids"] = torch.zeros_like(ids)
        return {k: v.to(self.device) for k, v in batch.items()}

    def encode(self, rendered: Sequence[str | Tokenized]) -> dict[str, torch.Tensor]:
        if rendered and all(isinstance(row, Tokenized) and row.ids is not None for row in rendered):
            return self.pad(rendered)  # type: ignore[arg-type]
        texts = [row.rendered if isinstance(row, Tokenized) else row for row in rendered]
        batch = self.tokenizer(texts, add_special_tokens=not self.chat, padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def token_count(self, rendered: str) -> int:
        return len(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])


class ImageInputs:
    """Vision-language models: a prompt becomes a ModelInput (chat-rendered text with one
    placeholder per image, plus the images); batches come from the family's processor."""

    takes_images = True

    def __init__(self, loaded):
        self.loaded = loaded

    def prepare(self, prompt: str, images: Sequence[GuardImage] = ()) -> ModelInput:
        """The prompt as the model sees it, before the processor expands image tokens."""
        loaded = self.loaded
        arch, processor = loaded.arch, loaded.tokenizer
        if arch.needs_image and not images:
            raise GuardError(f"{arch.family} models need an image with every input; this one has none")
        if arch.images == "prefix":
            return ModelInput(processor.image_token * len(images) + prompt, tuple(images))
        if not getattr(processor, "chat_template", None):
            raise ModelError(
                f"model '{loaded.source.reference}' has no chat template (chat_template.jinja or "
                f"chat_template.json), so guard does not know where its images go"
            )
        text = processor.apply_chat_template(
            chat_messages(prompt, len(images), arch.images), tokenize=False, add_generation_prompt=True
        )
        return ModelInput(text, tuple(images))

    def tokenize(self, item: ModelInput) -> Tokenized:
        """The input with its estimated length: the processor tokenises it when it builds the batch."""
        return Tokenized(item, self.token_count(item))

    def encode(self, items: Sequence[ModelInput | Tokenized | str]) -> dict[str, torch.Tensor]:
        """One right-padded batch: token ids, attention mask and the processor's image tensors."""
        loaded = self.loaded
        items = [item.rendered if isinstance(item, Tokenized) else item for item in items]
        items = [item if isinstance(item, ModelInput) else ModelInput(item) for item in items]
        kwargs = dict(text=[item.text for item in items], padding=True, padding_side="right", return_tensors="pt")
        if any(item.images for item in items):
            kwargs["images"] = [[image.image for image in item.images] for item in items]
        try:
            batch = loaded.tokenizer(**kwargs)
        except GuardError:
            raise
        except Exception as exc:
            names = ", ".join(image.name for item in items for image in item.images) or "no images"
            raise ModelError(
                f"the {loaded.arch.family} processor cannot prepare this input ({names}): {first_line(exc)}"
            ) from None
        batch.pop("labels", None)  # PaliGemma's processor adds training labels; a forward needs none
        return {
            key: value.to(loaded.device, loaded.dtype if value.is_floating_point() else None)
            for key, value in batch.items()
            if isinstance(value, torch.Tensor)
        }

    def token_count(self, item: ModelInput | str) -> int:
        """About how many tokens `item` becomes (orders batches by length; exactness not needed)."""
        processor = self.loaded.tokenizer
        text = item.text if isinstance(item, ModelInput) else item
        count = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        if isinstance(item, ModelInput) and item.images:
            try:
                sizes = [(image.size[1], image.size[0]) for image in item.images]  # (height, width)
                count += sum(processor._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"])
            except Exception:  # not every processor can tell without processing; the order is a heuristic
                count += 256 * len(item.images)
        return count
