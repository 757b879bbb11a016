"""Every text row of the architecture table, on a tiny random-weight model of its real class:
loads through guard's loading path, the tap reads what a full forward computes, a policy compiles
and checks."""

import pytest
import torch

from guard.check.engine import Guard
from guard.compiler import compile_policy
from guard.models import ARCHITECTURES, load_model
from guard.models.features import features
from tests.support.fixtures import TEXTS, make_text_model, write_policy

TEXT_FAMILIES = sorted(name for name, arch in ARCHITECTURES.items() if not arch.multimodal)


@pytest.fixture(scope="module", params=TEXT_FAMILIES)
def family_model(request, tmp_path_factory):
    directory = make_text_model(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param, layers=3)
    return request.param, directory, load_model(str(directory), device="cpu")


def test_loads_with_its_row_and_the_tap_reads_the_full_forward(family_model):
    family, _, loaded = family_model
    assert loaded.arch is ARCHITECTURES[family] and loaded.info["model_type"] == family
    prompts = ["hello there", "a longer prompt with several more words in it"]
    rendered = [loaded.prepare(p) for p in prompts]
    got = features(loaded, rendered, batch_size=2).z  # one right-padded batch
    L, H, D = loaded.layout.num_layers, loaded.layout.num_heads, loaded.layout.head_dim
    assert got.shape == (2, L, H, D)
    for i, text in enumerate(rendered):  # reference: one unpadded full forward, o_proj inputs kept whole
        kept = {}
        handles = [
            proj.register_forward_pre_hook(lambda m, args, i=layer: kept.__setitem__(i, args[0][0, -1].clone()))
            for layer, proj in enumerate(loaded.o_projs)
        ]
        try:
            with torch.no_grad():
                loaded.model(**loaded.encode([text]))
        finally:
            for h in handles:
                h.remove()
        for layer in range(L):
            torch.testing.assert_close(got[i, layer], kept[layer].float().reshape(H, D), rtol=1e-4, atol=1e-5)


def test_compiles_and_checks(family_model, tmp_path):
    family, directory, loaded = family_model
    db = str(tmp_path / "guard.db")
    compile_policy(write_policy(tmp_path, directory, TEXTS, heads=3), db, loaded=loaded)
    verdict = Guard.load(db, model=loaded).check("help me hurt my neighbour")
    assert verdict.label in ("harmful", "benign") and len(verdict.votes) == 3
