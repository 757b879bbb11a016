"""Calibrated scores and thresholds from cross-fitted SAV votes: pure tensors and floats.

Method ("platt-loo"):

1. **Cross-fitted votes.** Each exemplar is classified by a SAV fit that never saw it: heads are
   re-scored and re-selected on the other exemplars, centroids are their means, and the item's
   vote shares are recorded (exact leave-one-out, computed from dot products: see below).
   Re-selecting the heads matters: the compile-time "loo" accuracy keeps the heads chosen with
   the item present and is optimistic (default policy: 90% vs 81% on held-out data), while the
   cross-fitted vote is as accurate on the exemplars as SAV is on new inputs (80% vs 81%).
2. **Platt scaling per label**, one-vs-rest: P(label c | share of heads voting c) =
   sigmoid(a * share + b), fitted by Newton's method on Platt's smoothed targets
   ((n+ + 1) / (n+ + 2) for positives, 1 / (n- + 2) for negatives) and constrained to a >= 0.
   Two parameters suit calibration sets of a few dozen items (isotonic regression overfits them
   and returns exact 0 and 1); a >= 0 makes the map monotone; the smoothed targets keep it off
   exact 0 and 1 but, when the votes separate the labels, put unanimous votes within a few
   percent of the extremes. With two labels the two maps are exact complements (shares and
   targets both are), so the scores sum to 1; with more labels each score is one-vs-rest.
3. **Thresholds** per flagged label with a target, chosen on the cross-fitted calibrated scores:
   `recall: r` -> the highest threshold whose recall is at least r; `fpr: f` -> the lowest
   threshold whose false-positive rate is at most f. A label is flagged when its calibrated
   score is >= its threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from guard.method import sav
from guard.method.fit import Fit

METHOD = "platt-loo"
# Where each vote rule's value changes the winner between two labels (guard.method.sav.label_values):
# a majority of heads (share 1/2) or a positive mean similarity margin.
VOTE_BOUNDARY = {"count": 0.5, "margin": 0.0}
PROB_FLOOR = 1e-6  # calibrated scores stay in [PROB_FLOOR, 1 - PROB_FLOOR]


# --- cross-fitted votes -------------------------------------------------------------------------


def min_exemplars(scoring: str) -> int:
    """Exemplars per label that leave-one-out votes need (one left out, then `scoring` on the rest)."""
    return 3 if scoring == "loo" else 2


def can_calibrate(labels: torch.Tensor, num_labels: int, scoring: str) -> bool:
    return bool((torch.bincount(labels, minlength=num_labels) >= min_exemplars(scoring)).all())


def leave_one_out_votes(
    acts: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    k: int,
    scoring: str = "loo",
    chunk: int = 8,
    max_layer: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vote counts `[N, C]` and winners `[N]` of each exemplar from a SAV fit on all the others:
    heads scored (with `scoring`) and selected without it, centroids the others' means.

    Equal to running `sav.score_heads` / `select_heads` / `centroids` / `vote` N times (the tests
    check exactly that), but computed from dot products: a centroid without items i and j is the
    label sum minus them, so every cosine follows from the Gram matrix of each head's vectors,
    each label's sum, and their products, in float64. Cost ~ N^2 x heads x head_dim, in chunks
    of `chunk` left-out items, instead of N separate fits.
    """
    # long: one vectorised computation; its steps share a dozen [N, C, heads] tensors, and the tests compare it as a whole with N separate fits
    n_items, num_layers, num_heads, _ = acts.shape
    if not can_calibrate(labels, num_labels, scoring):
        need = min_exemplars(scoring)
        raise ValueError(f"leave-one-out votes with {scoring} scoring need at least {need} exemplars per label")
    x = acts.flatten(1, 2).double()  # [N, LH, D]
    onehot = torch.nn.functional.one_hot(labels, num_labels).double()  # [N, C]
    sums = torch.einsum("nc,nhd->chd", onehot, x)  # [C, LH, D]
    p = torch.einsum("nhd,chd->nch", x, sums)  # x_j . S_c      [N, C, LH]
    q = (sums * sums).sum(-1)  # |S_c|^2                          [C, LH]
    g = (x * x).sum(-1)  # |x_j|^2                                  [N, LH]
    norm = g.sqrt()
    own = onehot if scoring == "loo" else torch.zeros_like(onehot)  # remove j from its own centroid?
    e = own[None, :, :, None]  # eps(c, y_j)       [1, N, C, 1]
    counts = torch.zeros((n_items, num_labels), dtype=torch.long)
    winners = torch.zeros(n_items, dtype=torch.long)
    for start in range(0, n_items, chunk):
        rows = torch.arange(start, min(start + chunk, n_items))
        b = len(rows)
        gram = torch.einsum("bhd,nhd->bnh", x[rows], x)[:, :, None, :]  # x_i . x_j  [b, N, 1, LH]
        d = onehot[rows][:, None, :, None]  # delta(c, y_i)   [b, 1, C, 1]
        # cosine of every other item j to each label centroid without i (and without j for loo)
        dot = p[None] - d * gram - e * g[None, :, None, :]
        sq = (
            q[None, None]
            - 2 * d * p[rows][:, None]
            - 2 * e * p[None]
            + d * g[rows][:, None, None, :]
            + 2 * d * e * gram
            + e * g[None, :, None, :]
        )
        cos = dot / (norm[None, :, None, :] * sq.clamp(min=0).sqrt()).clamp(min=sav.EPS)  # [b, N, C, LH]
        truth = labels[None, :, None].expand(b, -1, cos.shape[-1])  # [b, N, LH]
        correct = (cos.argmax(dim=2) == truth).double()
        true_sim = cos.gather(2, truth[:, :, None]).squeeze(2)
        margin = true_sim - cos.scatter(2, truth[:, :, None], float("-inf")).max(dim=2).values
        others = torch.ones((b, n_items), dtype=torch.double)
        others[torch.arange(b), rows] = 0.0  # j = i is not scored
        accuracy = torch.einsum("bnh,bn->bh", correct, others) / (n_items - 1)
        mean_margin = torch.einsum("bnh,bn->bh", margin, others) / (n_items - 1)
        for r, i in enumerate(rows.tolist()):
            scores = sav.HeadScores(accuracy[r].view(num_layers, num_heads), mean_margin[r].view(num_layers, num_heads))
            flat = torch.tensor([layer * num_heads + head for layer, head in sav.select_heads(scores, k, max_layer)])
            # the item against centroids of all the others: S_c - delta x_i
            di = onehot[i][:, None]  # [C, 1]
            dot_i = p[i][:, flat] - di * g[i][flat]
            sq_i = q[:, flat] - 2 * di * p[i][:, flat] + di * g[i][flat]
            sims = dot_i / (norm[i][flat] * sq_i.clamp(min=0).sqrt()).clamp(min=sav.EPS)  # [C, k]
            win, _, cnt = sav.vote(sims.T[None])
            winners[i], counts[i] = win[0], cnt[0]
    return counts, winners


