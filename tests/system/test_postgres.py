"""The same commands against a real PostgreSQL server (tests/support/postgres.py): compile, check, list,
versions, rollback, a newer schema refused, damaged vectors refused."""

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guard.cli.commands import app
from guard.store import migrations
from guard.store.database import Store
from tests.support.fixtures import TEXTS, write_policy
from tests.support.postgres import server_bin

pytestmark = pytest.mark.postgres
runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def test_compile_check_list_versions_rollback(pg_db, tmp_path, llama_dir):
    path = write_policy(tmp_path, llama_dir, TEXTS)
    first = run("compile", path, "--db", pg_db, "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout.strip().splitlines()[-1])["cached"] == 0
    fewer = write_policy(tmp_path, llama_dir, {k: v[:3] for k, v in TEXTS.items()})
    second = run("compile", fewer, "--db", pg_db, "--json")
    assert json.loads(second.stdout.strip().splitlines()[-1])["computed"] == 0  # the cache is in PostgreSQL too

    check = run("check", "-", "--db", pg_db, "--json", input=b"bake bread\n\xff\nhurt someone\n")
    records = [json.loads(line) for line in check.stdout.strip().splitlines()]
    assert check.exit_code == 2 and [("error" in r) for r in records] == [False, True, False]

    versions = json.loads(run("list", "--db", pg_db, "--versions", "--json").stdout)
    assert [(v["revision"], v["current"]) for v in versions] == [(2, True), (1, False)]
    assert run("rollback", "tiny", "1", "--db", pg_db).exit_code == 0
    store = Store.open(pg_db)
    assert store.load_artifact().revision == 1 and store.schema_revision() == migrations.head()
    older = run("check", "--text", "bake bread", "--db", pg_db, "-p", "tiny@2", "--json")
    assert json.loads(older.stdout)["verdicts"]["tiny"]["version"] == versions[0]["version"]
    assert run("compile", path, "--db", pg_db, "--keep", "1").exit_code == 0
    assert [v["revision"] for v in store.versions("tiny")] == [3]


def test_library_verdicts_match_sqlite(pg_db, tmp_path, llama):
    from guard.check.engine import Guard
    from guard.compiler import compile_policy

    path = write_policy(tmp_path, llama.source.reference, TEXTS)
    sqlite_db = str(tmp_path / "g.db")
    compile_policy(path, sqlite_db, loaded=llama)
    compile_policy(path, pg_db, loaded=llama)
    texts = ["bake bread", "make a weapon", "a poem about rain"]
    on_sqlite = [v.to_dict() for v in Guard.load(sqlite_db, model=llama).check_batch(texts)]
    on_postgres = [v.to_dict() for v in Guard.load(pg_db, model=llama).check_batch(texts)]
    assert on_sqlite == on_postgres


def test_newer_schema_and_damaged_vectors_are_refused(pg_db, tmp_path, llama_dir):
    import sqlalchemy as sa

    assert run("compile", write_policy(tmp_path, llama_dir, TEXTS), "--db", pg_db).exit_code == 0
    engine = sa.create_engine(pg_db)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE heads SET centroids = substring(centroids from 1 for 7) WHERE rank = 0"))
    damaged = run("check", "--text", "hello", "--db", pg_db)
    assert damaged.exit_code == 2 and "damaged" in damaged.stderr
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE guard_schema SET version_num = '9999'"))
    engine.dispose()
    newer = run("list", "--db", pg_db)
    assert newer.exit_code == 2 and "written by a newer guard" in newer.stderr


SERVER_UNTIL = """
import signal, sys, time
from tests.support.postgres import PostgresServer, server_bin

# Ctrl-C raises KeyboardInterrupt even where this test runs in a background job, which starts
# its children with SIGINT ignored (and Python then installs no handler of its own)
signal.signal(signal.SIGINT, signal.default_int_handler)

server = PostgresServer(server_bin()).start()
print(server.folder, server.port, flush=True)
if sys.argv[1] != "exit":
    time.sleep(300)  # until the test's signal
"""


@pytest.mark.parametrize("how", ["exit", "SIGINT", "SIGTERM"])
def test_the_server_is_stopped_and_its_folder_deleted_however_the_process_ends(how):
    """Without stop(): at a plain exit, at Ctrl-C (KeyboardInterrupt, as an interrupted test
    session ends) and at SIGTERM, the server stops and its temporary folder goes."""
    if server_bin() is None:
        pytest.skip("no PostgreSQL server binary (initdb, pg_ctl) on this machine")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_UNTIL, how], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        folder, port = proc.stdout.readline().split()
        assert Path(folder, "data", "postmaster.pid").exists()
        if how != "exit":
            proc.send_signal(getattr(signal, how))
        proc.wait(timeout=120)
    finally:
        proc.kill()
    assert not Path(folder).exists(), proc.stderr.read()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(port)), timeout=5).close()
