"""`guard scan --ray` on a local Ray instance the test starts: the same records as the local scan,
also when resumed, across several shards of the input."""

import json
import os
import re
import subprocess

import pytest
from typer.testing import CliRunner

from guard.cli.commands import app
from guard.scanning.writers import Progress, read_records
from tests.support.fixtures import TEXTS, write_policy
from tests.system.test_scan import GUARD, corpus_line, write_corpus

ray = pytest.importorskip("ray", reason="the 'ray' extra (setup.sh installs it)")
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, llama_dir):
    """A compiled policy, a 200-item corpus (with error lines) and its local scan."""
    tmp = tmp_path_factory.mktemp("ray-scan")
    db = str(tmp / "guard.db")
    assert run("compile", write_policy(tmp, llama_dir, TEXTS), "--db", db).exit_code == 0
    corpus = write_corpus(tmp / "posts.jsonl", 200)
    local = tmp / "local.jsonl"
    result = run("scan", corpus, "--out", local, "--db", db, "--id-field", "id", "--batch-size", "8")
    assert result.exit_code in (0, 1), result.output
    return tmp, db, corpus, local


def test_ray_scan_equals_local_scan(local_ray, scanned):
    tmp, db, corpus, local = scanned
    out = tmp / "ray.jsonl"
    result = run("scan", corpus, "--out", out, "--db", db, "--id-field", "id", "--batch-size", "8", "--ray",
                 "--workers", "1", "--json")  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    assert out.read_bytes() == local.read_bytes()
    records = list(read_records(str(local)))
    assert len(records) == 200 and any("error" in r for r in records)
    assert json.loads(result.stdout)["items"] == 200


def test_ray_resume_across_shards(local_ray, scanned):
    """A resumed Ray scan over a corpus cut into many shards gives the rest of the local records."""
    from guard.scanning.ray_data import ray_scan_windows
    from guard.scanning.readers import Columns, plan
    from guard.store.database import Store

    tmp, db, corpus, local = scanned
    shards = plan([str(corpus)], shard_bytes=1500)
    assert (
        len(shards) > 5
        and sum(s.count for s in shards) == 200
        and shards[3].first == 1 + sum(s.count for s in shards[:3])
    )
    records = list(read_records(str(local)))
    done = 77
    progress = Progress(records=done, last_id=records[done - 1]["id"])
    artifacts = [Store.open(db).load_artifact("tiny")]
    rest = [
        record
        for block in ray_scan_windows(
            [str(corpus)], artifacts, Columns(id="id"), progress=progress, batch_size=8, shard_bytes=1500
        )
        for record in block
    ]
    assert rest == records[done:]
    assert json.loads(corpus_line(done))["id"] == rest[0]["id"]


RAY_LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d [\d:,]+\s+(DEBUG|INFO|WARNING) \S+\.py:\d+ -- ", re.M
)  # Ray's Python loggers


def test_ray_logs_only_with_verbose(scanned):
    """A `guard scan --ray` of its own (it starts its own local Ray) writes the same records either
    way; Ray's own log lines (its start, Ray Data's plan and progress, its warnings) reach stderr
    only with --verbose."""
    tmp, db, corpus, local = scanned
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    stderr = {}
    for flag in ("", "--verbose"):
        out = tmp / f"ray-own{flag}.jsonl"
        args = [GUARD, "scan", corpus, "--out", out, "--db", db, "--id-field", "id", "--batch-size", "8", "--ray", "-q"]
        done = subprocess.run(
            [str(a) for a in args + ([flag] if flag else [])], capture_output=True, text=True, env=env
        )
        assert done.returncode in (0, 1), done.stderr[-2000:]
        assert out.read_bytes() == local.read_bytes()
        stderr[flag] = done.stderr
    assert RAY_LOG_LINE.findall(stderr["--verbose"]), stderr["--verbose"][-2000:]  # Ray does talk: shown
    assert not RAY_LOG_LINE.findall(stderr[""]), stderr[""]
    for words in ("Started a local Ray instance", "Execution plan", "Progress bars", "Token authentication"):
        assert words not in stderr[""]
