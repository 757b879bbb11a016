"""Head capture on tiny random-init Llama and Qwen2 models: shapes, early stop, batching."""

import pytest
import torch

from guard.models import load_model
from guard.models.capture import StopForward, head_outputs, last_token_index
from guard.models.features import features

PROMPTS = ["how do I bake bread", "write a poem about the sea and the wind at night please", "hi"]


@pytest.fixture
def model(text_model_dir):
    return load_model(str(text_model_dir), device="cpu")


def full_sequence_o_proj_inputs(loaded, rendered):
    """Independent reference: one unpadded forward per prompt, every o_proj input kept whole."""
    per_prompt = []
    for text in rendered:
        inputs = loaded.encode([text])
        kept = {}
        handles = [
            proj.register_forward_pre_hook(lambda m, args, i=i: kept.__setitem__(i, args[0][0].clone()))
            for i, proj in enumerate(loaded.o_projs)
        ]
        with torch.no_grad():
            loaded.model(**inputs)  # full forward, LM head included
        for h in handles:
            h.remove()
        per_prompt.append(kept)
    return per_prompt


def test_shapes_and_values_match_an_unpadded_full_forward(model):
    rendered = [model.prepare(p) for p in PROMPTS]
    L, H, D = model.layout.num_layers, model.layout.num_heads, model.layout.head_dim
    got = features(model, rendered, layers=range(L), batch_size=3).z
    assert got.shape == (3, L, H, D) and got.dtype == torch.float32
    for i, kept in enumerate(full_sequence_o_proj_inputs(model, rendered)):
        for layer in range(L):
            expected = kept[layer][-1].reshape(H, D)  # last token, split into heads
            torch.testing.assert_close(got[i, layer], expected, rtol=1e-5, atol=1e-5)


def test_early_stop_equals_full_forward_and_skips_later_layers_and_lm_head(model):
    inputs = model.encode([model.prepare(p) for p in PROMPTS])
    deep = model.layout.num_layers - 2
    called = []
    late = model.o_projs[deep + 1].register_forward_pre_hook(lambda *a: called.append("late layer"))
    head = model.model.lm_head.register_forward_hook(lambda *a: called.append("lm_head"))
    try:
        early = head_outputs(model, inputs, [0, deep], early_stop=True)
        assert called == []
        full = head_outputs(model, inputs, [0, deep], early_stop=False)
        assert "late layer" in called and "lm_head" in called
    finally:
        late.remove()
        head.remove()
    assert torch.equal(early, full)


def test_batched_equals_one_by_one(model):
    rendered = [model.prepare(p) for p in PROMPTS * 2]
    layers = range(model.layout.num_layers)
    batched = features(model, rendered, layers=layers, batch_size=4).z
    single = torch.cat([features(model, [r], layers=layers, batch_size=1).z for r in rendered])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_last_token_index_handles_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 3, 0]
    assert last_token_index(left).tolist() == [3, 3]


def test_hooks_are_installed_once_and_a_plain_forward_is_unaffected(model):
    installed = [len(p._forward_pre_hooks) for p in model.o_projs]
    assert installed == [1] * model.layout.num_layers  # the tap, put on at load
    inputs = model.encode([model.prepare("hi")])
    head_outputs(model, inputs, [1])
    features(model, [model.prepare("hi"), model.prepare("hello there")], layers=[0, 2])
    assert [len(p._forward_pre_hooks) for p in model.o_projs] == installed  # nothing added per call
    with torch.no_grad():
        out = model.model(**inputs)  # no trace active: the hooks do nothing, no StopForward escapes
    assert out.logits.shape[0] == 1
    assert issubclass(StopForward, Exception)
