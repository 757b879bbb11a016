"""Concurrent writers and readers on one database: 4 processes compiling different policies
(three versions each) while 8 processes check all of them, on SQLite and on PostgreSQL. Zero
errors, and no checker ever loads a policy that is not exactly one version its compiler wrote."""

import pytest

from guard.store.database import Store
from tests.support import concurrency


def assert_clean(figures: dict, store: Store) -> None:
    assert figures["errors"] == [], figures["errors"][:5]
    assert figures["torn_reads"] == 0
    assert figures["compiles"] == 4 * 3 and figures["checks"] > 0
    assert store.policy_names() == ["p0", "p1", "p2", "p3"]
    for name in store.policy_names():
        assert [v["revision"] for v in store.versions(name)] == [3, 2, 1]


def test_sqlite_four_compilers_eight_checkers(tmp_path, llama_dir):
    db = str(tmp_path / "shared.db")
    figures = concurrency.run(db, tmp_path / "work", str(llama_dir))
    assert_clean(figures, Store.open(db))
    import sqlite3

    assert sqlite3.connect(db).execute("pragma journal_mode").fetchone()[0] == "wal"
    assert sqlite3.connect(db).execute("pragma integrity_check").fetchone()[0] == "ok"


@pytest.mark.postgres
def test_postgres_four_compilers_eight_checkers(pg_db, tmp_path, llama_dir):
    figures = concurrency.run(pg_db, tmp_path / "work", str(llama_dir))
    assert_clean(figures, Store.open(pg_db))
