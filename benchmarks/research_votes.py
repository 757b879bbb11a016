"""Research-only votes (benchmarks/study_text_harm.py): each head's vote weighted by its reliability.
Studied for guard 0.2 and not adopted; kept here, out of the library, to rerun the study."""

from __future__ import annotations

import math

import torch

from guard.method.sav import EPS


def reliability_weights(accuracy: torch.Tensor, num_labels: int) -> torch.Tensor:
    """A head's vote weight from its (leave-one-out) accuracy: the log-odds of being right over
    chance, log(acc / (1 - acc)) - log(1 / (C - 1)), floored at 0 (a head at chance or worse
    does not vote) and with accuracy clipped to [0.5/N-ish, 0.99] so a perfect head is not infinite."""
    acc = accuracy.clamp(max=0.99)
    chance = 1.0 / num_labels
    weights = torch.log(acc / (1 - acc)) - math.log(chance / (1 - chance))
    return weights.clamp(min=0.0)


def weighted_vote(sims: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like `vote`, but each head's vote counts `weights[k]`: sims `[B, K, C]`, weights `[K]` ->
    (winner `[B]`, per-head votes `[B, K]`, weighted vote shares `[B, C]` summing to 1).
    Ties (equal weighted totals) go to the tied label first voted for by the best-ranked head."""
    batch, k, num_labels = sims.shape
    votes = sims.argmax(dim=-1)
    w = weights.to(sims.dtype).view(1, k).expand(batch, k)
    totals = torch.zeros((batch, num_labels), dtype=sims.dtype, device=sims.device)
    totals.scatter_add_(1, votes, w)
    shares = totals / totals.sum(dim=1, keepdim=True).clamp(min=EPS)
    tied = (totals - totals.max(dim=1, keepdim=True).values).abs() <= 1e-9
    first = tied.gather(1, votes).to(torch.int8).argmax(dim=1)
    winner = votes.gather(1, first.view(-1, 1)).squeeze(1)
    return winner, votes, shares
