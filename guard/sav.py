"""Sparse Attention Vectors: the method's math on plain tensors.

Shapes: activations `[N, L, H, D]` (exemplars, layers, heads, head size); labels `[N]` integer
indices into the policy's label list; centroids `[C, L, H, D]`. Nothing here knows models,
files or policies.

Decisions that the paper leaves open, fixed here so results are reproducible:
- similarity ties between centroids go to the lower label index;
- heads are ranked by accuracy, then by mean margin (true-label similarity minus the best other
  label's), then by lower layer, then by lower head index;
- a tie in the vote goes to the tied label chosen by the best-ranked head among those voting
  for a tied label (the authors' "first voted for by the higher-ranked head").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-8


def centroids(acts: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Per-label mean of the raw vectors: `[C, L, H, D]`."""
    sums = torch.zeros((num_labels, *acts.shape[1:]), dtype=acts.dtype, device=acts.device)
    sums.index_add_(0, labels, acts)
    counts = torch.bincount(labels, minlength=num_labels).to(acts.dtype)
    return sums / counts.clamp(min=1).view(-1, *([1] * (acts.dim() - 1)))


def cosine(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last dimension, broadcasting; zero vectors give 0."""
    num = (x * c).sum(-1)
    return num / (x.norm(dim=-1) * c.norm(dim=-1)).clamp(min=EPS)


def exemplar_similarities(acts: torch.Tensor, labels: torch.Tensor, num_labels: int, scoring: str) -> torch.Tensor:
    """Cosine of each exemplar to each label centroid at each head: `[N, C, L, H]`.

    `in_sample`: centroids include the exemplar itself (the paper). `loo`: the exemplar's own
    label centroid is recomputed without it, so a head is scored on items it did not see.
    """
    cents = centroids(acts, labels, num_labels)  # [C, L, H, D]
    sims = cosine(acts[:, None], cents[None])  # [N, C, L, H]
    if scoring == "in_sample":
        return sims
    if scoring != "loo":
        raise ValueError(f"unknown scoring {scoring!r}")
    counts = torch.bincount(labels, minlength=num_labels).to(acts.dtype)
    n_own = counts[labels]  # [N]
    if bool((n_own < 2).any()):
        raise ValueError("leave-one-out scoring needs at least 2 exemplars per label")
    own = cents[labels]  # [N, L, H, D]
    shape = (-1, *([1] * (acts.dim() - 1)))
    loo_own = (own * n_own.view(shape) - acts) / (n_own - 1).view(shape)
    sims = sims.clone()
    sims[torch.arange(len(labels)), labels] = cosine(acts, loo_own)
    return sims


@dataclass
class HeadScores:
    accuracy: torch.Tensor  # [L, H] fraction of exemplars whose nearest centroid is their label
    margin: torch.Tensor  # [L, H] mean (true-label similarity - best other similarity)


def score_heads(acts: torch.Tensor, labels: torch.Tensor, num_labels: int, scoring: str = "loo") -> HeadScores:
    sims = exemplar_similarities(acts, labels, num_labels, scoring)  # [N, C, L, H]
    pred = sims.argmax(dim=1)  # first maximum -> lower label index wins ties
    correct = (pred == labels.view(-1, 1, 1)).to(acts.dtype)
    true_sim = sims.gather(1, labels.view(-1, 1, 1, 1).expand(-1, 1, *sims.shape[2:])).squeeze(1)
    others = sims.clone()
    others.scatter_(1, labels.view(-1, 1, 1, 1).expand(-1, 1, *sims.shape[2:]), float("-inf"))
    margin = true_sim - others.max(dim=1).values
    return HeadScores(accuracy=correct.mean(0), margin=margin.mean(0))


def rank_heads(scores: HeadScores) -> list[tuple[int, int]]:
    """All heads as (layer, head), best first: accuracy, then margin, then layer, then head."""
    num_layers, num_heads = scores.accuracy.shape
    acc, mar = scores.accuracy.tolist(), scores.margin.tolist()
    order = sorted(
        ((layer, head) for layer in range(num_layers) for head in range(num_heads)),
        key=lambda lh: (-acc[lh[0]][lh[1]], -mar[lh[0]][lh[1]], lh[0], lh[1]),
    )
    return order


def select_heads(scores: HeadScores, k: int) -> list[tuple[int, int]]:
    return rank_heads(scores)[: min(k, scores.accuracy.numel())]


def head_similarities(x: torch.Tensor, head_centroids: torch.Tensor) -> torch.Tensor:
    """x `[B, K, D]` (selected heads), centroids `[C, K, D]` -> cosine `[B, K, C]`."""
    return cosine(x[:, :, None, :], head_centroids.permute(1, 0, 2)[None])


def vote(sims: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Majority vote of the selected heads (ordered best first).

    sims `[B, K, C]` -> (winner `[B]`, per-head votes `[B, K]`, vote counts `[B, C]`).
    """
    batch, k, num_labels = sims.shape
    votes = sims.argmax(dim=-1)  # [B, K]
    counts = torch.zeros((batch, num_labels), dtype=torch.long, device=sims.device)
    counts.scatter_add_(1, votes, torch.ones_like(votes))
    tied = counts == counts.max(dim=1, keepdim=True).values  # [B, C]
    # Tie rule: the first head (best rank) whose vote is one of the tied labels decides.
    voter_is_tied = tied.gather(1, votes)  # [B, K]
    first = voter_is_tied.to(torch.int8).argmax(dim=1)  # first True along heads
    winner = votes.gather(1, first.view(-1, 1)).squeeze(1)
    return winner, votes, counts


def at_heads(acts: torch.Tensor, heads: list[tuple[int, int]]) -> torch.Tensor:
    """The given (layer, head) slices of activations `[N, L, H, D]`, in order: `[N, k, D]`."""
    return acts[:, [layer for layer, _ in heads], [head for _, head in heads]]


def fit_heads(acts: torch.Tensor, labels: torch.Tensor, num_labels: int, k: int, scoring: str = "loo"):
    """The whole fit: scores of every head, the top-k heads, and their centroids `[C, k, D]`."""
    scores = score_heads(acts, labels, num_labels, scoring)
    heads = select_heads(scores, k)
    return scores, heads, centroids(at_heads(acts, heads), labels, num_labels)


def predict(acts: torch.Tensor, heads: list[tuple[int, int]], head_centroids: torch.Tensor) -> torch.Tensor:
    """Winner label per row for full activations `[B, L, H, D]` and centroids `[C, K, D]` of `heads`."""
    return vote(head_similarities(at_heads(acts, heads), head_centroids))[0]
