"""Checking inputs: verdicts, explanations, and the fast path equals the slow path."""

import pytest
import torch

from guard import sav
from guard.capture import head_outputs
from guard.compiler import compile_policy
from guard.errors import GuardError
from guard.runtime import Guard

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
    d = verdict.to_dict()
    assert list(d) == ["policy", "version", "flagged", "label", "scores", "votes"]
    assert {"layer", "head", "label", "similarity"} <= set(d["votes"][0])


def test_fast_path_equals_full_forward_with_all_heads(guard, llama):
    """Early exit + selected layers only must give the verdicts of a full forward over all heads."""
    fast = guard.check_batch(INPUTS, batch_size=3)
    rendered = [guard.render(t) for t in INPUTS]
    full = torch.cat([head_outputs(llama, llama.encode([r]), range(llama.layout.num_layers), early_stop=False) for r in rendered])
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
