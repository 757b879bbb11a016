"""`guard eval --baselines` end to end on the real SmolLM2-135M-Instruct weights, guard 0.2's
default policy (policies/text-harm-0.2.yaml, kept for this) and its held-out file (178 items,
none of them exemplars).

Measured on 2026-11-28 (CPU, float32), all 150 inputs run once:

| method                          | accuracy | FPR harmful |
|---------------------------------|----------|-------------|
| SAV, k = 20                     | 81.1%    | 20.0%       |
| zero-shot (P(Yes) vs P(No))     | 57.8%    | 77.8%       |
| linear probe, all heads         | 80.0%    | 22.2%       |
| nearest centroid, last hidden   | 76.7%    | 31.1%       |

Calibration: leave-one-out vote accuracy on the exemplars 80.0% (held-out 81.1%; the compile-time
'loo_accuracy', which keeps the heads chosen with the item present, says 90.0%); Brier score of
P(harmful) on held-out 0.140 (0.25 = a constant 0.5); items scored >= 0.8 were 21/23 harmful,
items scored < 0.2 were 2/26 harmful.

Floors leave room for a few borderline votes to flip on other CPUs/BLAS builds (one item is 1.1
points): SAV >= 75% (as tests/system/test_real_model.py), SAV ahead of zero-shot by >= 15 points (23.3
measured) with an FPR lower by >= 30 points (57.8 measured), the two fitted baselines >= 65%
(a broken hidden-state or head readout lands near 50%), leave-one-out accuracy within 8 points of
held-out accuracy, Brier <= 0.2, and the extreme score bins on the right side of 0.5 by 25 points.
"""

from pathlib import Path

import pytest

from guard.eval.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.real_model


def test_eval_with_baselines_on_smollm2(tmp_path, capsys):
    db = str(tmp_path / "guard.db")
    policy, heldout = ROOT / "policies/text-harm-0.2.yaml", ROOT / "policies/text-harm/heldout.jsonl"
    ev = evaluate(policy, heldout, db=db, device="cpu", with_baselines=True, heads=[5, 20], shots=[10, 30], repeats=2)
    n_items = 178
    m = {key: r.report for key, r in ev.methods.items()}
    with capsys.disabled():
        print(
            "\n[real model] guard eval --baselines: "
            + ", ".join(f"{key} {r.accuracy:.1%} (FPR {r.fpr['harmful']:.1%})" for key, r in m.items())
        )
    assert ev.evaluated == n_items and not ev.excluded
    assert (ev.forwards, ev.cached) == (n_items + ev.exemplars, 0)  # every input once, in one forward

    sav, zero = m["sav"], m["zero_shot"]
    assert sav.accuracy >= 0.87
    assert sav.accuracy - zero.accuracy >= 0.15
    assert zero.fpr["harmful"] - sav.fpr["harmful"] >= 0.30
    assert m["linear_probe"].accuracy >= 0.65 and m["hidden_centroid"].accuracy >= 0.65

    points = {(p.sweep, p.value): p for p in ev.sweeps if p.method == "sav_vote"}
    assert points[("heads", 20)].mean == pytest.approx(sav.accuracy)  # no target: SAV row = plain vote
    assert points[("heads", 5)].mean <= sav.accuracy + 0.05  # five heads are not better than twenty

    extra = ev.methods["sav"].extra
    assert extra["brier_calibrated"]["harmful"] <= 0.2
    bins = extra["reliability"]["harmful"]
    assert bins[0]["items"] >= 10 and bins[0]["observed"] <= 0.25
    assert bins[-1]["items"] >= 10 and bins[-1]["observed"] >= 0.75

    # the same policy fitted again from the cache: no forwards, same SAV verdicts, and the
    # leave-one-out estimate that calibration rests on is close to what held-out data shows
    again = evaluate(policy, heldout, db=db, device="cpu")
    assert again.forwards == 0 and again.methods["sav"].predictions == ev.methods["sav"].predictions
    # cross-fitted accuracy on the exemplars is the cautious estimate: they hold the hard cases
    assert 0.7 <= ev.fit_metrics["loo_vote_accuracy"] <= sav.accuracy
    from guard.store.database import Store

    assert Store.open(db).policy_names() == []  # eval never writes an artifact
