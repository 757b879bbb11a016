"""Tiny random-init vision-language models of the real transformers classes, with their real
processor classes, saved to disk so tests load them through guard's normal `load_model` path.

One builder per family. Each builds a small byte-level BPE tokenizer with the family's special
tokens and a chat template that places images the way the family's released template does,
configures the family's image processor (PIL backend) for small images, and saves the model,
tokenizer, image processor and processor settings with `save_pretrained`. The families whose
processor also owns a video processor (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision, SmolVLM) are saved
through guard's images-only build of the same class (see guard/models/processors.py), which
writes the same processor_config.json a full processor would, minus the video part.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.support.fixtures import CORPUS

TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)
SIGLIP = dict(
    model_type="siglip_vision_model",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
)
CLIP = dict(
    model_type="clip_vision_model",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
    projection_dim=32,
)


def _template(user: str, image: str, assistant: str, end: str, bos: str = "") -> str:
    """A chat template in the style of the families' released ones: typed content parts in order."""
    return (
        bos
        + "{% for message in messages %}"
        + user.replace("ROLE", "{{ message['role'] }}")
        + "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
        + image
        + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
        + end
        + "{% endfor %}{% if add_generation_prompt %}"
        + assistant
        + "{% endif %}"
    )


CHATML = _template("<|im_start|>ROLE\n", "<image>", "<|im_start|>assistant\n", "<|im_end|>\n")


