"""Calibration: leave-one-out votes against N separate SAV fits, Platt scaling against an
independent optimiser, monotone maps, unanimous votes near the extremes, thresholds that meet
their target on the data they were chosen on, and the verdict rule."""

import json
import math
import random

import pytest
import torch

from guard.method import calibration as cal
from guard.method import sav
from guard.method.fit import Fit


def naive_loo_votes(acts, labels, num_labels, k, scoring, max_layer=None):
    """Refit SAV from scratch without each item, with the library's own building blocks."""
    counts, winners = [], []
    for i in range(len(labels)):
        keep = torch.arange(len(labels)) != i
        heads = sav.select_heads(sav.score_heads(acts[keep], labels[keep], num_labels, scoring), k, max_layer)
        li, hi = [h[0] for h in heads], [h[1] for h in heads]
        cents = sav.centroids(acts[keep][:, li, hi], labels[keep], num_labels)
        w, _, c = sav.vote(sav.head_similarities(acts[i : i + 1, li, hi], cents))
        counts.append(c[0])
        winners.append(w[0])
    return torch.stack(counts), torch.stack(winners)


def data(seed, per_label=6, num_labels=3, layers=3, heads=4, dim=5, signal=0.6):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num_labels).repeat_interleave(per_label)
    x = torch.randn(len(y), layers, heads, dim, generator=g, dtype=torch.float64)
    x[..., 0] += signal * y.view(-1, 1, 1).double()
    return x, y


@pytest.mark.parametrize("scoring", ["loo", "in_sample"])
@pytest.mark.parametrize("seed,k,chunk", [(0, 5, 8), (1, 3, 1), (2, 12, 5), (3, 1, 100)])
def test_leave_one_out_votes_equal_separate_fits(scoring, seed, k, chunk):
    x, y = data(seed)
    counts, winners = cal.leave_one_out_votes(x, y, 3, k, scoring, chunk=chunk)
    ref_counts, ref_winners = naive_loo_votes(x, y, 3, k, scoring)
    assert torch.equal(counts, ref_counts)
    assert torch.equal(winners, ref_winners)


@pytest.mark.parametrize("max_layer", [0, 1])
def test_leave_one_out_votes_respect_max_layer(max_layer):
    x, y = data(5)
    counts, winners = cal.leave_one_out_votes(x, y, 3, 4, max_layer=max_layer)
    ref_counts, ref_winners = naive_loo_votes(x, y, 3, 4, "loo", max_layer)
    assert torch.equal(counts, ref_counts) and torch.equal(winners, ref_winners)


def test_leave_one_out_votes_on_float32_two_labels():
    x, y = data(7, per_label=10, num_labels=2, layers=4, heads=6, dim=16, signal=0.3)
    x = x.float()
    counts, winners = cal.leave_one_out_votes(x, y, 2, 7)
    ref_counts, ref_winners = naive_loo_votes(x, y, 2, 7, "loo")
    # float32 vs float64 arithmetic may reorder near-tied heads; allow no more than one item to differ
    assert (counts != ref_counts).any(dim=1).sum() <= 1
    assert counts.sum(dim=1).eq(7).all()


def test_leave_one_out_needs_three_per_label_with_loo_scoring():
    x, y = data(0, per_label=2, num_labels=2)
    assert not cal.can_calibrate(y, 2, "loo") and cal.can_calibrate(y, 2, "in_sample")
    with pytest.raises(ValueError, match="at least 3"):
        cal.leave_one_out_votes(x, y, 2, 3, "loo")


# --- Platt ---------------------------------------------------------------------------------------


def platt_loss(a, b, xs, positive):
    n_pos = sum(positive)
    n_neg = len(positive) - n_pos
    targets = [(n_pos + 1) / (n_pos + 2) if p else 1 / (n_neg + 2) for p in positive]
    total = 0.0
    for x, t in zip(xs, targets):
        p = 1 / (1 + math.exp(-(a * x + b)))
        total -= t * math.log(p) + (1 - t) * math.log(1 - p)
    return total


@pytest.mark.parametrize("seed", range(5))
def test_platt_matches_an_independent_optimiser(seed):
    from scipy.optimize import minimize

    rnd = random.Random(seed)
    k = 20
    positive = [rnd.random() < 0.5 for _ in range(50)]
    xs = [min(k, max(0, round(rnd.gauss(13 if p else 7, 4)))) / k for p in positive]
    fit = cal.fit_platt(xs, positive)
    ref = minimize(
        lambda v: platt_loss(v[0], v[1], xs, positive),
        [0.0, 0.0],
        method="Nelder-Mead",
        options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000},
    )
    assert fit.slope == pytest.approx(ref.x[0], abs=1e-3) and fit.intercept == pytest.approx(ref.x[1], abs=1e-3)
    assert platt_loss(fit.slope, fit.intercept, xs, positive) <= ref.fun + 1e-9


