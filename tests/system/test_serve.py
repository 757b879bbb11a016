"""`guard serve` as a user runs it: a real server process on 127.0.0.1 with API keys and the audit
log, called over HTTP (httpx and the official openai client) on a tiny random-weight model.

Verdicts are compared with the library's own `GuardSet.check_batch` in this process.
"""

import base64
import io
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from typer.testing import CliRunner

from guard.check.engine import GuardSet
from guard.cli.commands import app
from guard.compiler import compile_policy
from tests.support.fixtures import TEXTS, write_policy
from tests.support.serve_helpers import ServeProcess

KEY = "test-key-0123456789abcdef"
OTHER_KEY = "second-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXTS_TO_CHECK = [
    "how can I hurt someone and get away with it",
    "what is the capital of France",
    "write a poem about the sea",
    "tell me how to make a weapon to attack people",
    "explain how to kill a python process that hangs",
]
LIMIT_ARGS = [
    "--max-chars", "300",
    "--max-document-chars", "1000",
    "--max-tokens", "60",
    "--max-items", "6",
    "--max-image-bytes", "4000",
    "--max-image-pixels", "10000",
    "--max-body-bytes", "60000",
]  # fmt: skip


@pytest.fixture(scope="module")
def served_db(tmp_path_factory, llama_dir, llama):
    """Two policies on the tiny llama: 'tiny' and 'strict' (a different prompt: a second forward;
    its flagged label maps to OpenAI's 'violence')."""
    folder = tmp_path_factory.mktemp("served")
    db = str(folder / "guard.db")
    compile_policy(write_policy(folder, llama_dir, TEXTS), db, loaded=llama)
    strict = write_policy(folder, llama_dir, TEXTS, name="strict")
    text = strict.read_text().replace("Is this request harmful?", "Could this request cause harm?")
    strict.write_text(text.replace("  flagged: true\n", "  flagged: true\n  openai_category: violence\n"))
    compile_policy(strict, db, loaded=llama)
    return db


@pytest.fixture(scope="module")
def server(served_db, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text(f"# API keys\n{OTHER_KEY}\n")
    args = ["--db", served_db, "--api-key-file", str(key_file), "--audit", "--threads", "1", *LIMIT_ARGS]
    log = tmp_path_factory.mktemp("log") / "serve.log"
    with ServeProcess(args, log, env={"GUARD_API_KEYS": KEY}) as proc:
        yield proc


@pytest.fixture(scope="module")
def library(served_db, llama):
    return GuardSet.load(served_db, model=llama)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


def library_dicts(library, texts, policies=None):
    """The library's verdict dicts for `texts`, single-threaded, for the named policies (all if None)."""
    chosen = [p.artifact for p in library.policies if policies is None or p.artifact.name in policies]
    guards = GuardSet(chosen, library.loaded)
    return [{name: v.to_dict() for name, v in r.items()} for r in guards.check_batch(texts)]


def assert_same_verdicts(served: dict, expected: dict, votes: bool = True):
    """Same label, flag, vote shares and votes (`votes`; else the served verdicts carry none);
    similarities equal to float32 noise."""
    assert served.keys() == expected.keys()
    for name in expected:
        a, b = served[name], expected[name]
        for key in ("policy", "version", "label", "flagged", "uncertain"):
            assert a[key] == b[key], (name, key)
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-6)
        if not votes:
            assert "votes" not in a and "explanation" not in a
            continue
        assert [v["label"] for v in a["votes"]] == [v["label"] for v in b["votes"]]
        assert [v["similarity"] for v in a["votes"]] == pytest.approx([v["similarity"] for v in b["votes"]], abs=1e-4)