CROSS_FIT_FOLDS = 10
CROSS_FIT_METHOD = f"platt-cv{CROSS_FIT_FOLDS}"


def folds_of(labels: torch.Tensor, num_labels: int, folds: int = CROSS_FIT_FOLDS) -> torch.Tensor:
    """Each item's fold, stratified and deterministic: the i-th item of a label goes to fold i mod folds."""
    fold = torch.empty(len(labels), dtype=torch.long)
    for c in range(num_labels):
        members = (labels == c).nonzero().flatten()
        fold[members] = torch.arange(len(members)) % folds
    return fold


def cross_fitted_values(
    fit: Fit,
    acts: torch.Tensor,
    labels: torch.Tensor,
    folds: int = CROSS_FIT_FOLDS,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Label values `[N, C]` (guard.method.sav.label_values) and winners `[N]` of each exemplar from
    `fit` on the other folds: heads scored and selected, bank (centroids, prototypes or probe)
    fitted, without the fold (with the other folds' `weights`). For the settings, and the
    weighted exemplars, that the exact leave-one-out shortcut does not cover."""
    fold = folds_of(labels, fit.num_labels, folds)
    values = torch.zeros((len(labels), fit.num_labels), dtype=torch.float64)
    winners = torch.zeros(len(labels), dtype=torch.long)
    for f in range(folds):
        test = fold == f
        if not bool(test.any()):
            continue
        kept = None if weights is None else weights[~test]
        win, _, _, val = fit(acts[~test], labels[~test], weights=kept).classify(acts[test])
        values[test], winners[test] = val.double(), win
    return values, winners


def vote_margin(counts: torch.Tensor) -> torch.Tensor:
    """(most votes - second most votes) / heads, per row of `[B, C]` counts: 0 is a tie, 1 unanimous."""
    top2 = counts.topk(2, dim=1).values.to(torch.float64)
    return (top2[:, 0] - top2[:, 1]) / counts.sum(dim=1).clamp(min=1)


# --- Platt scaling ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Platt:
    slope: float  # a >= 0
    intercept: float  # b

    def __call__(self, x: float) -> float:
        z = self.slope * x + self.intercept
        p = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
        return min(max(p, PROB_FLOOR), 1.0 - PROB_FLOOR)


def _nll(a: float, b: float, xs: Sequence[float], ts: Sequence[float]) -> float:
    total = 0.0
    for x, t in zip(xs, ts):
        z = a * x + b
        # log(1 + e^z) computed stably; -[t log p + (1-t) log(1-p)] = log(1+e^z) - t z
        total += (z if z > 0 else 0.0) + math.log1p(math.exp(-abs(z))) - t * z
    return total


def fit_platt(xs: Sequence[float], positive: Sequence[bool], iterations: int = 100) -> Platt:
    """Platt scaling of scores `xs` against binary outcomes, with Platt's smoothed targets, a >= 0."""
    xs = [float(x) for x in xs]
    n_pos = sum(bool(p) for p in positive)
    n_neg = len(xs) - n_pos
    if not xs:
        raise ValueError("no data to calibrate on")
    hi, lo = (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0)
    ts = [hi if p else lo for p in positive]
    mean_t = sum(ts) / len(ts)
    a, b = 0.0, math.log(mean_t / (1.0 - mean_t))
    loss = _nll(a, b, xs, ts)
    for _ in range(iterations):
        g_a = g_b = h_aa = h_ab = h_bb = 0.0
        for x, t in zip(xs, ts):
            p = Platt(a, b)(x)
            w = p * (1.0 - p)
            g_a += (p - t) * x
            g_b += p - t
            h_aa += w * x * x
            h_ab += w * x
            h_bb += w
        h_aa += 1e-12
        h_bb += 1e-12
        det = h_aa * h_bb - h_ab * h_ab
        if det <= 0:
            break
        step_a = (h_bb * g_a - h_ab * g_b) / det
        step_b = (h_aa * g_b - h_ab * g_a) / det
        scale = 1.0
        while scale > 1e-10:  # backtracking: never increase the loss
            na, nb = a - scale * step_a, b - scale * step_b
            new_loss = _nll(na, nb, xs, ts)
            if new_loss <= loss + 1e-12:
                break
            scale /= 2
        else:
            break
        converged = abs(loss - new_loss) < 1e-12 * max(1.0, abs(loss))
        a, b, loss = na, nb, new_loss
        if converged:
            break
    if a < 0:  # the votes rank the label backwards: refuse to invert them, predict the base rate
        a, b = 0.0, math.log(mean_t / (1.0 - mean_t))
    return Platt(a, b)


# --- thresholds ------------------------------------------------------------------------------

TARGET_METRICS = ("recall", "fpr")


@dataclass(frozen=True)
class Threshold:
    value: float  # flag when calibrated score >= value
    metric: str  # "recall" or "fpr"
    target: float
    recall: float  # achieved on the data it was chosen on
    fpr: float
    precision: float

    def to_dict(self) -> dict:
        return {
            "value": self.value,
            "metric": self.metric,
            "target": self.target,
            "recall": self.recall,
            "fpr": self.fpr,
            "precision": self.precision,
        }


def rates(scores: Sequence[float], positive: Sequence[bool], threshold: float) -> tuple[float, float, float]:
    """(recall, false-positive rate, precision) of `score >= threshold`; empty ratios are 0."""
    tp = sum(s >= threshold and p for s, p in zip(scores, positive))
    fp = sum(s >= threshold and not p for s, p in zip(scores, positive))
    n_pos = sum(bool(p) for p in positive)
    n_neg = len(positive) - n_pos
    return (tp / n_pos if n_pos else 0.0, fp / n_neg if n_neg else 0.0, tp / (tp + fp) if tp + fp else 0.0)


def choose_threshold(scores: Sequence[float], positive: Sequence[bool], metric: str, target: float) -> Threshold:
    """The threshold that meets `metric` (recall >= target, or fpr <= target) on these scores.

    recall: the highest threshold that still reaches the recall (fewest false positives);
    fpr: the lowest threshold that keeps the false-positive rate (most recall). Candidates are
    the observed scores; 1.0 (never flag: scores stay below 1) when no score qualifies.
    """
    if metric not in TARGET_METRICS:
        raise ValueError(f"unknown target metric {metric!r} (use {' or '.join(TARGET_METRICS)})")
    candidates = sorted(set(float(s) for s in scores), reverse=True)  # high to low
    chosen = 1.0
    if metric == "recall":
        for t in candidates:
            if rates(scores, positive, t)[0] >= target:
                chosen = t
                break
    else:
        for t in candidates:  # lowering the threshold only adds positives: stop at the first breach
            if rates(scores, positive, t)[1] > target:
                break
            chosen = t
    recall, fpr, precision = rates(scores, positive, chosen)
    return Threshold(chosen, metric, float(target), recall, fpr, precision)


# --- the whole calibration of a policy ----------------------------------------------------------


@dataclass
class Calibration:
    method: str
    platt: list[Platt]  # one per label, in label order
    thresholds: dict[int, Threshold]  # label index -> threshold (flagged labels with a target)
    uncertain_margin: float = 0.0  # verdicts with a vote margin below this are uncertain
    shares: list[list[float]] = field(default_factory=list)  # leave-one-out vote shares [N][C]
    metrics: dict = field(default_factory=dict)

    def scores(self, shares: Sequence[float]) -> list[float]:
        """Calibrated score of each label from its vote share."""
        return [cal(s) for cal, s in zip(self.platt, shares)]

    def threshold(self, label: int, vote: str) -> float | None:
        """The calibrated probability at which a flagged label is flagged (`decide`): its target's
        threshold, else (two labels) the probability at the vote's boundary, where the label starts
        winning; None where the vote alone decides (three or more labels, or a flat map)."""
        if label in self.thresholds:
            return self.thresholds[label].value
        if len(self.platt) != 2 or self.platt[label].slope <= 0:
            return None  # a flat map (the votes did not separate the labels) says nothing: the vote decides
        return self.platt[label](VOTE_BOUNDARY[vote])

    def to_dict(self, label_names: Sequence[str]) -> dict:
        """The maps and thresholds per label (what `guard inspect` shows)."""
        return {
            "method": self.method,
            "uncertain_margin": self.uncertain_margin,
            "labels": {
                name: {
                    "slope": p.slope,
                    "intercept": p.intercept,
                    "threshold": self.thresholds[c].to_dict() if c in self.thresholds else None,
                }
                for c, (name, p) in enumerate(zip(label_names, self.platt))
            },
        }


def calibrate(
    fit: Fit,
    acts: torch.Tensor,
    labels: torch.Tensor,
    targets: dict[int, tuple[str, float]] | None = None,
    uncertain_margin: float = 0.0,
    chunk: int = 8,
    weights: torch.Tensor | None = None,
) -> Calibration:
    """Cross-fitted votes of `fit` -> per-label Platt maps -> thresholds for `targets` {label: (metric, value)}.

    The paper's classifier (centroids, vote count) gets exact leave-one-out votes; prototypes, the
    probe, the margin vote or weighted exemplars get 10-fold cross-fitted label values
    (`cross_fitted_values`). Weights shape the fits only: the Platt maps and thresholds count each
    exemplar once, since an item counted k times is still one observation of how the scores
    behave, and k copies would make the calibration claim more evidence than it has."""
    num_labels = fit.num_labels
    weights = None if sav.is_unweighted(weights) else weights
    if fit.exact_leave_one_out and weights is None:
        method = METHOD
        counts, winners = leave_one_out_votes(acts, labels, num_labels, fit.k, fit.scoring, chunk, fit.max_layer)
        k_eff = counts.sum(dim=1, keepdim=True).clamp(min=1)
        shares = (counts.double() / k_eff).tolist()
    else:
        method = CROSS_FIT_METHOD
        values, winners = cross_fitted_values(fit, acts, labels, weights=weights)
        shares = values.tolist()
    truth = labels.tolist()
    platt = [fit_platt([row[c] for row in shares], [t == c for t in truth]) for c in range(num_labels)]
    thresholds = {}
    for c, (metric, value) in (targets or {}).items():
        scores = [platt[c](row[c]) for row in shares]
        thresholds[c] = choose_threshold(scores, [t == c for t in truth], metric, value)
    metrics = {
        "loo_vote_accuracy": float((winners == labels).double().mean()),
    }
    return Calibration(method, platt, thresholds, uncertain_margin, shares, metrics)


# --- the codec: a Calibration as the store's row and the ONNX manifest hold it -------------------


def to_manifest(cal: Calibration | None) -> dict | None:
    """The ONNX manifest's shape: the maps as a list, thresholds keyed by label index (as text)."""
    if cal is None:
        return None
    return {
        "method": cal.method,
        "uncertain_margin": cal.uncertain_margin,
        "platt": [{"slope": p.slope, "intercept": p.intercept} for p in cal.platt],
        "thresholds": {str(c): t.to_dict() for c, t in cal.thresholds.items()},
    }


def from_manifest(data: dict | None) -> Calibration | None:
    if data is None:
        return None
    return Calibration(
        method=data["method"],
        platt=[Platt(p["slope"], p["intercept"]) for p in data["platt"]],
        thresholds={int(c): Threshold(**t) for c, t in data["thresholds"].items()},
        uncertain_margin=data["uncertain_margin"],
    )


def to_label_rows(cal: Calibration) -> list[dict]:
    """The store's shape: one record per label, its map and its threshold (or None)."""
    rows = []
    for c, platt in enumerate(cal.platt):
        threshold = cal.thresholds.get(c)
        rows.append(
            {
                "slope": platt.slope,
                "intercept": platt.intercept,
                "threshold": threshold.to_dict() if threshold else None,
            }
        )
    return rows


def from_label_rows(rows: list[dict]) -> tuple[list[Platt], dict[int, Threshold]]:
    platt = [Platt(row["slope"], row["intercept"]) for row in rows]
    thresholds = {c: Threshold(**row["threshold"]) for c, row in enumerate(rows) if row["threshold"]}
    return platt, thresholds


# --- a verdict from votes ------------------------------------------------------------------------


@dataclass
class Decision:
    label: int
    flagged: bool
    calibrated: list[float] | None  # per label; None without a calibration
    margin: float  # (most votes - second most) / heads
    uncertain: bool


def decide(
    counts: Sequence[int],
    winner: int,
    flagged: Sequence[bool],
    cal: Calibration | None,
    values: Sequence[float] | None = None,
) -> Decision:
    """The verdict for one input from its heads' vote counts, the winner and (`values`) what the
    calibration maps per label (`guard.method.sav.label_values`; default: vote shares).

    A flagged label with a threshold is flagged when its calibrated score reaches the threshold,
    whatever the majority says; a flagged label without one is flagged when it wins the vote
    (as without calibration). Several candidates: the highest calibrated score. None: the vote
    winner if it is an allowed label, else the allowed label with the most votes.

    With two labels, winning the vote is itself a threshold on the calibrated probability
    (`Calibration.threshold`): the Platt map is monotone, so "wins the vote" is "P reaches the
    probability of the vote's boundary", which is what `guard check` prints beside P.
    """
    counts = [int(c) for c in counts]
    k = max(sum(counts), 1)
    top = sorted(counts, reverse=True) + [0]
    margin = (top[0] - top[1]) / k
    if cal is None:
        return Decision(winner, bool(flagged[winner]), None, margin, False)
    probs = cal.scores([c / k for c in counts] if values is None else list(values))
    candidates = [
        c
        for c in range(len(counts))
        if flagged[c] and (probs[c] >= cal.thresholds[c].value if c in cal.thresholds else c == winner)
    ]
    allowed = [c for c in range(len(counts)) if not flagged[c]]
    if candidates:
        label, is_flagged = max(candidates, key=lambda c: (probs[c], c == winner, -c)), True
    elif allowed:
        label = winner if winner in allowed else max(allowed, key=lambda c: (counts[c], probs[c], -c))
        is_flagged = False
    else:  # every label is flagged and none reached its threshold: the vote decides
        label, is_flagged = winner, True
    # uncertain: a thin vote, or a verdict its own calibrated probability does not back (the
    # margin vote or a low threshold chose a label the calibration gives less than one half)
    return Decision(label, is_flagged, probs, margin, margin < cal.uncertain_margin or probs[label] < 0.5)