@pytest.mark.parametrize("seed", range(8))
def test_platt_is_monotone_even_when_votes_point_the_wrong_way(seed):
    rnd = random.Random(seed)
    positive = [rnd.random() < 0.4 for _ in range(40)]
    direction = 1 if seed % 2 else -1  # odd seeds: shares rise with the label; even: fall
    xs = [min(1, max(0, 0.5 + direction * (0.25 if p else -0.25) + rnd.gauss(0, 0.2))) for p in positive]
    fit = cal.fit_platt(xs, positive)
    grid = [i / 100 for i in range(101)]
    values = [fit(g) for g in grid]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert fit.slope >= 0
    if direction < 0:  # refuses to invert the votes: constant at the smoothed base rate
        assert fit.slope == 0 and values[0] == pytest.approx(values[-1])


def test_unanimous_votes_land_near_the_extremes_when_votes_separate_labels():
    # 30 + 30 exemplars whose leave-one-out vote shares mostly agree with their label
    rnd = random.Random(0)
    positive = [True] * 30 + [False] * 30
    xs = [min(20, max(0, round(rnd.gauss(16 if p else 4, 3)))) / 20 for p in positive]
    fit = cal.fit_platt(xs, positive)
    assert fit(1.0) > 0.95 and fit(0.0) < 0.05
    assert 0.2 < fit(0.5) < 0.8
    # never exactly 0 or 1
    hard = cal.fit_platt([1.0] * 30 + [0.0] * 30, positive)
    assert 0.9 < hard(1.0) < 1.0 and 0.0 < hard(0.0) < 0.1


def test_two_label_scores_are_complements():
    x, y = data(5, per_label=8, num_labels=2, signal=1.0)
    c = cal.calibrate(Fit(2, 5), x, y)
    for share in [i / 5 for i in range(6)]:
        assert sum(c.scores([share, 1 - share])) == pytest.approx(1.0, abs=1e-9)


# --- thresholds ----------------------------------------------------------------------------------


def brute_force(scores, positive, metric, target):
    """The best qualifying threshold among the observed scores, by enumeration."""
    candidates = sorted(set(scores))
    ok = [t for t in candidates if _meets(scores, positive, t, metric, target)]
    if metric == "recall":
        return max(ok) if ok else None
    # fpr: the lowest threshold such that it and every threshold above it keep the rate
    good = None
    for t in sorted(candidates, reverse=True):
        if not _meets(scores, positive, t, metric, target):
            break
        good = t
    return good


def _meets(scores, positive, t, metric, target):
    recall, fpr, _ = cal.rates(scores, positive, t)
    return recall >= target if metric == "recall" else fpr <= target


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize(
    "metric,target", [("recall", 0.95), ("recall", 0.8), ("recall", 1.0), ("fpr", 0.05), ("fpr", 0.2), ("fpr", 0.0)]
)
def test_thresholds_meet_their_target_on_the_data_they_were_chosen_on(seed, metric, target):
    rnd = random.Random(seed)
    positive = [rnd.random() < 0.5 for _ in range(40)]
    scores = [round(min(1, max(0, rnd.gauss(0.65 if p else 0.35, 0.2))), 2) for p in positive]  # ties too
    t = cal.choose_threshold(scores, positive, metric, target)
    recall, fpr, precision = cal.rates(scores, positive, t.value)
    assert (t.recall, t.fpr, t.precision) == (recall, fpr, precision)
    assert recall >= target if metric == "recall" else fpr <= target
    expected = brute_force(scores, positive, metric, target)
    assert t.value == (expected if expected is not None else 1.0)


def test_calibrate_thresholds_meet_targets_on_leave_one_out_scores():
    x, y = data(11, per_label=12, num_labels=2, signal=0.5)
    c = cal.calibrate(Fit(2, 5), x, y, targets={0: ("recall", 0.9)})
    scores = [c.platt[0](row[0]) for row in c.shares]
    t = c.thresholds[0]
    assert t.target == 0.9 and t.metric == "recall"
    assert cal.rates(scores, [v == 0 for v in y.tolist()], t.value)[0] >= 0.9
    counts, winners = cal.leave_one_out_votes(x, y, 2, 5)
    assert c.shares == (counts.double() / 5).tolist()
    assert c.metrics["loo_vote_accuracy"] == pytest.approx(float((winners == y).double().mean()))
    c2 = cal.calibrate(Fit(2, 5), x, y, targets={0: ("fpr", 0.1)})
    assert cal.rates(scores, [v == 0 for v in y.tolist()], c2.thresholds[0].value)[1] <= 0.1


# --- the verdict rule ----------------------------------------------------------------------------


def two_label_calibration(threshold=None, margin=0.0):
    thresholds = {0: cal.Threshold(threshold, "recall", 0.9, 0.9, 0.3, 0.7)} if threshold is not None else {}
    return cal.Calibration(cal.METHOD, [cal.Platt(6.0, -3.0), cal.Platt(6.0, -3.0)], thresholds, margin)


def test_decide_without_calibration_is_the_vote():
    d = cal.decide([3, 7], 1, [True, False], None)
    assert (d.label, d.flagged, d.calibrated, d.uncertain) == (1, False, None, False)
    assert d.margin == pytest.approx(0.4)