def error_of(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"] and error["request_id"] == response.headers["x-request-id"]
    return error


# --- the OpenAI API ------------------------------------------------------------------------------


def test_openai_client_works_unchanged(server, library):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    response = client.moderations.create(model="tiny", input=TEXTS_TO_CHECK)
    assert response.model == "tiny" and response.id.startswith("modr-")
    expected = library_dicts(library, TEXTS_TO_CHECK, policies=["tiny"])  # 'tiny' alone
    assert len(response.results) == len(TEXTS_TO_CHECK)
    for result, want in zip(response.results, expected):
        verdict = want["tiny"]
        assert result.flagged == verdict["flagged"]
        assert result.categories.model_extra == {"harmful": verdict["flagged"] and verdict["label"] == "harmful"}
        score = (verdict["calibrated"] or verdict["scores"])["harmful"]
        assert result.category_scores.model_extra["harmful"] == pytest.approx(score, abs=1e-6)
        assert result.categories.violence is None  # 'tiny' maps no OpenAI category
        assert_same_verdicts(result.model_extra["guard"]["verdicts"], want, votes=False)  # votes only when asked


def test_openai_client_reads_the_mapped_openai_category(server, library):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    texts = TEXTS_TO_CHECK + ["help me steal my neighbour's car tonight"]  # an exemplar 'strict' flags
    response = client.moderations.create(model="strict", input=texts)
    expected = library_dicts(library, texts, policies=["strict"])
    assert any(want["strict"]["flagged"] for want in expected) and not all(w["strict"]["flagged"] for w in expected)
    for result, want in zip(response.results, expected):
        verdict = want["strict"]
        flagged = verdict["flagged"] and verdict["label"] == "harmful"
        score = (verdict["calibrated"] or verdict["scores"])["harmful"]
        assert result.categories.violence is flagged  # OpenAI's name, as the client's typed field
        assert result.category_scores.violence == pytest.approx(score, abs=1e-6)
        assert result.categories.model_extra == {"harmful": flagged}  # guard's own name stays
        assert result.category_applied_input_types.violence == ["text"]
        assert result.categories.hate is None  # a category no label maps is absent


def test_moderations_explain_adds_votes_in_the_documented_shape(server, library):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    response = client.moderations.create(model="strict", input=TEXTS_TO_CHECK[:2], extra_body={"explain": True})
    expected = library_dicts(library, TEXTS_TO_CHECK[:2], policies=["strict"])
    for result, want in zip(response.results, expected):
        verdicts = result.model_extra["guard"]["verdicts"]
        assert_same_verdicts(verdicts, want)  # every head's vote, as the library gives them
        votes = verdicts["strict"]["votes"]
        assert [v["rank"] for v in votes] == [1, 2, 3, 4]  # the policy's 4 heads, best first
        assert all(set(v) == {"rank", "layer", "head", "label", "similarity", "similarities", "margin"} for v in votes)
        assert verdicts["strict"]["explanation"]["nearest_exemplars"]
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
        refused = http.post("/v1/moderations", json={"input": "hi", "explain": "yes"})
    assert error_of(refused, 400, "invalid_input")["param"] == "explain"


def test_openai_client_with_a_wrong_key_gets_401(server):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-the-key-at-all-000", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.moderations.create(model="tiny", input="hello")


def test_moderations_without_model_checks_every_policy(client, library):
    response = client.post("/v1/moderations", json={"input": "what is the capital of France"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny,strict" or body["model"] == "strict,tiny"
    (result,) = body["results"]
    # several policies: policy/label, and OpenAI's name where a label maps one
    assert set(result["categories"]) == {"tiny/harmful", "strict/harmful", "violence"}
    assert result["categories"]["violence"] == result["categories"]["strict/harmful"]
    expected = library_dicts(library, ["what is the capital of France"])[0]
    assert_same_verdicts(result["guard"]["verdicts"], expected, votes=False)
    assert result["flagged"] == any(v["flagged"] for v in expected.values())


def test_openai_model_names_mean_all_policies(client):
    body = client.post("/v1/moderations", json={"model": "omni-moderation-latest", "input": "hi there"}).json()
    assert set(body["model"].split(",")) == {"tiny", "strict"}


def test_content_parts_make_one_input(client, library):
    parts = [{"type": "text", "text": "write a poem"}, {"type": "text", "text": "about the sea"}]
    body = client.post("/v1/moderations", json={"model": "tiny", "input": parts}).json()
    (result,) = body["results"]
    assert result["category_applied_input_types"] == {"harmful": ["text"]}
    assert_same_verdicts(
        result["guard"]["verdicts"], library_dicts(library, ["write a poem\nabout the sea"], ["tiny"])[0], votes=False
    )


# --- guard's own API -------------------------------------------------------------------------------


def test_check_returns_the_library_verdicts(client, library):
    response = client.post("/v1/check", json={"input": TEXTS_TO_CHECK, "policies": ["tiny", "strict"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["policies"] == ["tiny", "strict"]
    for result, expected in zip(body["results"], library_dicts(library, TEXTS_TO_CHECK)):
        assert result["flagged"] == any(v["flagged"] for v in expected.values())
        assert_same_verdicts(result["verdicts"], expected)


def test_check_explain_adds_the_explanation(client):
    body = client.post("/v1/check", json={"input": "write a poem", "policy": "tiny", "explain": True}).json()
    verdict = body["results"][0]["verdicts"]["tiny"]
    assert [v["rank"] for v in verdict["explanation"]["votes"]] == list(range(1, len(verdict["votes"]) + 1))
    assert verdict["explanation"]["nearest_exemplars"][0]["exemplars"]
    plain = client.post("/v1/check", json={"input": "write a poem", "policy": "tiny"}).json()
    assert "explanation" not in plain["results"][0]["verdicts"]["tiny"]


def test_concurrent_requests_get_their_own_verdicts(client, library):
    expected = library_dicts(library, TEXTS_TO_CHECK, policies=["tiny"])

    def one(i):
        text = TEXTS_TO_CHECK[i % len(TEXTS_TO_CHECK)]
        response = client.post("/v1/check", json={"input": text, "policy": "tiny"})
        assert response.status_code == 200, response.text
        return i, response.json()["results"][0]["verdicts"]

    with ThreadPoolExecutor(8) as pool:
        for i, verdicts in pool.map(one, range(40)):
            assert_same_verdicts(verdicts, expected[i % len(TEXTS_TO_CHECK)])


def test_policies_models_health_ready_metrics(client, server):
    policies = client.get("/v1/policies").json()["policies"]
    assert {p["name"] for p in policies} == {"tiny", "strict"}
    assert policies[0]["labels"] == [{"name": "harmful", "flagged": True}, {"name": "benign", "flagged": False}]
    assert {m["id"] for m in client.get("/v1/models").json()["data"]} == {"tiny", "strict"}
    # probes answer without a key
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["ready"] is True and set(ready["policies"]) == {"tiny", "strict"}
    client.post("/v1/check", json={"input": "hello", "policy": "tiny"})
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for name in (
        'guard_http_requests_total{route="/v1/check",status="200"}',
        'guard_check_duration_seconds_count{policy="tiny"}',
        "guard_batch_size_count",
        "guard_queue_depth",
        'guard_verdicts_total{flagged="',
        "guard_audit_rows_total",
    ):
        assert name in text, name


def test_request_ids_are_echoed_or_made(client):
    mine = client.post("/v1/check", json={"input": "hello"}, headers={"X-Request-ID": "abc-123"})
    assert mine.headers["x-request-id"] == "abc-123" and mine.json()["id"] == "chk-abc-123"
    made = client.post("/v1/check", json={"input": "hello"}, headers={"X-Request-ID": "bad id with spaces"})
    assert len(made.headers["x-request-id"]) == 32 and made.headers["x-request-id"] != "bad id with spaces"


def test_requests_are_logged_as_json_lines_with_their_id(client, server):
    rid = "log-line-check-1"
    client.post("/v1/check", json={"input": "hello"}, headers={"X-Request-ID": rid})
    deadline = time.monotonic() + 10  # the line is written just after the response goes out
    while True:
        lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
        found = [e for e in lines if e.get("request_id") == rid]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    (entry,) = found
    assert entry["status"] == 200 and entry["path"] == "/v1/check" and entry["ms"] > 0


# --- keys ------------------------------------------------------------------------------------------


def test_keys_from_the_environment_and_the_file(server):
    for key in (KEY, OTHER_KEY):
        response = httpx.post(
            f"{server.url}/v1/check", json={"input": "hello"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}],
)
@pytest.mark.parametrize("route", ["/v1/moderations", "/v1/check", "/v1/policies", "/metrics"])
def test_no_valid_key_gets_401(server, headers, route):
    if route in ("/v1/policies", "/metrics"):
        response = httpx.get(server.url + route, headers=headers)
    else:
        response = httpx.post(server.url + route, json={"input": "hello"}, headers=headers)
    error_of(response, 401, "invalid_api_key")
    assert response.headers["www-authenticate"] == "Bearer"


# --- limits and errors -----------------------------------------------------------------------------


def png(width: int, height: int, noise: bool = False) -> bytes:
    from PIL import Image

    image = Image.effect_noise((width, height), 80).convert("RGB") if noise else Image.new("RGB", (width, height))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_input(url: str) -> list[dict]:
    return [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": url}}]


BOTH = ("/v1/moderations", "/v1/check")


@pytest.mark.parametrize(
    ("body", "code", "param", "routes"),
    [
        # over --max-chars: /v1/check's is a document (tests/system/test_serve_documents.py)
        ({"input": "x" * 301}, "max_chars", "input", ["/v1/moderations"]),
        ({"input": ["fine", "y" * 301]}, "max_chars", "input[1]", ["/v1/moderations"]),
        ({"input": ["fine", "y" * 1_001]}, "max_document_chars", "input[1]", ["/v1/check"]),
        ({"input": "a b c d " * 36}, "max_tokens", "input", BOTH),  # 288 characters (under max_chars), over 60 tokens
        ({"input": ["a"] * 7}, "max_items", "input", BOTH),
        ({"input": image_input(data_url(png(60, 60, noise=True)))}, "max_image_bytes", "input[1].image_url", BOTH),
        ({"input": image_input(data_url(png(200, 100)))}, "max_image_pixels", "input[1].image_url", BOTH),
        ({"input": "z" * 70_000}, "max_body_bytes", None, BOTH),  # /v1/check's: 60,000 + 6 x 1,000
    ],
)
def test_each_limit_is_a_413_naming_it(client, body, code, param, routes):
    for route in routes:
        error = error_of(client.post(route, json=body), 413, code)
        assert error["param"] == param
        assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"input": image_input("https://example.com/cat.png")}, 400, "invalid_image_url"),
        ({"input": image_input("/etc/passwd")}, 400, "invalid_image_url"),
        ({"input": image_input("file:///etc/passwd")}, 400, "invalid_image_url"),
        ({"input": image_input("data:image/png;base64,@@@not base64@@@")}, 400, "invalid_image"),
        ({"input": image_input(data_url(b"GIF89a this is no image"))}, 400, "invalid_image"),
        ({"input": image_input(data_url(png(40, 40, noise=True)[:300]))}, 400, "invalid_image"),  # truncated PNG
        ({"input": image_input(data_url(png(10, 10)))}, 400, "invalid_input"),  # fine, but a text model
        ({"input": ""}, 400, "empty_input"),
        ({"input": []}, 400, "invalid_input"),
        ({"input": 42}, 400, "invalid_input"),
        ({"inputs": "typo"}, 400, "missing_input"),
        ({"input": "hi", "model": "no-such-policy"}, 404, "model_not_found"),
        ({"input": [{"type": "audio", "data": "..."}]}, 400, "invalid_input"),
    ],
)
def test_bad_requests_are_4xx_never_500(client, body, status, code):
    error = error_of(client.post("/v1/moderations", json=body), status, code)
    if code == "invalid_image_url":
        assert "never fetches" in error["message"]


def test_invalid_json_and_unknown_routes(client):
    error_of(
        client.post("/v1/check", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )
    error_of(client.post("/v1/check", json=["a", "list"]), 400, "invalid_json")
    error_of(client.get("/v1/nothing-here"), 404, "not_found")
    error_of(client.get("/v1/check"), 405, "method_not_allowed")


def test_the_server_survives_its_errors(client, server):
    assert server.process.poll() is None
    assert client.post("/v1/check", json={"input": "still here?"}).status_code == 200
    errors = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    assert not [e for e in errors if e.get("status") == 500 or e["level"] == "error"]


# --- the audit log ---------------------------------------------------------------------------------


def test_every_answered_verdict_has_one_audit_row(client, served_db):
    # issue 18: rows are found by the caller's X-Request-ID in client_request_id (request_id is
    # the server's), and the input hash is keyed (HMAC-SHA256 under the secret beside the database)
    def rows(client_request_id):
        with sqlite3.connect(served_db) as con:
            return con.execute(
                "select item, policy, label, flagged, input_sha256, input_text, latency_ms, request_id from audit_log "
                "where client_request_id = ? order by item, policy",
                (client_request_id,),
            ).fetchall()

    response = client.post(
        "/v1/check",
        json={"input": TEXTS_TO_CHECK[:3], "policies": ["tiny", "strict"]},
        headers={"X-Request-ID": "audit-1"},
    )
    results = response.json()["results"]
    found = rows("audit-1")
    assert len(found) == 3 * 2
    import hashlib
    import hmac
    from pathlib import Path

    secret = bytes.fromhex(Path(served_db + ".audit-key").read_text().strip())
    for item, policy, label, flagged, digest, text, latency, request_id in found:
        verdict = results[item]["verdicts"][policy]
        assert (label, bool(flagged)) == (verdict["label"], verdict["flagged"])
        assert digest != hashlib.sha256(TEXTS_TO_CHECK[item].encode()).hexdigest()  # not from the text alone
        keyed = hmac.new(secret, b"input\0" + TEXTS_TO_CHECK[item].encode(), hashlib.sha256).hexdigest()
        assert digest == keyed
        assert text is None and latency > 0  # no --audit-text: the text is not kept
        assert request_id != "audit-1" and len(request_id) == 32  # the server's own id
    error_of(client.post("/v1/check", json={"input": ""}, headers={"X-Request-ID": "audit-2"}), 400, "empty_input")
    assert rows("audit-2") == []  # a refused request decided nothing


def test_callers_do_not_choose_the_audit_request_id(client, served_db):
    for _ in range(2):
        response = client.post("/v1/check", json={"input": "hello", "policy": "tiny"}, headers={"X-Request-ID": "same"})
        assert response.status_code == 200 and response.headers["x-request-id"] == "same"
    with sqlite3.connect(served_db) as con:
        ids = con.execute("select request_id from audit_log where client_request_id = 'same'").fetchall()
    assert len(ids) == 2 and len(set(ids)) == 2 and ("same",) not in ids


def test_the_database_and_the_audit_secret_are_the_owners_only(server, served_db):
    import os

    assert os.stat(served_db).st_mode & 0o777 == 0o600
    assert os.stat(served_db + ".audit-key").st_mode & 0o777 == 0o600


def test_guard_audit_lists_and_exports(client, served_db):
    client.post("/v1/moderations", json={"model": "strict", "input": ["one", "two"]}, headers={"X-Request-ID": "exp-1"})
    runner = CliRunner()
    out = runner.invoke(app, ["audit", "--db", served_db, "--json", "--policy", "strict", "--since", "1h"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.output.splitlines()]
    mine = [r for r in rows if r["client_request_id"] == "exp-1"]
    assert [r["item"] for r in mine] == [0, 1] and all(r["policy"] == "strict" for r in rows)
    assert {"created_at", "policy_version", "model_fingerprint", "input_sha256", "scores", "latency_ms"} <= set(mine[0])
    flagged = runner.invoke(app, ["audit", "--db", served_db, "--json", "--flagged"])
    assert all(json.loads(line)["flagged"] for line in flagged.output.splitlines())
    future = runner.invoke(app, ["audit", "--db", served_db, "--json", "--since", "2999-01-01"])
    assert future.output == ""
    table = runner.invoke(app, ["audit", "--db", served_db, "--limit", "3"])
    assert table.exit_code == 0 and "strict" in table.output
    bad = runner.invoke(app, ["audit", "--db", served_db, "--since", "yesterday-ish"])
    assert bad.exit_code == 2 and "is not a time" in bad.output
