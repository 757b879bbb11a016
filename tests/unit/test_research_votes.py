"""The research-only weighted vote of benchmarks/research_votes.py, against a naive implementation."""

import math

import pytest
import torch

from benchmarks.research_votes import reliability_weights, weighted_vote
from guard.method import sav


def naive_weighted_vote(head_votes, weights, C):
    totals = [sum(w for v, w in zip(head_votes, weights) if v == c) for c in range(C)]
    top = max(totals)
    for v in head_votes:
        if abs(totals[v] - top) <= 1e-9:
            winner = v
            break
    s = sum(totals)
    return winner, [t / s for t in totals]


@pytest.mark.parametrize("seed", range(5))
def test_weighted_vote_matches_naive(seed):
    g = torch.Generator().manual_seed(seed)
    sims = torch.randn(6, 7, 3, generator=g, dtype=torch.float64)
    weights = torch.tensor([2.0, 1.0, 1.0, 0.5, 0.5, 3.0, 0.0], dtype=torch.float64)
    if seed == 0:
        weights = torch.ones(7, dtype=torch.float64)  # equal weights: the plain vote
    winner, votes, shares = weighted_vote(sims, weights)
    for b in range(6):
        hv = [max(range(3), key=lambda c: (sims[b, k, c].item(), -c)) for k in range(7)]
        w, sh = naive_weighted_vote(hv, weights.tolist(), 3)
        assert votes[b].tolist() == hv and winner[b].item() == w
        assert shares[b].tolist() == pytest.approx(sh)
    if seed == 0:
        assert torch.equal(winner, sav.vote(sims)[0])


def test_reliability_weights_are_log_odds_over_chance():
    acc = torch.tensor([[0.5, 0.75, 1.0], [0.3, 0.9, 0.6]], dtype=torch.float64)
    w = reliability_weights(acc, 2)
    assert w[0, 0] == 0 and w[1, 0] == 0  # chance or worse: no vote
    assert w[0, 1].item() == pytest.approx(math.log(3))
    assert w[0, 2].item() == pytest.approx(math.log(0.99 / 0.01))  # clipped, finite
    w3 = reliability_weights(torch.tensor([1 / 3, 0.5]), 3)
    assert w3[0].item() == pytest.approx(0, abs=1e-6) and w3[1].item() == pytest.approx(math.log(2))
