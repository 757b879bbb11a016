"""Operating the server: a full queue, timeouts, no keys, images on a vision-language model,
graceful shutdown, and the audit log under SIGKILL. Real servers on 127.0.0.1 throughout: the app
under uvicorn in a thread (in-process configs) or `guard serve` in a subprocess."""

import base64
import json
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from guard.check.engine import GuardSet
from guard.compiler import compile_policy
from guard.errors import GuardError
from guard.models.images import load_image
from guard.policy import load_policy
from guard.serve.app import create_app
from guard.serve.limits import ServiceLimits
from guard.serve.main import is_loopback
from guard.serve.service import ServeConfig, Service
from guard.store.database import Store
from tests.support.fixtures import TEXTS, write_policy
from tests.support.serve_helpers import ServeProcess, thread_server


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory, llama_dir, llama):
    folder = tmp_path_factory.mktemp("ops")
    db = str(folder / "guard.db")
    compile_policy(write_policy(folder, llama_dir, TEXTS), db, loaded=llama)
    return db


def service_for(db, llama, **config) -> Service:
    return Service(GuardSet.load(db, model=llama), ServeConfig(**config), store=Store.open(db))


def post_later(url: str, body: dict, results: list, index: int) -> threading.Thread:
    def send():
        results[index] = httpx.post(url, json=body, timeout=60)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def wait_for(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_a_full_queue_answers_503_with_retry_after(tiny_db, llama):
    # the worker waits 1.5 s for a batch to fill, so two inputs hold the queue (bound 2) that long
    service = service_for(
        tiny_db, llama, max_queue=2, max_batch=64, max_wait_ms=1500, limits=ServiceLimits(max_items=2)
    )
    with thread_server(create_app(service)) as url:
        results = [None, None]
        threads = [post_later(f"{url}/v1/check", {"input": f"text {i}"}, results, i) for i in range(2)]
        wait_for(lambda: service.batcher.depth == 2)
        refused = httpx.post(f"{url}/v1/moderations", json={"input": "one too many"})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "queue_full"
        for thread in threads:
            thread.join(30)
        assert [r.status_code for r in results] == [200, 200]  # those queued are answered
        assert httpx.post(f"{url}/v1/check", json={"input": "room again"}).status_code == 200
        assert "guard_queue_rejected_total 1.0" in httpx.get(f"{url}/metrics").text


def test_more_items_than_the_queue_holds_is_a_startup_error(tiny_db, llama):
    with pytest.raises(GuardError, match="max-items"):
        service_for(tiny_db, llama, max_queue=4, limits=ServiceLimits(max_items=5))


def test_a_request_over_its_timeout_gets_504_and_no_verdict(tiny_db, llama):
    service = service_for(tiny_db, llama, max_wait_ms=3000, limits=ServiceLimits(timeout_s=0.3))
    with thread_server(create_app(service)) as url:
        response = httpx.post(f"{url}/v1/moderations", json={"input": "slow"})
        assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
        assert "results" not in response.json()
        assert httpx.get(f"{url}/healthz").status_code == 200


def test_the_request_timeout_counts_from_arrival(tiny_db, llama):
    """Issue 18: --timeout covers the whole request, its body's arrival included: a body sent over
    0.6 s and a batch that waits 0.8 s to fill pass a 1 s timeout (from the queue alone, 0.8 s)."""
    import socket

    service = service_for(tiny_db, llama, max_wait_ms=800, limits=ServiceLimits(timeout_s=1.0))
    with thread_server(create_app(service)) as url:
        port = int(url.rsplit(":", 1)[1])
        body = json.dumps({"input": "slowly sent"}).encode()
        head = f"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(head.encode() + body[:5])
            time.sleep(0.6)
            sock.sendall(body[5:])
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 504"), answer[:200]
        assert b'"code":"timeout"' in answer.replace(b" ", b"")


def test_without_keys_every_route_is_open(tiny_db, llama):
    with thread_server(create_app(service_for(tiny_db, llama))) as url:
        assert httpx.post(f"{url}/v1/check", json={"input": "hello"}).status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 200
        assert httpx.get(f"{url}/openapi.json").status_code == 200  # no keys: the docs are open too


def test_loopback_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.com")


def test_images_on_a_vision_language_model_match_the_library(tmp_path, vlm_dirs, colour_data):
    model = vlm_dirs("llava")
    policy = {
        "name": "colours",
        "model": str(model),
        "prompt": "Q: {text} Answer with one word.",
        "labels": [{"name": "red", "flagged": True}, {"name": "blue", "flagged": False}],
        "data_root": colour_data.name,
        "exemplars": [{"from": "train", "format": "folder", "text": "What colour is this?"}],
        "heads": 4,
    }
    path = tmp_path / "colours.yaml"
    path.write_text(yaml.safe_dump(policy))
    db = str(tmp_path / "guard.db")
    compile_policy(load_policy(path, data_root=colour_data.parent), db)
    library = GuardSet.load(db)
    images = (
        sorted((colour_data / "heldout" / "red").glob("*.png"))[:2]
        + sorted((colour_data / "heldout" / "blue").glob("*.png"))[:2]
    )
    service = Service(library, ServeConfig(), store=Store.open(db))
    with thread_server(create_app(service)) as url:
        for image in images:
            url_data = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
            parts = [
                {"type": "text", "text": "What colour is this?"},
                {"type": "image_url", "image_url": {"url": url_data}},
            ]
            response = httpx.post(f"{url}/v1/moderations", json={"input": parts}, timeout=60)
            assert response.status_code == 200, response.text
            (result,) = response.json()["results"]
            expected = library.check("What colour is this?", images=[load_image(image)])["colours"]
            served = result["guard"]["verdicts"]["colours"]
            assert (served["label"], served["flagged"]) == (expected.label, expected.flagged)
            assert result["categories"] == {"red": expected.flagged}
            assert result["category_applied_input_types"] == {"red": ["text", "image"]}


def test_sigterm_finishes_requests_in_flight(tiny_db, tmp_path):
    args = ["--db", tiny_db, "--threads", "1", "--max-wait-ms", "1500", "--max-batch", "64"]
    with ServeProcess(args, tmp_path / "serve.log") as server:
        results = [None] * 3
        threads = [post_later(f"{server.url}/v1/check", {"input": f"in flight {i}"}, results, i) for i in range(3)]

        def queued():
            metrics = httpx.get(f"{server.url}/metrics").text
            return "guard_queue_depth 3.0" in metrics

        wait_for(queued)
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says why it ended
        assert server.terminate() in (0, -signal.SIGTERM)
        assert '"message": "stopped"' in server.log.read_text()
        for thread in threads:
            thread.join(30)
        assert [r.status_code for r in results] == [200, 200, 200]
        assert all(r.json()["results"][0]["verdicts"]["tiny"]["label"] in TEXTS for r in results)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/healthz", timeout=2)


def audit_rows(db: str) -> list[str]:
    """The caller's X-Request-ID of every row (issue 18: request_id is the server's own)."""
    with sqlite3.connect(db) as con:
        return [r[0] for r in con.execute("select client_request_id from audit_log") if r[0] is not None]


def test_audit_has_exactly_one_row_per_answered_verdict_even_after_sigkill(tiny_db, tmp_path):
    before = len(audit_rows(tiny_db))
    args = ["--db", tiny_db, "--threads", "1", "--audit", "--max-queue", "1024"]
    with ServeProcess(args, tmp_path / "serve.log") as server:
        # N concurrent requests leave exactly N rows
        with httpx.Client(timeout=60) as client, ThreadPoolExecutor(8) as pool:

            def one(i):
                return client.post(
                    f"{server.url}/v1/check", json={"input": f"text {i}"}, headers={"X-Request-ID": f"n-{i}"}
                )

            assert all(r.status_code == 200 for r in pool.map(one, range(40)))
        rows = audit_rows(tiny_db)
        assert sorted(r for r in rows if r.startswith("n-")) == sorted(f"n-{i}" for i in range(40))
        assert len(rows) == before + 40

        # under load, SIGKILL: every answered request has its row; none has two
        answered, sent, stop = [], [], threading.Event()

        def load(worker):
            with httpx.Client(timeout=30) as client:
                i = 0
                while not stop.is_set():
                    rid = f"k-{worker}-{i}"
                    sent.append(rid)
                    try:
                        response = client.post(
                            f"{server.url}/v1/check", json={"input": f"load {i}"}, headers={"X-Request-ID": rid}
                        )
                    except httpx.TransportError:
                        return
                    if response.status_code == 200:
                        answered.append(rid)
                    i += 1

        workers = [threading.Thread(target=load, args=(w,)) for w in range(8)]
        for w in workers:
            w.start()
        wait_for(lambda: len(answered) >= 60, timeout=120)
        server.kill()
        stop.set()
        for w in workers:
            w.join(30)
    rows = [r for r in audit_rows(tiny_db) if r.startswith("k-")]
    assert len(rows) == len(set(rows))
    assert set(answered) <= set(rows) <= set(sent)


def test_a_gathered_batch_runs_as_length_sorted_forwards(tiny_db, llama):
    """--forward-batch: the worker's gathered inputs go through the model as forwards of at most
    that many, longest with longest (less padding), and each verdict is the library's."""
    from guard.serve.inputs import RequestItem
    from guard.serve.service import Moderator, Work

    guards = GuardSet.load(tiny_db, model=llama)
    texts = ["a poem about the sea " * n for n in (9, 1, 7, 2, 8)]
    works = [Work(RequestItem(f"input[{i}]", t), tuple(guards.names)) for i, t in enumerate(texts)]
    shapes: list[tuple[int, int]] = []
    handle = llama.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        outcomes = Moderator(guards, ServiceLimits(), forward_batch=2).run_batch(works)
    finally:
        handle.remove()
    assert [rows for rows, _ in shapes] == [2, 2, 1]
    # lengths 9, 8 | 7, 2 | 1 (repeats of the phrase): each forward is padded to its own longest only
    assert [tokens for _, tokens in shapes] == sorted((tokens for _, tokens in shapes), reverse=True)
    assert shapes[1][1] < shapes[0][1]
    for text, outcome in zip(texts, outcomes):
        alone = guards.check_batch([{"text": text}])[0]
        assert {n: v.label for n, v in outcome.verdicts.items()} == {n: v.label for n, v in alone.items()}
        assert {n: v.scores for n, v in outcome.verdicts.items()} == {n: v.scores for n, v in alone.items()}


def test_bad_inputs_never_reach_a_batch(tiny_db, llama):
    """Issue 18: bad inputs sent among good ones are refused before the queue: every batch the worker
    runs holds good inputs only, and runs once (no batch is re-run one input at a time)."""
    service = service_for(tiny_db, llama, max_wait_ms=50)
    batches, run = [], service.batcher.run_batch

    def recording(works):
        batches.append([w.item.text for w in works])
        return run(works)

    service.batcher.run_batch = recording
    bad = ["\ud800 lone", "nul \0 here", "ok then \udfff"]
    good = [f"a good text {i}" for i in range(9)]
    with thread_server(create_app(service)) as url, httpx.Client(timeout=60) as client:
        barrier = threading.Barrier(len(bad) + len(good))

        def send(text):
            barrier.wait(10)
            body = json.dumps({"input": text}).encode()  # \ud800 as its JSON escape
            return text, client.post(f"{url}/v1/check", content=body, headers={"Content-Type": "application/json"})

        with ThreadPoolExecutor(len(bad) + len(good)) as pool:
            answers = dict(pool.map(send, bad + good))
    assert all(answers[t].status_code == 400 and answers[t].json()["error"]["code"] == "invalid_text" for t in bad)
    assert all(answers[t].status_code == 200 for t in good)
    seen = [text for batch in batches for text in batch]
    assert sorted(seen) == sorted(good)  # each good input in exactly one batch; no bad one in any


class GatedEngine:
    """A GuardSet whose forwards wait for `gate` (or fail with `error`), recording the policies of
    each forward's verdicts: the model's first forward can be held back and watched."""

    def __init__(self, guards, gate: threading.Event | None = None, error: Exception | None = None):
        self.guards, self.gate, self.error = guards, gate, error
        self.verdict_policies: list[set[str]] = []

    def __getattr__(self, name):
        return getattr(self.guards, name)

    def check_prepared(self, prepared, **options):
        if self.gate is not None:
            self.gate.wait(30)
        if self.error is not None:
            raise self.error
        results = self.guards.check_prepared(prepared, **options)
        self.verdict_policies += [set(result) for result in results]
        return results


def two_policy_db(folder, llama_dir, llama) -> str:
    """'tiny' and 'strict', whose prompts differ: a forward each."""
    db = str(folder / "two.db")
    compile_policy(write_policy(folder, llama_dir, TEXTS), db, loaded=llama)
    strict = write_policy(folder, llama_dir, TEXTS, name="strict")
    strict.write_text(strict.read_text().replace("Is this request harmful?", "Could this request cause harm?"))
    compile_policy(strict, db, loaded=llama)
    return db


def test_readyz_waits_for_a_warm_up_forward_of_every_policy(tmp_path, llama_dir, llama):
    """Issue 21: /readyz said ready before the model had run once (the first request then took 4.5 s).
    Now the model worker first checks a warm-up text with every served policy; until that is done
    /readyz is 503 saying so, and requests already sent wait and are answered after it."""
    db = two_policy_db(tmp_path, llama_dir, llama)
    guards = GuardSet.load(db, model=llama)
    gate = threading.Event()
    engine = GatedEngine(guards, gate)
    service = Service(engine, ServeConfig(), store=Store.open(db))
    with thread_server(create_app(service)) as url:
        assert httpx.get(f"{url}/healthz").status_code == 200  # alive, not ready
        waiting = httpx.get(f"{url}/readyz")
        assert waiting.status_code == 503 and waiting.json()["ready"] is False
        assert any("warming up" in p for p in waiting.json()["problems"])
        early = [None]
        sender = post_later(f"{url}/v1/check", {"input": "sent while warming"}, early, 0)
        time.sleep(0.3)
        assert early[0] is None  # held behind the warm-up
        gate.set()
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200)
        sender.join(30)
        assert early[0].status_code == 200
        expected = guards.check_batch([{"text": "sent while warming"}])[0]
        assert {n: v["label"] for n, v in early[0].json()["results"][0]["verdicts"].items()} == {
            n: v.label for n, v in expected.items()
        }
    # the first forward was the warm-up, and it gave a verdict of both policies
    assert engine.verdict_policies[0] == {"tiny", "strict"}


def test_a_failed_warm_up_keeps_the_server_unready_and_says_why(tiny_db, llama):
    engine = GatedEngine(GuardSet.load(tiny_db, model=llama), error=RuntimeError("no kernels for this\nsecond line"))
    service = Service(engine, ServeConfig(), store=Store.open(tiny_db))
    with thread_server(create_app(service)) as url:
        wait_for(lambda: service.warm_up_error is not None)
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503
        assert "the warm-up forward failed (no kernels for this)" in ready.json()["problems"]
