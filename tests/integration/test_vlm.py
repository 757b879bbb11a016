"""Vision-language families on tiny random-init models of the real transformers classes, each
loaded through guard's normal `load_model` path with its real processor class.

Per family: the architecture row finds the language model's heads; a two-label image policy
compiles and checks images (a learnable colour task, scored on held-out images); early-stopped
activations equal a full forward's; a batch of differently sized images (token counts differ
per image in several families) gives the activations of an unpadded forward per input.
"""

import random

import pytest
import torch
import transformers
import yaml
from PIL import Image

from guard.check.engine import Guard
from guard.compiler import compile_policy
from guard.errors import GuardError
from guard.method import sav
from guard.models import ARCHITECTURES, load_model
from guard.models.capture import head_outputs, last_token_index
from guard.models.features import features
from guard.models.images import GuardImage, load_image
from guard.models.inputs import ModelInput
from guard.store.database import Store
from tests.support.vlm_fixtures import FAMILIES, colour_image

# Families whose image token count depends on the image's size (so rows of one batch differ
# by more than their text): Qwen2-VL's patch grid, LLaVA-NeXT / OneVision's tiles, Idefics3 /
# SmolVLM's splits. LLaVA-1.5, Gemma 3 and PaliGemma give every image the same count.
VARIABLE_IMAGE_TOKENS = {"llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm"}
TOLERANCE = dict(rtol=1e-5, atol=1e-5)  # float32 on CPU; measured differences are below 2e-7
HELDOUT_FLOOR = 0.8


@pytest.fixture(scope="session", params=FAMILIES)
def vlm(request, vlm_dirs):
    return load_model(str(vlm_dirs(request.param)), device="cpu")


def image(size, colour, name) -> GuardImage:
    return GuardImage(sha256=name, name=name, image=Image.new("RGB", size, colour))


def parity_inputs(vlm) -> list[ModelInput]:
    """Images of different sizes and shapes, one input with two images, one with none."""
    a, b = image((40, 30), (200, 20, 20), "a"), image((20, 50), (20, 20, 200), "b")
    c, d = image((64, 64), (20, 200, 20), "c"), image((24, 24), (250, 250, 250), "d")
    items = [
        vlm.prepare("Is it red?", [a]),
        vlm.prepare("Is this image blue at all, would you say?", [b]),
        vlm.prepare("Two images: are they the same?", [c, d]),
    ]
    if not vlm.arch.needs_image:
        items.append(vlm.prepare("No image here, only a question about text"))
    return items


def unpadded_full_forward(vlm, item) -> torch.Tensor:
    """Independent reference: one input alone, whole forward (LM head included), every o_proj
    input kept for the whole sequence; the last position, split into heads: `[L, H, D]`."""
    inputs = vlm.encode([item])
    kept = {}
    handles = [
        proj.register_forward_pre_hook(lambda m, args, i=i: kept.__setitem__(i, args[0][0].clone()))
        for i, proj in enumerate(vlm.o_projs)
    ]
    try:
        with torch.no_grad():
            vlm.model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    H, D = vlm.layout.num_heads, vlm.layout.head_dim
    return torch.stack([kept[layer][-1].reshape(H, D) for layer in range(vlm.layout.num_layers)]).float()


def test_row_finds_the_language_models_heads(vlm):
    model_type = vlm.info["model_type"]
    assert vlm.arch is ARCHITECTURES[model_type] and vlm.arch.multimodal
    assert type(vlm.tokenizer).__name__ == vlm.arch.processor  # the family's real processor class
    real = getattr(transformers, vlm.arch.processor)
    assert isinstance(vlm.tokenizer, real) and "video_processor" not in type(vlm.tokenizer).get_attributes()
    # only the classes that own a video processor are rebuilt images-only
    assert (type(vlm.tokenizer) is real) == ("video_processor" not in real.get_attributes())
    assert (vlm.layout.num_layers, vlm.layout.num_heads, vlm.layout.head_dim) == (4, 4, 16)
    # the same modules transformers itself calls the decoder: the language model, not the vision tower
    assert [layer.self_attn.o_proj for layer in vlm.model.get_decoder().layers] == vlm.o_projs


