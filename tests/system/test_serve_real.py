"""`guard serve` end to end on the real SmolLM2 default policy, called with the official openai client."""

import json
from pathlib import Path

import pytest

from guard.check.engine import Guard
from guard.compiler import compile_policy
from tests.support.serve_helpers import ServeProcess

ROOT = Path(__file__).resolve().parents[2]
KEY = "real-model-key-0123456789"

pytestmark = pytest.mark.real_model


def test_openai_client_against_the_default_policy(tmp_path, warm_db):
    from openai import OpenAI

    db = warm_db()  # the session's activation cache: compile reruns the fit, not 1,077 forwards
    compile_policy(ROOT / "policies/text-harm.yaml", db, device="cpu")
    rows = [json.loads(line) for line in (ROOT / "policies/text-harm/heldout.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in rows[:12]] + [r["text"] for r in rows[-12:]]  # harmful and benign
    guard = Guard.load(db, device="cpu")
    expected = [guard.check(text) for text in texts]  # the library, one input at a time
    with ServeProcess(["--db", db, "--device", "cpu"], tmp_path / "serve.log", env={"GUARD_API_KEYS": KEY}) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
        response = client.moderations.create(model="text-harm", input=texts)
    assert response.model == "text-harm"
    for result, verdict in zip(response.results, expected):
        assert result.flagged == verdict.flagged
        assert result.categories.model_extra == {"harmful": verdict.flagged}
        assert result.categories.illicit is verdict.flagged  # the default policy maps harmful to OpenAI's name
        assert result.category_scores.illicit == result.category_scores.model_extra["harmful"]
        # the server checks the texts as one batch, the library one at a time: float32 sums differ in
        # their last bits, and the margin vote's calibration maps a mean similarity margin (a few
        # thousandths) through a steep slope, so scores agree to about 1e-5, not to the last digit
        assert result.category_scores.model_extra["harmful"] == pytest.approx(verdict.calibrated["harmful"], abs=1e-4)
        served = result.model_extra["guard"]["verdicts"]["text-harm"]
        assert (served["label"], served["version"]) == (verdict.label, verdict.version)
        assert served["scores"] == pytest.approx(verdict.to_dict()["scores"], abs=1e-6)
    assert any(r.flagged for r in response.results) and not all(r.flagged for r in response.results)