def test_decide_threshold_flags_a_minority_of_votes():
    c = two_label_calibration(threshold=0.3)
    p_harmful = cal.Platt(6.0, -3.0)(0.4)  # 4 of 10 heads say harmful -> ~0.35
    assert p_harmful >= 0.3
    d = cal.decide([4, 6], 1, [True, False], c)
    assert (d.label, d.flagged) == (0, True)
    assert d.calibrated[0] == pytest.approx(p_harmful)
    low = cal.decide([2, 8], 1, [True, False], c)
    assert (low.label, low.flagged) == (1, False)
    # a majority for harmful below a strict threshold is allowed
    strict = cal.decide([7, 3], 0, [True, False], two_label_calibration(threshold=0.95))
    assert (strict.label, strict.flagged) == (1, False)


def test_a_verdict_its_calibration_does_not_back_is_uncertain():
    """The margin vote can pick a label whose calibrated probability is below one half (most heads
    voted the other way): the verdict stands, and is marked uncertain."""
    c = two_label_calibration(margin=0.0)
    probs = c.scores([0.3, 0.7])
    assert probs[0] < 0.5
    against = cal.decide([3, 7], 0, [True, False], c, values=[0.3, 0.7])
    assert (against.label, against.flagged, against.uncertain) == (0, True, True)
    backed = cal.decide([7, 3], 0, [True, False], c, values=[0.7, 0.3])
    assert (backed.label, backed.flagged, backed.uncertain) == (0, True, False)


@pytest.mark.parametrize("vote", ["count", "margin"])
def test_decide_agrees_with_a_naive_reading_of_its_printed_threshold(vote):
    """On random values and targets: flagged exactly when P(flagged label) reaches the threshold
    that `guard check` prints (the target's, else the probability at the vote's boundary)."""
    import random

    rng = random.Random(0)
    for _ in range(300):
        c = two_label_calibration(threshold=rng.choice([None, 0.3, 0.7]))
        if vote == "margin":
            v = rng.uniform(-1, 1)
            values, winner = [v, -v], 0 if v >= 0 else 1
        else:
            k = rng.choice([5, 7, 21])
            harmful = rng.randint(0, k)
            values, winner = [harmful / k, 1 - harmful / k], 0 if 2 * harmful > k else 1
        counts = [round(values[0] * 21), 21 - round(values[0] * 21)]
        d = cal.decide(counts, winner, [True, False], c, values=values)
        assert d.flagged == (c.scores(values)[0] >= c.threshold(0, vote))


def test_decide_without_threshold_keeps_the_vote_and_marks_uncertain():
    c = two_label_calibration(margin=0.25)
    close = cal.decide([6, 4], 0, [True, False], c)
    assert (close.label, close.flagged, close.uncertain) == (0, True, True)
    clear = cal.decide([9, 1], 0, [True, False], c)
    assert not clear.uncertain and clear.margin == pytest.approx(0.8)
    # every label flagged, none over threshold: the vote decides and the verdict is flagged
    c_all = cal.Calibration(
        cal.METHOD,
        [cal.Platt(1, 0)] * 2,
        {0: cal.Threshold(1.0, "fpr", 0.0, 0, 0, 0), 1: cal.Threshold(1.0, "fpr", 0.0, 0, 0, 0)},
    )
    d = cal.decide([3, 7], 1, [True, True], c_all)
    assert (d.label, d.flagged) == (1, True)


def test_threshold_is_the_probability_at_the_vote_boundary_and_none_for_a_flat_map():
    c = two_label_calibration()
    assert c.threshold(0, "count") == pytest.approx(cal.Platt(6.0, -3.0)(0.5))
    assert c.threshold(0, "margin") == pytest.approx(cal.Platt(6.0, -3.0)(0.0))
    assert two_label_calibration(threshold=0.3).threshold(0, "margin") == 0.3  # a target's own
    flat = cal.Calibration(cal.METHOD, [cal.Platt(0.0, 0.0), cal.Platt(0.0, 0.0)], {}, 0.0)
    assert flat.threshold(0, "count") is None  # the votes did not separate the labels: the vote decides


def test_both_stored_shapes_give_back_the_calibration():
    """The codec's two shapes (the store's label rows, the ONNX manifest) read back to the same maps
    and thresholds; the manifest's thresholds are keyed by label index as text (JSON keys)."""
    x, y = data(4, per_label=8, num_labels=2, signal=1.0)
    c = cal.calibrate(Fit(2, 5), x, y, targets={0: ("recall", 0.9)})
    platt, thresholds = cal.from_label_rows(cal.to_label_rows(c))
    assert platt == c.platt and thresholds == c.thresholds
    manifest = cal.to_manifest(c)
    assert list(manifest["thresholds"]) == ["0"]
    back = cal.from_manifest(json.loads(json.dumps(manifest)))
    assert (back.method, back.platt, back.thresholds, back.uncertain_margin) == (
        c.method,
        c.platt,
        c.thresholds,
        c.uncertain_margin,
    )
    assert cal.to_manifest(None) is None and cal.from_manifest(None) is None
