"""What the default policy's classifier costs at compile and at check (issue 20), in one run:
the probe (`classifier: probe`) against 0.2's 16 prototypes per label, both with the margin vote,
on activations of the default policy's shape (957 exemplars, 17 layers x 9 heads x 64; random
vectors around a shared direction, as head outputs are: the cost does not depend on the values).

Compile: head scoring, selection, the bank and the 10-fold cross-fitted calibration
(`guard.compiler.fit`'s work after the forwards). Check: the bank similarities and the vote of a
batch of 32 inputs (the forward, identical for both, is left out).

Run: .venv/bin/python -m pytest benchmarks/test_bench_classifier.py --benchmark-columns=mean,stddev
"""

import pytest
import torch

from guard.method import calibration, sav
from guard.method.fit import Fit

N, LAYERS, HEADS, DIM, K = 957, 17, 9, 64, 20
VARIANTS = {"probe": {"per_label": 1, "bank": "probe"}, "prototypes-16": {"per_label": 16, "bank": "centroid"}}


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(0)
    shared = torch.randn(1, LAYERS, HEADS, DIM) * 3
    labels = (torch.rand(N) < 0.38).long()
    acts = shared + torch.randn(N, LAYERS, HEADS, DIM) + labels.view(-1, 1, 1, 1) * 0.3
    return acts, labels


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_compile_fit(benchmark, data, variant):
    acts, labels = data
    v = VARIANTS[variant]
    benchmark.group = "compile: fit + cross-fitted calibration"

    def fit():
        fit = Fit(2, K, "loo", 16, v["per_label"], "margin", v["bank"])
        fitted = fit(acts, labels)
        calibration.calibrate(fit, acts, labels)
        return fitted.bank

    benchmark.pedantic(fit, rounds=2, iterations=1)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_check_vote(benchmark, data, variant):
    acts, labels = data
    v = VARIANTS[variant]
    fitted = Fit(2, K, "loo", 16, v["per_label"], "margin", v["bank"])(acts, labels)
    heads, bank, bank_labels = fitted.heads, fitted.bank, fitted.bank_labels
    batch = sav.at_heads(acts[:32], heads)
    benchmark.group = "check: similarities and vote, 32 inputs"
    benchmark(lambda: sav.classify(sav.bank_similarities(batch, bank, bank_labels, 2), "margin"))
