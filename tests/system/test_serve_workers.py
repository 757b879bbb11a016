"""`guard serve --workers N`: N model processes behind one port, sharing the database and its
audit log. A real `guard serve --workers 2` on 127.0.0.1 with the tiny random-weight model."""

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from guard.check.engine import GuardSet
from guard.compiler import compile_policy
from guard.serve.main import available_cores, threads_per_worker
from tests.support.fixtures import TEXTS, write_policy
from tests.support.serve_helpers import ServeProcess

TEXTS_TO_CHECK = [f"message number {i}: {text}" for i, text in enumerate(sum(TEXTS.values(), []))]


@pytest.fixture(scope="module")
def workers_db(tmp_path_factory, llama_dir, llama):
    folder = tmp_path_factory.mktemp("workers")
    db = str(folder / "guard.db")
    compile_policy(write_policy(folder, llama_dir, TEXTS), db, loaded=llama)
    return db


@pytest.fixture(scope="module")
def two_workers(workers_db, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "serve.log"
    args = ["--db", workers_db, "--workers", "2", "--threads", "1", "--audit", "--max-wait-ms", "2"]
    server = ServeProcess(args, log)
    try:
        yield server
    finally:
        server.terminate()


def test_both_workers_answer_with_the_librarys_verdicts(two_workers, workers_db, llama):
    """Each request on a new connection: the kernel hands connections to either worker, and each
    answers (its index in X-Guard-Worker, its pid in /readyz) with the library's verdict."""
    library = GuardSet.load(workers_db, model=llama)
    seen, pids = {}, {}
    deadline = time.monotonic() + 120
    i = 0
    while len(seen) < 2 or len(pids) < 2:
        assert time.monotonic() < deadline, f"only workers {sorted(seen)} answered"
        text = TEXTS_TO_CHECK[i % len(TEXTS_TO_CHECK)]
        response = httpx.post(f"{two_workers.url}/v1/check", json={"input": text}, timeout=60)
        assert response.status_code == 200
        worker = response.headers["x-guard-worker"]
        expected = library.check_batch([{"text": text}])[0]["tiny"]
        served = response.json()["results"][0]["verdicts"]["tiny"]
        assert (served["label"], served["flagged"]) == (expected.label, expected.flagged)
        assert served["scores"] == pytest.approx(expected.scores, abs=1e-5)
        seen[worker] = seen.get(worker, 0) + 1
        ready = httpx.get(f"{two_workers.url}/readyz", timeout=30)
        assert ready.status_code == 200
        pids[ready.json()["worker"]["index"]] = ready.json()["worker"]["pid"]
        i += 1
    assert set(seen) == {"0", "1"} and set(pids) == {0, 1}
    assert len(set(pids.values())) == 2 and two_workers.process.pid not in pids.values()


def test_the_workers_share_one_audit_log(two_workers, workers_db):
    """Concurrent requests over both workers leave exactly one audit row each in the one SQLite
    database (WAL mode and a busy timeout let the two writers take turns)."""

    def one(i):
        return httpx.post(
            f"{two_workers.url}/v1/check",
            json={"input": TEXTS_TO_CHECK[i % len(TEXTS_TO_CHECK)]},
            headers={"X-Request-ID": f"shared-{i}"},
            timeout=60,
        )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(40)))
    assert all(r.status_code == 200 for r in answers)
    assert {r.headers["x-guard-worker"] for r in answers} == {"0", "1"}
    with sqlite3.connect(workers_db) as con:
        rows = [
            r[0] for r in con.execute("select client_request_id from audit_log where client_request_id like 'shared-%'")
        ]
    assert sorted(rows) == sorted(f"shared-{i}" for i in range(40))


def test_sigterm_stops_every_worker(workers_db, tmp_path):
    server = ServeProcess(["--db", workers_db, "--workers", "2", "--threads", "1"], tmp_path / "serve.log")
    pids = set()
    deadline = time.monotonic() + 60
    while len(pids) < 2 and time.monotonic() < deadline:
        pids.add(httpx.get(f"{server.url}/readyz", timeout=30).json()["worker"]["pid"])
    assert len(pids) == 2
    assert server.terminate() == 0
    log = server.log.read_text()
    assert log.count('"message": "stopped"') == 2  # each worker finished its queue and audit log
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            import os

            os.kill(pid, 0)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/healthz", timeout=2)


def test_a_worker_that_cannot_load_stops_the_start_with_one_line(tmp_path, workers_db):
    from typer.testing import CliRunner

    from guard.cli.commands import app

    result = CliRunner().invoke(app, ["serve", "--db", workers_db, "--workers", "2", "--dtype", "float7"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "float7" in result.output


def test_threads_per_worker_shares_the_cores():
    # one core is kept for the HTTP side; the rest shared out, at least one thread each
    assert [threads_per_worker(w, cores=1) for w in (1, 2)] == [1, 1]
    assert [threads_per_worker(w, cores=2) for w in (1, 2, 3)] == [1, 1, 1]
    assert [threads_per_worker(w, cores=16) for w in (1, 2, 4, 5)] == [15, 7, 3, 3]


def test_available_cores_honours_a_containers_cpu_quota(tmp_path):
    import os

    cores = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cores(tmp_path) == cores  # no quota
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert available_cores(tmp_path) == min(cores, 2)  # 1.5 cores' time: 2 threads at most
    (tmp_path / "cpu.max").write_text("10000 100000\n")
    assert available_cores(tmp_path) == 1
    assert available_cores(tmp_path / "missing") == cores  # no cgroup v2 here
