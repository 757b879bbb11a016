"""`POST /v1/check/stream` (issue 23) on a real server (the app under uvicorn in a thread, tiny
model): an answer sent as NDJSON chunks gets the verdicts the library's AnswerStream gives for the
same chunks; the server stops reading at the first flag (a broken line after it is never read);
bad lines, options and content types are one-line errors."""

import json

import httpx
import pytest

from guard.check.engine import GuardSet
from guard.check.stream import AnswerStream
from guard.compiler import compile_policy
from guard.serve.app import create_app
from guard.serve.service import ServeConfig, Service
from guard.store.database import Store
from tests.integration.test_documents import long_text
from tests.support.fixtures import TEXTS, write_policy
from tests.support.serve_helpers import thread_server

NDJSON = {"Content-Type": "application/x-ndjson"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, llama_dir, llama):
    folder = tmp_path_factory.mktemp("stream")
    db = str(folder / "guard.db")
    for name, flagged in (("tiny", ("harmful",)), ("always", ("harmful", "benign")), ("never", ())):
        compile_policy(write_policy(folder, llama_dir, TEXTS, flagged=flagged, name=name), db, loaded=llama)
    guards = GuardSet.load(db, model=llama)
    service = Service(guards, ServeConfig(), store=Store.open(db))
    with thread_server(create_app(service)) as url:
        yield url, guards


def chunks(text: str, size: int = 30) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def body(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def library_stream(guards, policy: str, pieces: list[str], every: int) -> AnswerStream:
    stream = AnswerStream(guards.select([policy]), every=every)
    for piece in pieces:
        stream.feed(piece)
        if stream.flagged:
            return stream
    stream.close()
    return stream


@pytest.mark.parametrize("policy", ["tiny", "never"])
def test_a_streamed_answer_gets_the_library_stream_verdicts(served, policy):
    url, guards = served
    pieces = chunks(long_text(1_500, seed=3))
    lines = [{"policies": policy, "every": 12, "text": pieces[0]}] + [{"text": p} for p in pieces[1:]]
    response = httpx.post(f"{url}/v1/check/stream", content=iter([body(lines)]), headers=NDJSON, timeout=60)
    assert response.status_code == 200, response.text
    got = response.json()
    expected = library_stream(guards, policy, pieces, 12)
    assert got["policies"] == [policy] and got["checks"] == expected.checks >= 1
    assert got["flagged"] == expected.flagged == got["stopped"] and got["result"]["flagged"] == expected.flagged
    assert got["characters"] == len(expected.text)
    verdict = got["result"]["verdicts"][policy]
    assert verdict["window"] == expected.result[policy].window and verdict["window"]["stream"]
    assert verdict["label"] == expected.result[policy].label
    if policy == "never":
        assert not got["stopped"] and got["characters"] == sum(map(len, pieces)) and got["checks"] > 5


def test_the_server_stops_reading_at_the_first_flag(served):
    url, _ = served
    answer = "A first sentence of the answer. And a second one follows here. "
    good = body([{"policies": "always", "every": 4, "text": answer}, {"text": "More words. "}])
    broken = good + b"this line is not JSON\n"
    flagged = httpx.post(f"{url}/v1/check/stream", content=broken, headers=NDJSON, timeout=60)
    assert flagged.status_code == 200, flagged.text
    got = flagged.json()
    assert got["flagged"] and got["stopped"] and got["checks"] == 1 and got["characters"] == len(answer)
    # the same body for a policy that never flags is read to its end, and its broken line refused
    never = broken.replace(b'"always"', b'"never"')
    refused = httpx.post(f"{url}/v1/check/stream", content=never, headers=NDJSON, timeout=60)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_json"


def test_stream_refusals(served):
    url, _ = served
    post = lambda content, headers=NDJSON: httpx.post(  # noqa: E731
        f"{url}/v1/check/stream", content=content, headers=headers, timeout=60
    )
    assert post(b"", NDJSON).json()["error"]["param"] == "text"
    assert post(body([{"text": "hi"}]), {"Content-Type": "text/plain"}).status_code == 415
    assert post(body([{"chunk": "hi"}])).json()["error"]["message"].startswith("each line needs a 'text'")
    assert post(body([{"text": "hi", "every": 0}])).json()["error"]["param"] == "every"
    assert post(body([{"text": "hi", "policies": "nope"}])).status_code in (400, 404)
    assert post(body([["not", "an", "object"]])).json()["error"]["code"] == "invalid_json"
