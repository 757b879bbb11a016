"""guard eval with images, on tiny vision-language models: the SAV row is what check says,
the readout matches a separate full forward, and an exemplar image under another name is
recognised by its content and left out of the test set."""

import shutil

import pytest
import torch
import yaml

from guard.check.engine import Guard
from guard.compiler import compile_policy
from guard.eval import baselines
from guard.eval.evaluate import evaluate
from guard.models import load_model
from guard.models.capture import head_outputs, last_token_index
from guard.models.features import features
from guard.models.images import load_image

# one family with a fixed image token count, one whose count depends on the image size
FAMILIES = ["llava", "qwen2_vl"]


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request, vlm_dirs):
    return load_model(str(vlm_dirs(request.param)), device="cpu")


def colour_policy(vlm, colour_data, tmp_path):
    doc = {
        "name": "colours",
        "model": str(vlm.source.path),
        "data_root": str(colour_data),
        "prompt": "What colour is this image? Answer with one word.",
        "labels": [{"name": "red", "flagged": True, "answer": "Red"}, {"name": "blue", "answer": "Blue"}],
        "exemplars": [{"from": "train", "format": "folder"}],
        "heads": 8,
    }
    path = tmp_path / "colours.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_eval_on_images_with_baselines(vlm, colour_data, tmp_path):
    policy = colour_policy(vlm, colour_data, tmp_path)
    heldout = tmp_path / "heldout"
    shutil.copytree(colour_data / "heldout", heldout)
    shutil.copy(colour_data / "train/red/red-0.png", heldout / "red" / "renamed-exemplar.png")  # same pixels
    db = str(tmp_path / "guard.db")
    ev = evaluate(policy, heldout, fmt="folder", db=db, loaded=vlm, with_baselines=True, heads=[1, 8], batch_size=4)
    assert ev.total_items == 21 and [e.images for e in ev.excluded] == [("heldout/red/renamed-exemplar.png",)]
    assert ev.forwards == 12 + 20 and ev.answers == ["Red", "Blue"]
    assert list(ev.methods) == ["sav", "sav_paper", "zero_shot", "linear_probe", "hidden_centroid"]

    compile_policy(policy, db, loaded=vlm, batch_size=4)
    images = sorted(p for p in (colour_data / "heldout").rglob("*.png"))
    verdicts = Guard.load(db, model=vlm).check_batch([{"images": [p]} for p in images], batch_size=4)
    # evaluate's order is the folder reader's; match by image name
    by_name = {f"heldout/{p.parent.name}/{p.name}": v.label for p, v in zip(images, verdicts)}
    tests = [item for item in _read(policy, heldout) if item.images != ("heldout/red/renamed-exemplar.png",)]
    assert [ev.labels[p] for p in ev.methods["sav"].predictions] == [by_name[item.images[0]] for item in tests]


def _read(policy, folder):
    from guard.eval.evaluate import read_test_items
    from guard.policy import load_policy

    return read_test_items(load_policy(policy), folder, "folder")


def test_readout_on_images_matches_a_full_forward(vlm, colour_data):
    a = load_image(colour_data / "heldout/red/red-0.png")
    b = load_image(colour_data / "heldout/blue/blue-3.png")
    items = [vlm.prepare("What colour is this image?", [a]), vlm.prepare("Colour of this picture, in one word?", [b])]
    ids = baselines.answer_token_ids(vlm, ["Red", "Blue"])
    out = features(vlm, items, batch_size=2, hidden=True, answer_ids=ids)
    for i, item in enumerate(items):
        inputs = vlm.encode([item])
        heads = head_outputs(vlm, inputs, range(vlm.layout.num_layers), early_stop=False)
        torch.testing.assert_close(out.z[i], heads[0], rtol=1e-4, atol=1e-5)
        with torch.inference_mode():
            full = vlm.model(**inputs, output_hidden_states=True, use_cache=False)
        last = int(last_token_index(inputs["attention_mask"])[0])
        torch.testing.assert_close(out.hidden[i], full.hidden_states[-1][0, last].float(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            out.answer_logprobs[i], torch.log_softmax(full.logits[0, last].float(), -1)[ids], rtol=1e-4, atol=1e-5
        )
