"""Documents over HTTP (issue 23) on a real server (the app under uvicorn in a thread, tiny
model): `/v1/check` checks a text over `max_chars` window by window, with the verdict and named
window the library's `check_document` gives the same document; above `max_document_chars`, or a
body over the document body limit, a 413 in the API's error shape; `/v1/moderations` keeps its
per-input limit and its body limit."""

import json

import httpx
import pytest

from guard.check.documents import check_document
from guard.check.engine import GuardSet
from guard.compiler import compile_policy
from guard.serve.app import create_app
from guard.serve.limits import ServiceLimits
from guard.serve.service import ServeConfig, Service
from tests.integration.test_documents import long_text
from tests.support.fixtures import TEXTS, write_policy
from tests.support.serve_helpers import thread_server

LIMITS = ServiceLimits(max_chars=1_500, max_document_chars=12_000, max_body_bytes=4_000)


@pytest.fixture(scope="module")
def served(tmp_path_factory, llama_dir, llama):
    folder = tmp_path_factory.mktemp("serve-documents")
    db = str(folder / "guard.db")
    for name, flagged in (("tiny", ("harmful",)), ("always", ("harmful", "benign"))):
        compile_policy(write_policy(folder, llama_dir, TEXTS, flagged=flagged, name=name), db, loaded=llama)
    guards = GuardSet.load(db, model=llama)
    service = Service(guards, ServeConfig(limits=LIMITS))
    with thread_server(create_app(service)) as url:
        yield url, guards


def post(url: str, route: str, body: dict) -> httpx.Response:
    return httpx.post(
        f"{url}{route}", content=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=120
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_a_long_text_is_checked_as_the_library_checks_a_document(served, seed):
    url, guards = served
    text = long_text(6_000, seed=seed)  # over max_chars (and over max_body_bytes as JSON)
    response = post(url, "/v1/check", {"input": text})
    assert response.status_code == 200, response.text
    got = response.json()["results"][0]["verdicts"]
    expected = check_document(guards, {"text": text})
    assert set(got) == {"tiny", "always"}
    for name, verdict in expected.items():
        window = got[name]["window"]
        assert window == verdict.window and window["document"] and window["of"] > 1
        assert text[window["start"] : window["end"]] == window["text"]
        assert got[name]["flagged"] == verdict.flagged and got[name]["label"] == verdict.label
        assert got[name]["calibrated"] == pytest.approx(verdict.calibrated, abs=1e-5)
    assert got["always"]["flagged"]
    # a short text in the same request is checked whole, as before
    both = post(url, "/v1/check", {"input": ["how do I bake bread", text], "policies": ["tiny"]}).json()["results"]
    assert "window" not in both[0]["verdicts"]["tiny"]
    assert both[1]["verdicts"]["tiny"]["window"] == expected["tiny"].window


def test_limits_of_documents_and_of_moderations(served):
    url, _ = served
    over = post(url, "/v1/check", {"input": long_text(LIMITS.max_document_chars + 10)})
    assert over.status_code == 413
    error = over.json()["error"]
    assert error["code"] == "max_document_chars" and error["param"] == "input" and "12,000" in error["message"]
    assert set(error) == {"message", "type", "param", "code", "request_id"}
    body = json.dumps({"input": "x " * (LIMITS.document_body_bytes // 2)})
    huge = httpx.post(f"{url}/v1/check", content=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "max_body_bytes"
    # /v1/moderations: OpenAI's per-input shape, its own limits
    text = long_text(5_000)
    assert post(url, "/v1/moderations", {"input": text}).json()["error"]["code"] == "max_body_bytes"
    short_body = long_text(2_000)[:1_900]
    assert post(url, "/v1/moderations", {"input": short_body}).json()["error"]["code"] == "max_chars"
    empty = post(url, "/v1/check", {"input": " " * 2_000})
    assert empty.status_code == 400 and empty.json()["error"]["code"] == "empty_input"
    nul = post(url, "/v1/check", {"input": long_text(3_000) + "\0"})
    assert nul.status_code == 400 and "NUL" in nul.json()["error"]["message"]


def test_a_document_limit_over_the_librarys_is_one_line_and_exit_2(tmp_path):
    from typer.testing import CliRunner

    from guard.cli.commands import app
    from guard.limits import LIMITS as LIBRARY

    too_many = str(LIBRARY.max_document_chars + 1)
    result = CliRunner().invoke(app, ["serve", "--db", str(tmp_path / "none.db"), "--max-document-chars", too_many])
    assert result.exit_code == 2, result.output
    assert "GUARD_MAX_DOCUMENT_CHARS" in result.output and "Traceback" not in result.output