def make_vlm_tokenizer(
    specials: list[str],
    named: dict[str, str] | None = None,
    chat_template: str | None = None,
    bos: str = "<|im_start|>",
    eos: str = "<|im_end|>",
):
    """A byte-level BPE tokenizer with the family's special tokens (`named` become attributes,
    like Gemma 3's `boi_token` or `image_token`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    base = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
    all_specials = base + [s for s in specials if s not in base]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=all_specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token=bos,
        eos_token=eos,
        extra_special_tokens=named or {},
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


def _text(tok, **extra) -> dict:
    return {
        **TEXT,
        "vocab_size": len(tok),
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        **extra,
    }


def _save(directory: Path, model, processor) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def _llava(directory: Path):
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    # llava-hf/llava-1.5: "USER: <image>\n{text} ASSISTANT:"
    template = _template("{{ message['role'].upper() }}: ", "<image>\n", "ASSISTANT:", " ")
    tok = make_vlm_tokenizer(["<image>"], chat_template=template)
    config = LlavaConfig(
        vision_config=CLIP,
        text_config={"model_type": "llama", **_text(tok)},
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        image_seq_length=16,
    )
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=template,
    )
    return LlavaForConditionalGeneration(config), processor


PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def _llava_next(directory: Path):
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    # llava-hf/llava-v1.6-mistral: "[INST] <image>\n{text} [/INST]"
    template = _template("[INST] ", "<image>\n", "", " [/INST]")
    tok = make_vlm_tokenizer(["<image>"], chat_template=template)
    config = LlavaNextConfig(
        vision_config=CLIP,
        text_config={"model_type": "mistral", **_text(tok)},
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        image_grid_pinpoints=PINPOINTS,
        image_seq_length=16,
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=template,
    )
    return LlavaNextForConditionalGeneration(config), processor


def _llava_onevision(directory: Path):
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
    )

    from guard.models.processors import build_processor

    # llava-hf/llava-onevision-qwen2: ChatML with "<image>\n" before the text
    template = _template("<|im_start|>ROLE\n", "<image>\n", "<|im_start|>assistant\n", "<|im_end|>\n")
    tok = make_vlm_tokenizer(["<image>", "<video>"], chat_template=template)
    config = LlavaOnevisionConfig(
        vision_config=SIGLIP,
        text_config={"model_type": "qwen2", **_text(tok)},
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-1,
    )
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS)
    processor = build_processor(
        LlavaOnevisionProcessor,
        image_processor,
        tok,
        {
            "num_image_tokens": 16,
            "vision_feature_select_strategy": "full",
            "chat_template": template,
            "vision_aspect_ratio": "anyres_max_9",
        },
    )
    return LlavaOnevisionForConditionalGeneration(config), processor


QWEN_VL_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# Qwen/Qwen2-VL-*-Instruct: ChatML, "<|vision_start|><|image_pad|><|vision_end|>" before the text
QWEN_VL_TEMPLATE = _template(
    "<|im_start|>ROLE\n", "<|vision_start|><|image_pad|><|vision_end|>", "<|im_start|>assistant\n", "<|im_end|>\n"
)


def _qwen_vl_common():
    from transformers import Qwen2VLImageProcessorPil

    tok = make_vlm_tokenizer(QWEN_VL_TOKENS, chat_template=QWEN_VL_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_VL_TOKENS}
    token_ids = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    # 4-pixel patches merged 2x2: one token per 8x8 pixels; between 2x2 and 6x6 tokens per image
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16, max_pixels=48 * 48
    )
    text = _text(tok, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0})
    return tok, token_ids, image_processor, text


def _qwen2_vl(directory: Path):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    from guard.models.processors import build_processor

    tok, token_ids, image_processor, text = _qwen_vl_common()
    vision = dict(
        depth=1, embed_dim=32, hidden_size=64, num_heads=2, patch_size=4, spatial_merge_size=2, temporal_patch_size=2
    )
    config = Qwen2VLConfig(text_config=text, vision_config=vision, **token_ids)
    processor = build_processor(Qwen2VLProcessor, image_processor, tok, {"chat_template": QWEN_VL_TEMPLATE})
    return Qwen2VLForConditionalGeneration(config), processor


def _qwen2_5_vl(directory: Path):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    from guard.models.processors import build_processor

    tok, token_ids, image_processor, text = _qwen_vl_common()
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=64,
        window_size=16,
        fullatt_block_indexes=[1],
    )
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **token_ids)
    processor = build_processor(Qwen2_5_VLProcessor, image_processor, tok, {"chat_template": QWEN_VL_TEMPLATE})
    return Qwen2_5_VLForConditionalGeneration(config), processor


IDEFICS_TOKENS = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
# HuggingFaceTB/SmolVLM, Idefics3: "<|im_start|>User:<image>{text}<end_of_utterance>\nAssistant:"
IDEFICS_TEMPLATE = _template(
    "<|im_start|>{{ message['role'] | capitalize }}:", "<image>", "Assistant:", "<end_of_utterance>\n", bos=""
)
IDEFICS_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
)


def _idefics3(directory: Path):
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    tok = make_vlm_tokenizer(IDEFICS_TOKENS, chat_template=IDEFICS_TEMPLATE)
    config = Idefics3Config(
        vision_config=IDEFICS_VISION,
        text_config={"model_type": "llama", **_text(tok)},
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    # images are split into 32x32 tiles plus a global view; each tile is (32/8)^2 / 2^2 = 4 tokens
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_len=4, chat_template=IDEFICS_TEMPLATE
    )
    return Idefics3ForConditionalGeneration(config), processor


def _smolvlm(directory: Path):
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil, SmolVLMProcessor

    from guard.models.processors import build_processor

    tok = make_vlm_tokenizer(IDEFICS_TOKENS, chat_template=IDEFICS_TEMPLATE)
    config = SmolVLMConfig(
        vision_config=IDEFICS_VISION,
        text_config={"model_type": "llama", **_text(tok)},
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    image_processor = SmolVLMImageProcessorPil(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True
    )
    processor = build_processor(
        SmolVLMProcessor, image_processor, tok, {"image_seq_len": 4, "chat_template": IDEFICS_TEMPLATE}
    )
    return SmolVLMForConditionalGeneration(config), processor


def _gemma3(directory: Path):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    # google/gemma-3-*-it: "<bos><start_of_turn>user\n<start_of_image>{text}<end_of_turn>\n<start_of_turn>model\n"
    template = _template(
        "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n",
        "<start_of_image>",
        "<start_of_turn>model\n",
        "<end_of_turn>\n",
        bos="{{ bos_token }}",
    )
    named = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
    tok = make_vlm_tokenizer(
        ["<bos>", "<start_of_turn>", "<end_of_turn>", *named.values()], named, template, bos="<bos>"
    )
    text = _text(tok, model_type="gemma3_text", head_dim=16, query_pre_attn_scalar=16, sliding_window=64)
    config = Gemma3Config(
        text_config=text,
        vision_config=SIGLIP,
        mm_tokens_per_image=4,
        boi_token_index=tok.boi_token_id,
        eoi_token_index=tok.eoi_token_id,
        image_token_index=tok.image_token_id,
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_length=4, chat_template=template
    )
    model = Gemma3ForConditionalGeneration(config)
    # Gemma 3 initialises its image projection to zeros (trained weights are not): a random-init
    # model would see every image as the same, so give the projection random weights.
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.5)
    return model, processor


def _paligemma(directory: Path):
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
    )

    # PaliGemma has no chat template: the processor puts "<image>"s and <bos> before the prompt, "\n" after.
    named = {"image_token": "<image>"}
    tok = make_vlm_tokenizer(["<bos>", "<image>"], named, bos="<bos>")
    text = _text(tok, model_type="gemma", head_dim=16)
    config = PaliGemmaConfig(
        vision_config={**SIGLIP, "projection_dim": 64},
        text_config=text,
        image_token_index=tok.image_token_id,
        projection_dim=64,
        hidden_size=64,
    )
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    image_processor.image_seq_length = 16  # (32 / 8)^2 patches, as PaliGemma's preprocessor_config.json says
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    return PaliGemmaForConditionalGeneration(config), processor


BUILDERS = {
    "llava": _llava,
    "llava_next": _llava_next,
    "llava_onevision": _llava_onevision,
    "qwen2_vl": _qwen2_vl,
    "qwen2_5_vl": _qwen2_5_vl,
    "idefics3": _idefics3,
    "smolvlm": _smolvlm,
    "gemma3": _gemma3,
    "paligemma": _paligemma,
}
FAMILIES = list(BUILDERS)


def make_vlm(directory: Path, family: str, seed: int = 0) -> Path:
    """Save a tiny random-init `family` model with its processor in `directory`."""
    torch.manual_seed(seed)
    model, processor = BUILDERS[family](directory)
    return _save(directory, model.eval(), processor)


def colour_image(rng, label: str):
    """A solid image, reddish or bluish, of a random shade and a random size (20..64 px a side)."""
    from PIL import Image

    strong, weak = rng.randint(150, 255), (rng.randint(0, 90), rng.randint(0, 90))
    colour = (strong, *weak) if label == "red" else (*weak, strong)
    return Image.new("RGB", (rng.randint(20, 64), rng.randint(20, 64)), colour)


def write_colour_images(root: Path, train: int = 6, heldout: int = 10, seed: int = 0) -> Path:
    import random

    rng = random.Random(seed)
    for split, count in (("train", train), ("heldout", heldout)):
        for label in ("red", "blue"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                colour_image(rng, label).save(folder / f"{label}-{i}.png")
    return root
