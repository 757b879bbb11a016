"""Sparse Attention Vectors: the method's math on plain tensors.

Shapes: activations `[N, L, H, D]` (exemplars, layers, heads, head size); labels `[N]` integer
indices into the policy's label list; centroids `[C, L, H, D]`; optional exemplar weights `[N]`
(an exemplar of weight w counts as w copies of itself in every fit: head scores, centroids,
prototypes and the probe; None is weight 1 for all). Nothing here knows models, files or policies.

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


def weights_or_ones(weights: torch.Tensor | None, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The exemplar weights `[N]` in `dtype`, or ones when there are none."""
    if weights is None:
        return torch.ones(len(labels), dtype=dtype, device=labels.device)
    return weights.to(dtype=dtype, device=labels.device)


def is_unweighted(weights: torch.Tensor | None) -> bool:
    return weights is None or bool((weights == 1).all())


def centroids(
    acts: torch.Tensor, labels: torch.Tensor, num_labels: int, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-label (weighted) mean of the raw vectors: `[C, L, H, D]`."""
    w = weights_or_ones(weights, labels, acts.dtype)
    shape = (-1, *([1] * (acts.dim() - 1)))
    sums = torch.zeros((num_labels, *acts.shape[1:]), dtype=acts.dtype, device=acts.device)
    sums.index_add_(0, labels, acts if weights is None else acts * w.view(shape))
    totals = torch.zeros(num_labels, dtype=acts.dtype, device=acts.device).index_add_(0, labels, w)
    return sums / totals.clamp(min=EPS if weights is not None else 1).view(shape)


def cosine(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last dimension, broadcasting; zero vectors give 0."""
    num = (x * c).sum(-1)
    return num / (x.norm(dim=-1) * c.norm(dim=-1)).clamp(min=EPS)


def exemplar_similarities(
    acts: torch.Tensor, labels: torch.Tensor, num_labels: int, scoring: str, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cosine of each exemplar to each label centroid at each head: `[N, C, L, H]`.

    `in_sample`: centroids include the exemplar itself (the paper). `loo`: the exemplar's own
    label centroid is recomputed without it (all its weight), so a head is scored on items it did not see.
    """
    cents = centroids(acts, labels, num_labels, weights)  # [C, L, H, D]
    sims = cosine(acts[:, None], cents[None])  # [N, C, L, H]
    if scoring == "in_sample":
        return sims
    if scoring != "loo":
        raise ValueError(f"unknown scoring {scoring!r}")
    if bool((torch.bincount(labels, minlength=num_labels)[labels] < 2).any()):
        raise ValueError("leave-one-out scoring needs at least 2 exemplars per label")
    w = weights_or_ones(weights, labels, acts.dtype)
    totals = torch.zeros(num_labels, dtype=acts.dtype, device=acts.device).index_add_(0, labels, w)
    w_own = totals[labels]  # [N]
    own = cents[labels]  # [N, L, H, D]
    shape = (-1, *([1] * (acts.dim() - 1)))
    loo_own = (own * w_own.view(shape) - acts * w.view(shape)) / (w_own - w).view(shape)
    sims = sims.clone()
    sims[torch.arange(len(labels)), labels] = cosine(acts, loo_own)
    return sims


@dataclass
class HeadScores:
    accuracy: torch.Tensor  # [L, H] fraction of exemplars whose nearest centroid is their label
    margin: torch.Tensor  # [L, H] mean (true-label similarity - best other similarity)


def score_heads(
    acts: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    scoring: str = "loo",
    weights: torch.Tensor | None = None,
) -> HeadScores:
    """Each head's (weighted) share of exemplars nearest their own label's centroid, and mean margin."""
    sims = exemplar_similarities(acts, labels, num_labels, scoring, weights)  # [N, C, L, H]
    pred = sims.argmax(dim=1)  # first maximum -> lower label index wins ties
    correct = (pred == labels.view(-1, 1, 1)).to(acts.dtype)
    true_sim = sims.gather(1, labels.view(-1, 1, 1, 1).expand(-1, 1, *sims.shape[2:])).squeeze(1)
    others = sims.clone()
    others.scatter_(1, labels.view(-1, 1, 1, 1).expand(-1, 1, *sims.shape[2:]), float("-inf"))
    margin = true_sim - others.max(dim=1).values
    if weights is None:
        return HeadScores(accuracy=correct.mean(0), margin=margin.mean(0))
    share = (weights_or_ones(weights, labels, acts.dtype) / weights.sum()).view(-1, 1, 1)
    return HeadScores(accuracy=(correct * share).sum(0), margin=(margin * share).sum(0))


def rank_heads(scores: HeadScores, max_layer: int | None = None) -> list[tuple[int, int]]:
    """All heads as (layer, head), best first: accuracy, then margin, then layer, then head.
    `max_layer` leaves out heads in deeper layers (a check runs the model only that far)."""
    num_layers, num_heads = scores.accuracy.shape
    if max_layer is not None:
        num_layers = min(num_layers, max_layer + 1)
    acc, mar = scores.accuracy.tolist(), scores.margin.tolist()
    order = sorted(
        ((layer, head) for layer in range(num_layers) for head in range(num_heads)),
        key=lambda lh: (-acc[lh[0]][lh[1]], -mar[lh[0]][lh[1]], lh[0], lh[1]),
    )
    return order


def select_heads(scores: HeadScores, k: int, max_layer: int | None = None) -> list[tuple[int, int]]:
    return rank_heads(scores, max_layer)[:k]


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


def predict(acts: torch.Tensor, heads: list[tuple[int, int]], head_centroids: torch.Tensor) -> torch.Tensor:
    """Winner label per row for full activations `[B, L, H, D]` and centroids `[C, K, D]` of `heads`."""
    return vote(head_similarities(at_heads(acts, heads), head_centroids))[0]


# --- variants beyond the paper: several prototypes, nearest exemplars ------------------------------
#
# A head's similarity to a label is, in general, the mean of its `top` highest cosines to that
# label's entries in a *bank* of vectors at that head: the label centroids (one entry per label,
# the paper), several prototypes per label (k-means clusters: harmful requests are many
# clusters, one mean blurs them), or the exemplars themselves (nearest exemplars). The head votes
# for the label it is most similar to.


def bank_similarities(x: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_labels: int, top: int = 1):
    """x `[B, K, D]`, bank `[M, K, D]` with labels `[M]` -> `[B, K, C]`: per head and label, the
    mean of the `top` highest cosines to that label's bank entries (all of them if fewer)."""
    sims = cosine(x[:, None], bank[None])  # [B, M, K]
    out = torch.empty((x.shape[0], x.shape[1], num_labels), dtype=sims.dtype, device=sims.device)
    for c in range(num_labels):
        own = sims[:, bank_labels == c]  # [B, Mc, K]
        t = min(top, own.shape[1])
        # top 1 (centroids, prototypes) is a plain max: one op, as the ONNX export traces it
        out[:, :, c] = own.amax(dim=1) if t == 1 else own.topk(t, dim=1).values.mean(dim=1)
    return out


def prototypes(
    acts: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    per_label: int,
    iterations: int = 20,
    weights: torch.Tensor | None = None,
):
    """Up to `per_label` prototypes per label at each head, by (weighted) spherical k-means on the unit
    vectors of that label's exemplars: `(bank [M, K, D], bank_labels [M])`, M = labels x per_label
    (a label with fewer exemplars repeats its last ones; repeats change no similarity).

    Deterministic: farthest-point initialisation from the exemplar closest to the label's mean
    direction, then Lloyd iterations (assign by cosine, re-average, re-normalise).
    """
    unit = acts / acts.norm(dim=-1, keepdim=True).clamp(min=EPS)  # [N, K, D]
    w = weights_or_ones(weights, labels, acts.dtype)
    banks = []
    for c in range(num_labels):
        members = unit[labels == c].transpose(0, 1)  # [K, n, D]
        mass = w[labels == c].view(1, -1, 1)  # [1, n, 1]
        k_heads, n, _ = members.shape
        p = min(per_label, n)
        # the (weighted) mean: only its direction counts
        mean = members.mean(dim=1, keepdim=True) if weights is None else (members * mass).sum(dim=1, keepdim=True)
        first = (members * mean).sum(-1).argmax(dim=1)  # [K]
        chosen = [first]
        for _ in range(1, p):  # farthest point: the member least similar to its nearest centre
            centres = torch.stack([members[torch.arange(k_heads), i] for i in chosen], dim=1)  # [K, j, D]
            nearest = torch.einsum("knd,kjd->knj", members, centres).max(dim=2).values  # [K, n]
            chosen.append(nearest.argmin(dim=1))
        centres = torch.stack([members[torch.arange(k_heads), i] for i in chosen], dim=1)  # [K, p, D]
        for _ in range(iterations):
            assign = torch.einsum("knd,kpd->knp", members, centres).argmax(dim=2)  # [K, n]
            onehot = torch.nn.functional.one_hot(assign, p).to(members.dtype)  # [K, n, p]
            sums = torch.einsum("knp,knd->kpd", onehot, members * mass)
            empty = onehot.sum(dim=1) == 0  # [K, p]: keep an empty cluster's centre
            sums = torch.where(empty[..., None], centres, sums)
            centres = sums / sums.norm(dim=-1, keepdim=True).clamp(min=EPS)
        if p < per_label:
            centres = torch.cat([centres, centres[:, -1:].expand(-1, per_label - p, -1)], dim=1)
        banks.append(centres.transpose(0, 1))  # [per_label, K, D]
    bank = torch.cat(banks)
    return bank, torch.arange(num_labels).repeat_interleave(per_label)


def label_values(sims: torch.Tensor, counts: torch.Tensor, vote: str) -> torch.Tensor:
    """What the decision and calibration read per label, `[B, C]`: `count`, each label's share
    of the votes (the paper); `margin`, the heads' mean similarity to the label minus the best
    other label's mean similarity (a soft vote: each head counts by how sure it is)."""
    if vote == "count":
        return counts.to(sims.dtype) / sims.shape[1]
    if vote != "margin":
        raise ValueError(f"unknown vote {vote!r}")
    mean = sims.mean(dim=1)  # [B, C]
    if mean.shape[1] == 1:
        return mean
    top2 = mean.topk(2, dim=1).values  # [B, 2]
    best_other = torch.where(mean == top2[:, :1], top2[:, 1:], top2[:, :1])
    return mean - best_other


def classify(sims: torch.Tensor, vote: str = "count") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Heads' similarities `[B, K, C]` -> (winner `[B]`, per-head votes `[B, K]`, vote counts
    `[B, C]`, label values `[B, C]`, see `label_values`). `count`: the majority vote with the
    paper's tie rule; `margin`: the label with the highest mean similarity (ties: lower index)."""
    winner, votes, counts = vote_fn(sims)
    values = label_values(sims, counts, vote)
    if vote == "margin":
        winner = sims.mean(dim=1).argmax(dim=1)
    return winner, votes, counts, values


vote_fn = vote  # `classify` takes a `vote` argument that shadows the function


BANKS = ("centroid", "probe")


def fit_bank(
    selected: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    per_label: int = 1,
    bank: str = "centroid",
    weights: torch.Tensor | None = None,
):
    """What each selected head compares an input with, `(bank [M, K, D], bank_labels [M])`: the
    label centroids (raw means, the paper) for one prototype per label, else `prototypes`; or
    (`bank="probe"`, two labels) the unit vectors of `probe_bank`; all weighted by `weights`."""
    if bank == "probe":
        return probe_bank(selected, labels, weights=weights), torch.arange(2)
    if bank != "centroid":
        raise ValueError(f"unknown bank {bank!r}")
    if per_label == 1:
        return centroids(selected, labels, num_labels, weights), torch.arange(num_labels)
    return prototypes(selected, labels, num_labels, per_label, weights=weights)


# --- the probe: a logistic regression over the selected heads, voting head by head ---------------
#
# Nearest-centroid cosine is a linear rule on unit vectors: head k's margin cos(x, u) - cos(x, v)
# is x/|x| . (u - v). Any weight vector w_k with |w_k| < 2 is such a difference of two unit
# vectors (u, v = p +- w_k/2 with p a unit-length-completing vector orthogonal to w_k), so a
# logistic regression over the heads' unit vectors, scaled to fit, becomes one "centroid" pair per
# head: the margin vote then computes its logit up to a positive factor (which calibration's Platt
# map absorbs, with the intercept), each head still votes for the label its own term favours, and
# the ONNX export, the store and explanations need nothing new. The regression is fitted on every
# exemplar of both labels at once, so it weighs what separates them across all sources, not each
# label's mean: with many exemplars of many registers that generalises better than the centroids.

PROBE_WEIGHT_DECAY = 1e-4  # L2 on the weights of unit-length inputs (chosen by leave-one-source-out
# accuracy on the fitted side of the default policy's data: benchmarks/study_public_data.py)
PROBE_STEPS = 200


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=EPS)


