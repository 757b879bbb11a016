"""Metrics against confusion matrices counted by hand, and against scikit-learn on random data."""

import random

import pytest

from guard.eval import metrics


def test_binary_example_counted_by_hand():
    # index 0 = harmful (flagged), 1 = benign
    true = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    pred = [0, 0, 0, 1, 1, 1, 1, 1, 0, 0]
    # harmful: 3 right, 1 missed; benign: 4 right, 2 flagged as harmful
    r = metrics.report(true, pred, ["harmful", "benign"], flagged=["harmful"])
    assert r.confusion == [[3, 1], [2, 4]]
    assert r.accuracy == pytest.approx(7 / 10)
    h, b = r.per_label["harmful"], r.per_label["benign"]
    assert (h.precision, h.recall) == (pytest.approx(3 / 5), pytest.approx(3 / 4))
    assert h.f1 == pytest.approx(2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4))
    assert (b.precision, b.recall) == (pytest.approx(4 / 5), pytest.approx(4 / 6))
    assert (h.support, h.predicted, b.support, b.predicted) == (4, 5, 6, 5)
    assert r.fpr == {"harmful": pytest.approx(2 / 6)}  # benign items flagged harmful / all benign
    assert h.fpr == pytest.approx(2 / 6) and b.fpr == pytest.approx(1 / 4)
    assert r.macro_f1 == pytest.approx((h.f1 + b.f1) / 2)


def test_three_labels_with_a_label_never_predicted():
    true = [0, 0, 1, 1, 2, 2, 2]
    pred = [0, 1, 1, 1, 0, 1, 1]  # label 2 is never predicted
    r = metrics.report(true, pred, ["a", "b", "c"], flagged=["a", "c"])
    assert r.confusion == [[1, 1, 0], [0, 2, 0], [1, 2, 0]]
    a, b, c = (r.per_label[n] for n in "abc")
    assert (a.precision, a.recall, a.f1) == (pytest.approx(1 / 2), pytest.approx(1 / 2), pytest.approx(1 / 2))
    assert (b.precision, b.recall) == (pytest.approx(2 / 5), pytest.approx(1.0))
    assert b.f1 == pytest.approx(2 * 0.4 / 1.4)
    assert (c.precision, c.recall, c.f1) == (0.0, 0.0, 0.0)  # no NaN
    assert r.macro_f1 == pytest.approx((0.5 + 0.8 / 1.4 + 0.0) / 3)
    assert r.accuracy == pytest.approx(3 / 7)
    assert r.fpr == {"a": pytest.approx(1 / 5), "c": 0.0}
    d = r.to_dict()
    assert d["confusion"]["matrix"] == r.confusion and set(d["fpr"]) == {"a", "c"}


def test_matches_scikit_learn_on_random_predictions():
    from sklearn import metrics as sk

    rnd = random.Random(3)
    for _trial in range(20):
        k = rnd.choice([2, 3, 5])
        n = rnd.randint(1, 60)
        true = [rnd.randrange(k) for _ in range(n)]
        pred = [rnd.randrange(k) for _ in range(n)]
        r = metrics.report(true, pred, [str(i) for i in range(k)])
        assert r.confusion == sk.confusion_matrix(true, pred, labels=list(range(k))).tolist()
        p, rec, f, s = sk.precision_recall_fscore_support(true, pred, labels=list(range(k)), zero_division=0)
        for i in range(k):
            m = r.per_label[str(i)]
            assert (m.precision, m.recall, m.f1, m.support) == (
                pytest.approx(p[i]),
                pytest.approx(rec[i]),
                pytest.approx(f[i]),
                s[i],
            )
        assert r.accuracy == pytest.approx(sk.accuracy_score(true, pred))
        assert r.macro_f1 == pytest.approx(
            sk.f1_score(true, pred, labels=list(range(k)), average="macro", zero_division=0)
        )


def test_lengths_must_match():
    with pytest.raises(ValueError):
        metrics.confusion_matrix([0, 1], [0], 2)
