"""Checking inputs: verdicts, explanations, and the fast path equals the slow path."""

import pytest
import torch

from guard.check.engine import Guard
from guard.compiler import compile_policy
from guard.errors import GuardError
from guard.method import sav
from guard.models.capture import head_outputs

INPUTS = ["how do I kill a python process", "help me hurt my neighbour", "a poem about birds", "x"]


@pytest.fixture
def guard(tiny_policy, db, llama):
    compile_policy(tiny_policy, db, loaded=llama)
    return Guard.load(db, model=llama)


def test_verdict_has_label_scores_and_one_vote_per_selected_head(guard):
    verdict = guard.check("help me hurt my neighbour")
    art = guard.artifact
    assert verdict.label in ("harmful", "benign")
    assert verdict.flagged == (verdict.label == "harmful")
    assert sum(verdict.scores.values()) == pytest.approx(1.0)
    assert [(v.layer, v.head) for v in verdict.votes] == art.heads
    for vote in verdict.votes:
        assert set(vote.similarity) == {"harmful", "benign"}
        assert vote.label == max(vote.similarity, key=vote.similarity.get)
    assert verdict.scores[verdict.label] == max(verdict.scores.values())
    d = verdict.to_dict()  # the tiny policy's calibration is flat: no thresholds, the vote decides
    assert list(d) == [
        "policy",
        "version",
        "flagged",
        "label",
        "scores",
        "votes",
        "calibrated",
        "margin",
        "uncertain",
    ]
    assert {"layer", "head", "label", "similarity"} <= set(d["votes"][0])


def test_fast_path_equals_full_forward_with_all_heads(guard, llama):
    """Early exit + selected layers only must give the verdicts of a full forward over all heads."""
    fast = guard.check_batch(INPUTS, batch_size=3)
    rendered = [guard.render(t) for t in INPUTS]
    full = torch.cat(
        [head_outputs(llama, llama.encode([r]), range(llama.layout.num_layers), early_stop=False) for r in rendered]
    )
    art = guard.artifact
    slow = sav.predict(full, art.heads, art.centroids)
    assert [v.label for v in fast] == [art.label_names[i] for i in slow.tolist()]
    sims = sav.head_similarities(full[:, [h[0] for h in art.heads], [h[1] for h in art.heads]], art.centroids)
    for verdict, row in zip(fast, sims):
        got = torch.tensor([[v.similarity[n] for n in art.label_names] for v in verdict.votes])
        torch.testing.assert_close(got, row, rtol=1e-4, atol=1e-5)


def test_check_batch_equals_check_one_by_one(guard):
    batch = guard.check_batch(INPUTS, batch_size=2)
    single = [guard.check(t) for t in INPUTS]
    assert [b.label for b in batch] == [s.label for s in single]
    for b, s in zip(batch, single):
        for vb, vs in zip(b.votes, s.votes):
            assert vb.similarity == pytest.approx(vs.similarity, abs=1e-5)


def test_empty_text_is_an_error(guard):
    with pytest.raises(GuardError, match="empty text"):
        guard.check("   ")
    assert guard.check_batch([]) == []


def test_exemplar_checks_reproduce_training_votes(guard, tiny_policy):
    """Checking an exemplar votes as the in-sample training vote did (same vectors, same centroids)."""
    from guard.policy import load_policy

    policy = load_policy(tiny_policy)
    verdicts = guard.check_batch([e.text for e in policy.exemplars])
    labels = torch.tensor(guard.artifact.exemplar_labels)
    expected = sav.vote(sav.head_similarities(guard.artifact.exemplar_vectors, guard.artifact.centroids))[0]
    assert [v.label for v in verdicts] == [guard.artifact.label_names[i] for i in expected.tolist()]
    accuracy = sum(v.label == policy.exemplars[i].label for i, v in enumerate(verdicts)) / len(verdicts)
    assert accuracy == pytest.approx(guard.artifact.metrics["train_accuracy"])
    assert len(labels) == len(verdicts)


def test_policies_sharing_a_prompt_share_one_forward(tmp_path, db, llama, llama_dir):
    """Several policies checked together give each policy's own verdicts, from one forward per batch."""
    from guard.check.engine import GuardSet
    from tests.fixtures import TEXTS, write_policy

    compile_policy(write_policy(tmp_path, llama_dir, TEXTS, name="a", heads=3), db, loaded=llama)
    compile_policy(write_policy(tmp_path, llama_dir, TEXTS, name="b", heads=6, scoring="in_sample"), db, loaded=llama)
    other = write_policy(tmp_path, llama_dir, TEXTS, name="c", heads=2)
    other.write_text(other.read_text().replace("Request:", "Message:"))
    compile_policy(other, db, loaded=llama)

    forwards = []
    hook = llama.model.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        together = GuardSet.load(db, ["a", "b", "c"], model=llama).check_batch(INPUTS, batch_size=16)
        assert len(forwards) == 2  # one for the shared prompt (a, b), one for c's prompt
        forwards.clear()
        alone = {name: Guard.load(db, name, model=llama).check_batch(INPUTS, batch_size=16) for name in "abc"}
        assert len(forwards) == 3
    finally:
        hook.remove()
    for i, result in enumerate(together):
        assert list(result) == ["a", "b", "c"]
        for name in "abc":
            assert result[name].label == alone[name][i].label
            assert result[name].scores == alone[name][i].scores
            for v1, v2 in zip(result[name].votes, alone[name][i].votes):
                assert (v1.layer, v1.head, v1.label) == (v2.layer, v2.head, v2.label)
                assert v1.similarity == pytest.approx(v2.similarity, abs=1e-6)


def test_guard_set_refuses_policies_from_different_models(tmp_path, db, llama, llama_dir):
    from guard.check.engine import GuardSet
    from tests.fixtures import TEXTS, make_text_model, write_policy

    compile_policy(write_policy(tmp_path, llama_dir, TEXTS, name="a"), db, loaded=llama)
    other = make_text_model(tmp_path / "other", seed=3)
    compile_policy(write_policy(tmp_path, other, TEXTS, name="b"), db, device="cpu")
    with pytest.raises(GuardError, match="compiled on different models"):
        GuardSet.load(db, ["a", "b"])
