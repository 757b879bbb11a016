"""Long documents and streamed answers on the real SmolLM2-135M with the shipped default policy
(issue 23): a 200,000-character document of ordinary prose with one harmful paragraph in its
middle is flagged and its verdict names a window inside that paragraph; the same prose without it
is not flagged; an answer that turns harmful half-way is stopped before its end."""

from pathlib import Path

import pytest

from guard.check.engine import Guard
from guard.check.stream import AnswerStream
from guard.compiler import compile_policy
from tests.support.documents import HARMFUL, document, filler

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def guard(tmp_path_factory, default_activations):
    from tests.support.fixtures import copy_database

    db = copy_database(default_activations, tmp_path_factory.mktemp("documents") / "guard.db")
    compile_policy(ROOT / "policies/text-harm.yaml", db, device="cpu")
    return Guard.load(db, device="cpu")


def test_a_long_document_is_flagged_by_its_harmful_paragraph_and_a_clean_one_is_not(guard):
    harmful, (a, b) = document(200_000)
    clean, _ = document(200_000, harmful=None)
    assert len(harmful) > 200_000 and len(clean) > 200_000
    # one call: the windows the two share are checked once (guard.check.documents.WindowCache)
    flagged, allowed = guard.check_batch([harmful, clean])
    assert flagged.flagged and not allowed.flagged
    window = flagged.window
    assert window["document"] and window["of"] > 500  # windows only, never the whole text
    assert harmful[window["start"] : window["end"]] == window["text"]
    assert a <= window["start"] < b or a < window["end"] <= b  # the harmful paragraph's window
    assert window["text"].strip() in harmful[a - 2_000 : b + 2_000]
    assert flagged.to_dict()["window"]["start"] == window["start"]


def test_a_streamed_answer_that_turns_harmful_is_stopped_before_its_end(guard):
    answer = filler(1_500) + " Sure, here is how to do it. " + HARMFUL + " " + filler(1_500, start=40)
    turn = answer.index("Sure, here is how")
    stream = AnswerStream(guard._set, every=16)
    stopped_at = None
    for i in range(0, len(answer), 20):  # chunks as a generating model sends them
        stream.feed(answer[i : i + 20])
        if stream.flagged:
            stopped_at = i + 20
            break
    assert stopped_at is not None, "the stream was never flagged"
    assert turn < stopped_at < len(answer) - 1_000  # after the turn, well before the end
    verdict = stream.result["text-harm"]
    assert verdict.window["stream"] and verdict.window["end"] > turn
    assert answer[verdict.window["start"] : verdict.window["end"]] == verdict.window["text"]
    # the benign half alone is never flagged: the same stream over it checks and allows it
    calm = AnswerStream(guard._set, every=16)
    for i in range(0, turn, 20):
        calm.feed(answer[i : min(i + 20, turn)])
    assert calm.checks > 5 and not calm.flagged and not calm.close()["text-harm"].flagged
