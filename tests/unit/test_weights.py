"""Exemplar weights (`weight:`): an exemplar of weight w counts as w copies of itself in every part of
the fit, checked against the copies themselves, a plain-loop reference and scikit-learn."""

import numpy as np
import pytest
import torch

from guard.method import calibration, sav
from guard.method.fit import Fit

from .test_sav import naive_cos, random_data


def with_copies(x, y, weights):
    """Each row of `x`/`y` repeated its (whole-number) weight times."""
    repeats = torch.tensor([int(w) for w in weights])
    return x.repeat_interleave(repeats, dim=0), y.repeat_interleave(repeats)


def some_weights(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 4, (n,), generator=g).double()


def test_weighted_centroids_are_the_centroids_of_the_copies():
    x, y = random_data(0)
    w = some_weights(len(y))
    assert torch.allclose(sav.centroids(x, y, 3, w), sav.centroids(*with_copies(x, y, w), 3), atol=1e-12)


def test_weights_of_one_change_nothing():
    x, y = random_data(1)
    ones = torch.ones(len(y), dtype=torch.float64)
    assert torch.equal(sav.centroids(x, y, 3, ones), sav.centroids(x, y, 3))
    for scoring in ("loo", "in_sample"):
        a, b = sav.score_heads(x, y, 3, scoring, ones), sav.score_heads(x, y, 3, scoring)
        assert torch.allclose(a.accuracy, b.accuracy) and torch.allclose(a.margin, b.margin)


def test_in_sample_head_scores_with_weights_are_those_of_the_copies():
    x, y = random_data(2)
    w = some_weights(len(y), seed=2)
    weighted = sav.score_heads(x, y, 3, "in_sample", w)
    copies = sav.score_heads(*with_copies(x, y, w), 3, "in_sample")
    assert torch.allclose(weighted.accuracy, copies.accuracy) and torch.allclose(weighted.margin, copies.margin)


def test_loo_head_scores_with_weights_match_a_plain_loop():
    """Leave-one-out takes the whole item out of its centroid (all its weight: a weighted item is one
    text, not copies that could vouch for each other), and weighs its accuracy and margin."""
    x, y = random_data(3)
    w = some_weights(len(y), seed=3)
    scores = sav.score_heads(x, y, 3, "loo", w)
    xl, yl, wl = x.tolist(), y.tolist(), w.tolist()
    for layer in range(x.shape[1]):
        for head in range(x.shape[2]):
            correct = margin = 0.0
            for i in range(len(xl)):
                sims = []
                for c in range(3):
                    members = [j for j in range(len(xl)) if yl[j] == c and j != i]
                    total = sum(wl[j] for j in members)
                    mean = [sum(wl[j] * xl[j][layer][head][d] for j in members) / total for d in range(x.shape[3])]
                    sims.append(naive_cos(xl[i][layer][head], mean))
                best = max(range(3), key=lambda c: (sims[c], -c))
                correct += wl[i] * (best == yl[i])
                margin += wl[i] * (sims[yl[i]] - max(s for c, s in enumerate(sims) if c != yl[i]))
            assert scores.accuracy[layer, head].item() == pytest.approx(correct / sum(wl))
            assert scores.margin[layer, head].item() == pytest.approx(margin / sum(wl))


def test_weighted_prototypes_are_those_of_the_copies():
    x, y = random_data(4, n_per_label=8)
    selected = x[:, 0]  # [N, K=H, D]
    w = some_weights(len(y), seed=4)
    bank, labels = sav.prototypes(selected, y, 3, 3, weights=w)
    bank_copies, labels_copies = sav.prototypes(*with_copies(selected, y, w), 3, 3)
    assert torch.equal(labels, labels_copies)
    assert torch.allclose(bank, bank_copies, atol=1e-10)


def toy(n=60, k=4, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, d, generator=g) + torch.randn(1, k, d, generator=g) * 2
    y = torch.randint(0, 2, (n,), generator=g)
    x[y == 0] += 0.5
    return x.double(), y


def test_a_weight_of_two_is_a_copy_in_the_probe():
    x, y = toy()
    w = torch.ones(len(y), dtype=torch.float64)
    w[:7] = 2
    weighted = sav.probe_bank(x, y, weight_decay=1e-2, weights=w)
    copies = sav.probe_bank(*with_copies(x, y, w), weight_decay=1e-2)
    assert torch.allclose(weighted, copies, atol=1e-6)


def test_the_weighted_probe_equals_scikit_learn_with_sample_weights():
    from sklearn.linear_model import LogisticRegression

    x, y = toy(seed=1)
    w = torch.rand(len(y), generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 5 + 0.2
    decay = 1e-2
    bank = sav.probe_bank(x, y, weight_decay=decay, weights=w)
    sims = sav.bank_similarities(x, bank, torch.arange(2), 2)
    margin = (sims[:, :, 0] - sims[:, :, 1]).mean(1).numpy()
    # ours: sum(w * balance * loss) / sum(w) + decay |v|^2, each class carrying half the weight;
    # scikit-learn's 0.5 |v|^2 + C sum(sample_weight * loss) is that times 1 / (2 decay)
    positive = (y == 0).numpy()
    wn = w.numpy()
    share = wn[positive].sum() / wn.sum()
    balance = np.where(positive, 0.5 / share, 0.5 / (1 - share))
    flat = sav.unit(x).reshape(len(x), -1).numpy()
    lr = LogisticRegression(C=1 / (2 * decay * wn.sum()), tol=1e-10, max_iter=10000, fit_intercept=False)
    logit = lr.fit(flat, positive, sample_weight=wn * balance).decision_function(flat)
    ratio = logit / margin
    assert ratio.min() > 0
    assert np.abs(ratio / ratio.mean() - 1).max() < 1e-3


def test_a_heavy_exemplar_pulls_the_fit_its_way():
    """The point of a weight: an item the unweighted fit gets wrong is right once it counts enough."""
    x, y = toy(n=80, seed=2)
    fit = Fit(2, 3, classifier="probe", vote="margin")
    plain = fit(x[:, None].expand(-1, 2, -1, -1).contiguous(), y)
    acts = x[:, None].expand(-1, 2, -1, -1).contiguous()  # [N, L=2, H=k, D]
    wrong = (plain.predict(acts) != y).nonzero().flatten()
    assert len(wrong) > 0
    item = int(wrong[0])
    w = torch.ones(len(y), dtype=torch.float64)
    w[item] = 50
    assert int(fit(acts, y, weights=w).predict(acts[item : item + 1])[0]) == int(y[item])


def test_calibration_cross_fits_weighted_fits_and_counts_each_exemplar_once():
    x, y = random_data(5, n_per_label=12, C=2)
    fit = Fit(2, 3)  # centroids and the vote count: unweighted, the exact leave-one-out shortcut
    assert calibration.calibrate(fit, x, y).method == calibration.METHOD
    assert calibration.calibrate(fit, x, y, weights=torch.ones(len(y))).method == calibration.METHOD
    w = torch.ones(len(y), dtype=torch.float64)
    w[0] = 5
    weighted = calibration.calibrate(fit, x, y, weights=w)
    assert weighted.method == calibration.CROSS_FIT_METHOD
    assert len(weighted.shares) == len(y)  # one score per exemplar, whatever its weight
    values, _ = calibration.cross_fitted_values(fit, x, y, weights=w)
    assert torch.allclose(torch.tensor(weighted.shares, dtype=torch.float64), values)