def logistic_fit(
    x: torch.Tensor,
    positive: torch.Tensor,
    weight_decay: float = PROBE_WEIGHT_DECAY,
    steps: int = PROBE_STEPS,
    intercept: bool = True,
    sample_weight: torch.Tensor | None = None,
):
    """Class-balanced L2 logistic regression, x `[N, F]`, positive `[N]` bool -> (w `[F]`, b)
    (b = 0 without `intercept`). `sample_weight` `[N]` counts an item that many times, within its
    class's half of the loss. Deterministic: float64, zero start, full-batch L-BFGS."""
    x = x.double()
    y = positive.double()
    if sample_weight is None:
        share = y.mean().clamp(1e-6, 1 - 1e-6)
        weight = torch.where(positive, 0.5 / share, 0.5 / (1 - share))
    else:  # each class still carries half the loss, spread by weight; the mean is over the total weight
        s = sample_weight.double()
        share = ((s * y).sum() / s.sum()).clamp(1e-6, 1 - 1e-6)
        weight = s * torch.where(positive, 0.5 / share, 0.5 / (1 - share)) * (len(s) / s.sum())
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=intercept)
    opt = torch.optim.LBFGS(
        [w, b] if intercept else [w], lr=1, max_iter=steps, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def loss_fn():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none")
        loss = (loss * weight).mean() + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.inference_mode(False), torch.enable_grad():
        opt.step(loss_fn)
    return w.detach(), float(b.detach())


def probe_bank(
    selected: torch.Tensor,
    labels: torch.Tensor,
    weight_decay: float = PROBE_WEIGHT_DECAY,
    weights: torch.Tensor | None = None,
):
    """Two labels: the logistic regression of label 0 against label 1 on the selected heads' unit
    vectors `[N, K, D]`, as a bank `[2, K, D]` of unit vectors (u_k for label 0, v_k for label 1)
    with u_k - v_k = w_k / s (s scales the largest |w_k| to 1.9). Each pair is centred on the head's
    mean exemplar direction, so the similarities read like centroid similarities.

    No intercept: a dot product with unit vectors has no constant term, so the regression finds its
    own along the heads' mean directions (every unit head output lies close to its mean, so that
    component is nearly constant). The margin vote's sign is then the regression's decision, and a
    head's vote is the sign of its own term, the intercept's share included."""
    x = unit(selected.double())  # [N, K, D]
    n, k, d = x.shape
    w, _ = logistic_fit(x.reshape(n, k * d), labels == 0, weight_decay, intercept=False, sample_weight=weights)
    w = w.view(k, d)
    w = w / (w.norm(dim=-1).max().clamp(min=EPS) / 1.9)
    mean = unit(x.mean(0) if weights is None else (x * weights.to(x.dtype).view(-1, 1, 1)).sum(0))  # [K, D]
    along = unit(w)
    p = unit(mean - (mean * along).sum(-1, keepdim=True) * along)  # orthogonal to w_k
    p = p * (1 - (w * w).sum(-1, keepdim=True) / 4).clamp(min=0).sqrt()
    return torch.stack([p + w / 2, p - w / 2]).to(selected.dtype)
