"""`guard serve` against hostile clients (issue 18), on a real server process on 127.0.0.1.

Audit failures leak nothing of other requests and answer within the request timeout; the API
docs need a key; /readyz reports the served versions. The timeouts here are small (1-3 s) and
the bounds on them generous.
"""

import json
import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from guard.compiler import compile_policy
from guard.store import Store
from tests.fixtures import TEXTS, write_policy
from tests.serve_helpers import ServeProcess

KEYS = ["client-a-key-0123456789abcdef", "client-b-key-0123456789abcdef", "client-c-key-0123456789abcdef"]
TIMEOUT = 3.0  # --timeout
SLACK = 5.0  # generous: the machine may be busy


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory, llama_dir, llama):
    folder = tmp_path_factory.mktemp("hostile")
    db = str(folder / "guard.db")
    compile_policy(write_policy(folder, llama_dir, TEXTS), db, loaded=llama)
    return db


@pytest.fixture(scope="module")
def server(hostile_db, tmp_path_factory):
    args = [
        "--db", hostile_db, "--audit", "--audit-text", "--threads", "1",  # texts in the rows: a leak would show them
        "--timeout", str(TIMEOUT),
    ]  # fmt: skip
    log = tmp_path_factory.mktemp("log") / "serve.log"
    with ServeProcess(args, log, env={"GUARD_API_KEYS": ",".join(KEYS)}) as proc:
        yield proc


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def log_entries(server) -> list[dict]:
    return [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]


def key_ids(server) -> list[str]:
    (started,) = [e for e in log_entries(server) if e["message"] == "serving"]
    return started["api_key_ids"]


# --- 1: audit failures ---------------------------------------------------------------------------


def texts_for(i: int) -> str:
    return f"client {i} says: my card number is 4111 1111 1111 11{i:02d}"


def test_a_failed_audit_commit_leaks_no_other_request(server, hostile_db):
    """With the audit table gone (renamed by another connection), the shared commit fails with
    an error whose text holds every request's row: no response and no log line shows it."""
    con = sqlite3.connect(hostile_db, timeout=30)
    con.execute("ALTER TABLE audit_log RENAME TO audit_log_away")
    con.commit()
    before = len(server.log.read_text().splitlines())
    try:

        def one(i):
            with httpx.Client(timeout=60) as client:
                return client.post(
                    f"{server.url}/v1/check",
                    json={"input": texts_for(i)},
                    headers={**auth(KEYS[i % 3]), "X-Request-ID": f"leak-{i}"},
                )

        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(one, range(6)))
    finally:
        con.execute("ALTER TABLE audit_log_away RENAME TO audit_log")
        con.commit()
        con.close()
    ids = key_ids(server)
    for i, response in enumerate(responses):
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "audit_failed" and error["request_id"] == f"leak-{i}"
        others = [texts_for(j) for j in range(6) if j != i] + [f"leak-{j}" for j in range(6) if j != i]
        others += [key_id for j, key_id in enumerate(ids) if j != i % 3]
        for secret in others + ["4111", "INSERT", "parameters"]:
            assert secret not in response.text, (i, secret)
    new_lines = server.log.read_text().splitlines()[before:]
    assert any('"audit commit failed"' in line for line in new_lines)
    for line in new_lines:
        assert "4111" not in line and "INSERT" not in line and "parameters" not in line, line
        mentioned = set(re.findall(r"leak-\d", line))
        assert len(mentioned) <= 1, line  # a line names at most its own request
        for key_id in ids:
            assert key_id not in line, line
    # the table is back: requests are recorded again
    ok = httpx.post(f"{server.url}/v1/check", json={"input": "hello"}, headers=auth(KEYS[0]), timeout=60)
    assert ok.status_code == 200, ok.text


def test_with_the_write_lock_held_every_request_answers_within_its_timeout(server, hostile_db):
    con = sqlite3.connect(hostile_db, timeout=30, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:

        def one(i):
            started = time.monotonic()
            response = httpx.post(
                f"{server.url}/v1/check",
                json={"input": texts_for(i)},
                headers={**auth(KEYS[i % 3]), "X-Request-ID": f"lock-{i}"},
                timeout=120,
            )
            return response, time.monotonic() - started

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(one, range(4)))
    finally:
        con.execute("ROLLBACK")
        con.close()
    for i, (response, seconds) in enumerate(answers):
        assert response.status_code == 504, response.text
        assert response.json()["error"]["code"] == "timeout"
        assert seconds < TIMEOUT + SLACK, seconds  # the issue saw 33-61 s with a 30 s timeout
        assert not any(texts_for(j) in response.text or f"lock-{j}" in response.text for j in range(4) if j != i)
    ok = httpx.post(f"{server.url}/v1/check", json={"input": "hello"}, headers=auth(KEYS[0]), timeout=60)
    assert ok.status_code == 200, ok.text


# --- 5 and 6: docs behind the keys; readiness reports versions --------------------------------------


@pytest.mark.parametrize("route", ["/docs", "/redoc", "/openapi.json"])
def test_api_docs_need_a_key_when_keys_are_set(server, route):
    refused = httpx.get(server.url + route)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + route, headers=auth(KEYS[1])).status_code == 200
    if route == "/openapi.json":
        paths = httpx.get(server.url + route, headers=auth(KEYS[1])).json()["paths"]
        assert "/v1/check" in paths and "/docs" not in paths


def test_readyz_reports_served_versions_and_that_new_ones_need_a_restart(
    server, hostile_db, llama_dir, llama, tmp_path
):
    ready = httpx.get(f"{server.url}/readyz").json()
    served = Store.open(hostile_db).load_artifact("tiny").version
    assert ready["ready"] is True and ready["versions"] == {"tiny": served}
    assert "restart" in ready["reload"] and "database_versions" not in ready
    # a new version compiled while serving: still served at the old one, and /readyz says so
    texts = {label: items[:-1] for label, items in TEXTS.items()}
    compile_policy(write_policy(tmp_path, llama_dir, texts), hostile_db, loaded=llama)
    newer = Store.open(hostile_db).load_artifact("tiny").version
    assert newer != served
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["ready"] is True and ready["versions"] == {"tiny": served}
    assert ready["database_versions"] == {"tiny": newer}
    check = httpx.post(f"{server.url}/v1/check", json={"input": "hi"}, headers=auth(KEYS[0]), timeout=60).json()
    assert check["results"][0]["verdicts"]["tiny"]["version"] == served
