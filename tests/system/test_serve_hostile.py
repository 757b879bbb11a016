"""`guard serve` against hostile clients (issue 18), on a real server process on 127.0.0.1.

Audit failures leak nothing of other requests and answer within the request timeout; hostile
bodies get JSON 4xx; stalled bodies, slowloris headers and idle connections are closed within the
configured timeouts; a connection cap holds; the API docs need a key; /readyz reports the served
versions. The timeouts here are small (1-2 s) and the bounds on them generous.
"""

import contextlib
import json
import re
import select
import socket
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from guard.compiler import compile_policy
from guard.store.database import Store
from tests.support.fixtures import TEXTS, write_policy
from tests.support.serve_helpers import ServeProcess

KEYS = ["client-a-key-0123456789abcdef", "client-b-key-0123456789abcdef", "client-c-key-0123456789abcdef"]
TIMEOUT = 3.0  # --timeout
HEADER_TIMEOUT = 1.5  # --header-timeout
BODY_TIMEOUT = 1.5  # --body-timeout
MAX_CONNECTIONS = 8
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
        "--header-timeout", str(HEADER_TIMEOUT),
        "--body-timeout", str(BODY_TIMEOUT),
        "--max-connections", str(MAX_CONNECTIONS),
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


# --- raw HTTP --------------------------------------------------------------------------------------


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return sock


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection; and the seconds that took."""
    started = time.monotonic()
    data = b""
    sock.settimeout(limit)
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - started


def json_error(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert b"content-type: application/json" in head.lower(), raw[:300]
    return status, json.loads(body)["error"]


def request_bytes(path: str, body: bytes, headers: dict | None = None) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Authorization: Bearer {KEYS[0]}",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if not any(k.lower() in ("content-length", "transfer-encoding") for k in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


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


# --- 3: hostile bodies are JSON 4xx ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"[" * 200_000 + b"]" * 200_000, "application/json", 400, "invalid_json"),  # RecursionError
        (b'{"input": "hi", "n": ' + b"7" * 5000 + b"}", "application/json", 400, "invalid_json"),  # int digits
        (b'{"input": "\\ud800"}', "application/json", 400, "invalid_text"),  # a lone surrogate
        (b'{"input": ["fine", "a\\u0000b"]}', "application/json", 400, "invalid_text"),  # NUL
        (b'{"input": "hi"}', "text/plain", 415, "unsupported_media_type"),
        (b'{"input": "hi"}', None, 415, "unsupported_media_type"),
    ],
    ids=["deep", "long-int", "surrogate", "nul", "text-plain", "no-content-type"],
)
def test_hostile_bodies_get_a_json_4xx(server, body, content_type, status, code):
    headers = auth(KEYS[0])
    if content_type:
        headers["Content-Type"] = content_type
    for route in ("/v1/check", "/v1/moderations"):
        response = httpx.post(server.url + route, content=body, headers=headers, timeout=60)
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ],
    ids=["bad-content-length", "1mb-header", "garbage"],
)
def test_requests_uvicorn_cannot_parse_get_the_json_error_shape(server, raw):
    with connect(server) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(raw)  # it may answer and close before the whole megabyte went
        data, _ = read_until_closed(sock, 30)
    status, error = json_error(data)
    assert status == 400 and error["code"] == "invalid_http"


def test_a_client_that_leaves_mid_body_is_no_internal_error(server):
    with connect(server) as sock:
        sock.sendall(request_bytes("/v1/check", b'{"inp', {"Content-Length": "100", "X-Request-ID": "gone-1"}))
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while not (found := [e for e in log_entries(server) if e.get("request_id") == "gone-1"]):
        assert time.monotonic() < deadline, "no log line for the request"
        time.sleep(0.05)
    (entry,) = found
    assert entry["status"] == 499 and entry["level"] == "info"
    assert not [e for e in log_entries(server) if e["message"] == "internal error"]
    metrics = httpx.get(f"{server.url}/metrics", headers=auth(KEYS[0])).text
    assert 'status="500"' not in metrics


# --- 4: timeouts and the connection cap --------------------------------------------------------------


def test_a_stalled_body_is_answered_408_and_closed(server):
    with connect(server) as sock:
        sock.sendall(request_bytes("/v1/check", b'{"inp', {"Content-Length": "100"}))  # 5 of 100 bytes
        data, seconds = read_until_closed(sock, BODY_TIMEOUT + SLACK + 5)
    status, error = json_error(data)
    assert status == 408 and error["code"] == "request_timeout"
    assert seconds < BODY_TIMEOUT + SLACK


def test_a_chunked_body_that_never_ends_is_closed(server):
    with connect(server) as sock:
        sock.sendall(request_bytes("/v1/check", b"", {"Transfer-Encoding": "chunked"}))
        started = time.monotonic()
        data = b""
        while time.monotonic() - started < BODY_TIMEOUT + SLACK + 5:
            try:
                sock.sendall(b'1\r\n"\r\n')  # one byte a chunk, for ever
            except (BrokenPipeError, ConnectionResetError):
                break
            ready, _, _ = select.select([sock], [], [], 0.2)
            if ready:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:  # closed with our chunks unread: the kernel resets
                    break
                data += chunk
                if not chunk:
                    break
        seconds = time.monotonic() - started
    assert seconds < BODY_TIMEOUT + SLACK  # closed
    if data:  # the 408 arrives unless the reset overtook it
        status, error = json_error(data)
        assert status == 408 and error["code"] == "request_timeout"


def test_slowloris_and_idle_connections_are_closed(server):
    """Six connections sending their headers a byte at a time, and one sending nothing."""
    socks = [connect(server) for _ in range(6)]
    idle = connect(server)
    for sock in socks:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sock.setblocking(False)
    started = time.monotonic()
    closed: dict[int, float] = {}
    answers: dict[int, bytes] = {i: b"" for i in range(len(socks))}
    while len(closed) < len(socks) and time.monotonic() - started < HEADER_TIMEOUT + SLACK + 5:
        for i, sock in enumerate(socks):
            if i in closed:
                continue
            try:
                sock.send(b"X")  # a header that never ends
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                chunk = b""
            answers[i] += chunk
            if not chunk:
                closed[i] = time.monotonic() - started
        time.sleep(0.1)
    assert len(closed) == len(socks), f"still open after {time.monotonic() - started:.1f} s"
    assert max(closed.values()) < HEADER_TIMEOUT + SLACK
    for data in answers.values():
        if data:  # the 408 may or may not reach a client that keeps writing before the close
            assert json_error(data)[0] == 408
    data, seconds = read_until_closed(idle, HEADER_TIMEOUT + SLACK + 5)
    assert data == b"" and seconds < HEADER_TIMEOUT + SLACK  # nothing sent: closed without a word
    for sock in [*socks, idle]:
        sock.close()


def test_connections_beyond_the_cap_get_503_and_are_closed(server):
    time.sleep(HEADER_TIMEOUT + 0.5)  # earlier tests' connections are gone
    held = [connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        with connect(server) as extra:
            data, _ = read_until_closed(extra, 30)
        status, error = json_error(data)
        assert status == 503 and error["code"] == "too_many_connections"
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while True:  # the held ones are gone: there is room again
        try:
            if httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.1)


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


def test_no_request_was_an_internal_error(server):
    assert server.process.poll() is None
    assert not [e for e in log_entries(server) if e.get("status") == 500 or e["message"] == "internal error"]