def test_colour_policy_compiles_and_checks_held_out_images(vlm, colour_data, tmp_path):
    """Learnable task: solid reddish vs bluish images of random shades and sizes, 6 exemplars per
    label (a `format: folder` source), 8 voting heads, 20 held-out images.

    Measured on 2026-11-28 (CPU, float32): held-out accuracy 20/20 for every family (chance:
    10/20). The prompt is the same for every image, so only the pixels can separate the labels
    (Gemma 3's fixture gives its zero-initialised image projection random weights; with zeros it
    sat at chance, see tests/support/vlm_fixtures.py). The floor, 16/20, leaves room for a few votes that
    flip across CPUs.
    """
    policy = {
        "name": "colours",
        "model": str(vlm.source.path),
        "data_root": str(colour_data),
        "prompt": "What colour is this image? Answer with one word.",
        "labels": [{"name": "red", "flagged": True}, {"name": "blue"}],
        "exemplars": [{"from": "train", "format": "folder"}],
        "heads": 8,
    }
    path = tmp_path / "colours.yaml"
    path.write_text(yaml.safe_dump(policy))
    db = str(tmp_path / "guard.db")
    report = compile_policy(path, db, loaded=vlm, batch_size=4)
    assert report.exemplars == 12 and report.computed == 12
    guard = Guard.load(db, model=vlm)
    assert guard.artifact.exemplar_texts[0].startswith("[image: train/blue/blue-0.png]")

    heldout = sorted((colour_data / "heldout").rglob("*.png"))
    verdicts = guard.check_batch([{"images": [p]} for p in heldout], batch_size=4)
    truth = [p.parent.name for p in heldout]
    correct = sum(v.label == t for v, t in zip(verdicts, truth))
    print(f"\n[{vlm.info['model_type']}] held-out colour accuracy {correct}/{len(truth)}")
    assert correct / len(truth) >= HELDOUT_FLOOR
    assert all(v.flagged == (v.label == "red") for v in verdicts)
    assert all([(x.layer, x.head) for x in v.votes] == guard.artifact.heads for v in verdicts)

    # Checking the exemplars votes exactly as the in-sample vote on the stored exemplar vectors.
    exemplars = sorted((colour_data / "train").rglob("*.png"))
    again = guard.check_batch([{"images": [load_image(p)]} for p in exemplars], batch_size=5)
    art = guard.artifact
    expected = sav.vote(sav.head_similarities(art.exemplar_vectors, art.centroids))[0]
    assert [v.label for v in again] == [art.label_names[i] for i in expected.tolist()]


def test_early_stop_equals_full_forward(vlm):
    inputs = vlm.encode(parity_inputs(vlm))
    deep = vlm.layout.num_layers - 2
    called = []
    late = vlm.o_projs[deep + 1].register_forward_pre_hook(lambda *a: called.append("late layer"))
    head = vlm.model.lm_head.register_forward_hook(lambda *a: called.append("lm_head"))
    try:
        early = head_outputs(vlm, inputs, [0, deep], early_stop=True)
        assert called == []
        full = head_outputs(vlm, inputs, [0, deep], early_stop=False)
        assert "late layer" in called and "lm_head" in called
    finally:
        late.remove()
        head.remove()
    assert torch.equal(early, full)


def test_batch_of_different_images_equals_each_alone(vlm):
    items = parity_inputs(vlm)
    batch = vlm.encode(items)
    last = last_token_index(batch["attention_mask"])
    image_token_id = vlm.tokenizer.image_token_id
    image_tokens = []
    for row, item in enumerate(items):
        alone = vlm.encode([item])["input_ids"][0]
        # right padding: each row's real tokens are exactly its tokens alone, and the last real
        # token found from the mask is the last token of the prompt
        assert int(last[row]) == len(alone) - 1
        assert torch.equal(batch["input_ids"][row, : len(alone)], alone)
        image_tokens.append(int((alone == image_token_id).sum()))
    single_image_counts = image_tokens[:2]  # rows 0 and 1: one image each, 40x30 and 20x50
    assert min(single_image_counts) > 0
    if vlm.info["model_type"] in VARIABLE_IMAGE_TOKENS:
        assert single_image_counts[0] != single_image_counts[1]
    else:
        assert single_image_counts[0] == single_image_counts[1]

    batched = features(vlm, items, layers=range(vlm.layout.num_layers), batch_size=len(items)).z
    for row, item in enumerate(items):
        torch.testing.assert_close(batched[row], unpadded_full_forward(vlm, item), **TOLERANCE)


