"""The default policy on the real SmolLM2-135M-Instruct weights: compile, then check held-out texts.

Measured on 2026-11-28 (CPU, float32): held-out accuracy 73/90 = 81.1%, leave-one-out training
accuracy 90.0%. The floor is 75%: the result is deterministic for fixed weights, but float32
sums differ across CPUs/BLAS builds and a few borderline votes (many held-out items are decided
by 11-9 head votes) may flip; 75% allows five such flips, and stays far above chance (50%).
"""

import json
from pathlib import Path

import pytest

from guard.compiler import compile_policy
from guard.runtime import Guard

ROOT = Path(__file__).resolve().parent.parent
FLOOR = 0.75

pytestmark = pytest.mark.real_model


def test_default_policy_on_smollm2_beats_the_floor(tmp_path, capsys):
    db = str(tmp_path / "guard.db")
    report = compile_policy(ROOT / "policies/text-harm.yaml", db, device="cpu")
    guard = Guard.load(db, device="cpu", model=None)
    rows = [json.loads(line) for line in (ROOT / "policies/text-harm/heldout.jsonl").read_text().splitlines()]
    verdicts = guard.check_batch([r["text"] for r in rows])
    correct = sum(v.label == r["label"] for v, r in zip(verdicts, rows))
    flagged_harmful = sum(v.flagged for v, r in zip(verdicts, rows) if r["label"] == "harmful")
    flagged_benign = sum(v.flagged for v, r in zip(verdicts, rows) if r["label"] == "benign")
    accuracy = correct / len(rows)
    with capsys.disabled():
        print(
            f"\n[real model] text-harm on smollm2-135m: held-out accuracy {correct}/{len(rows)} = {accuracy:.1%} "
            f"(harmful flagged {flagged_harmful}/{sum(r['label'] == 'harmful' for r in rows)}, "
            f"benign flagged {flagged_benign}/{sum(r['label'] == 'benign' for r in rows)}); "
            f"LOO train accuracy {report.artifact.metrics['loo_accuracy']:.1%}"
        )
    assert accuracy >= FLOOR