def test_text_only_input_and_missing_images(vlm):
    if vlm.arch.needs_image:
        with pytest.raises(GuardError, match="need an image with every input"):
            vlm.prepare("no image")
    else:
        out = features(vlm, [vlm.prepare("just words")], layers=[0]).z
        assert out.shape == (1, 1, 4, 16)


def test_image_activation_cache_is_keyed_by_image_content(vlm_dirs, tmp_path):
    """Recompiling reuses cached activations; editing an image's pixels (same file name) does not."""
    loaded = load_model(str(vlm_dirs("llava")), device="cpu")
    rng = random.Random(1)
    for label in ("red", "blue"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(3):
            colour_image(rng, label).save(tmp_path / "data" / label / f"{i}.png")
    policy = {
        "name": "c",
        "model": str(loaded.source.path),
        "prompt": "Colour?",
        "labels": ["red", "blue"],
        "exemplars": [{"from": "data", "format": "folder"}],
        "heads": 4,
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(policy))
    db = str(tmp_path / "g.db")
    first = compile_policy(path, db, loaded=loaded)
    assert (first.computed, first.cached) == (6, 0)
    again = compile_policy(path, db, loaded=loaded, force=True)
    assert (again.computed, again.cached) == (0, 6) and again.artifact.version == first.artifact.version
    Image.new("RGB", (30, 30), (255, 0, 0)).save(tmp_path / "data" / "red" / "0.png")
    edited = compile_policy(path, db, loaded=loaded)
    assert (edited.computed, edited.cached) == (1, 5)
    assert edited.artifact.version != first.artifact.version  # images count in the version by content
    assert Store.open(db).count_activations() == 7


def test_text_model_refuses_images(llama, tmp_path):
    with pytest.raises(GuardError, match="is a text model; it cannot take images"):
        llama.prepare("hi", [image((8, 8), (0, 0, 0), "x")])
    assert isinstance(llama.prepare("hi"), str)  # text models keep plain strings


def as_hub_layout(saved, target, template_in_tokenizer=False):
    """Rewrite a snapshot saved by transformers 5 in the layout of the hub repos released before
    it (llava-hf/llava-onevision-*, Qwen/Qwen2-VL-*): the image processor in its own
    preprocessor_config.json, processor settings alone in processor_config.json, the chat template
    in chat_template.json (or in tokenizer_config.json, as older repos had it)."""
    import json
    import shutil

    shutil.copytree(saved, target)
    settings = json.loads((target / "processor_config.json").read_text())
    image_processor = settings.pop("image_processor")
    (target / "preprocessor_config.json").write_text(
        json.dumps({**image_processor, "processor_class": settings["processor_class"]})
    )
    (target / "processor_config.json").write_text(json.dumps(settings))
    template = (target / "chat_template.jinja").read_text()
    (target / "chat_template.jinja").unlink()
    if template_in_tokenizer:
        config = json.loads((target / "tokenizer_config.json").read_text())
        (target / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    else:
        (target / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    return target


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl"])
@pytest.mark.parametrize("template_in_tokenizer", [False, True])
def test_hub_layout_loads_the_same_processor(vlm_dirs, tmp_path, family, template_in_tokenizer):
    saved = vlm_dirs(family)
    hub = load_model(str(as_hub_layout(saved, tmp_path / "hub", template_in_tokenizer)), device="cpu")
    ours = load_model(str(saved), device="cpu")
    assert type(hub.tokenizer.image_processor).__name__ == type(ours.tokenizer.image_processor).__name__
    assert type(hub.tokenizer.image_processor).__name__.endswith("Pil")  # the Pillow backend, always
    items = [image((40, 30), (200, 20, 20), "a"), image((20, 50), (20, 20, 200), "b")]
    a, b = hub.prepare("Is it red?", items), ours.prepare("Is it red?", items)
    assert a.text == b.text
    encoded_hub, encoded_ours = hub.encode([a]), ours.encode([b])
    assert encoded_hub.keys() == encoded_ours.keys()
    assert all(torch.equal(encoded_hub[k], encoded_ours[k]) for k in encoded_hub)
