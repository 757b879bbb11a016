"""Databases: what is and is not a guard database, URLs, the environment variable."""

import sqlite3

import pytest

from guard.errors import StoreError
from guard.store.database import Store, database_url, from_blob, to_blob


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="does not exist; run 'guard compile"):
        Store.open(str(tmp_path / "none.db"))


def test_text_file_is_not_a_guard_database(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("hello, I am a text file, not SQLite at all. " * 20)
    with pytest.raises(StoreError, match="is not a guard database"):
        Store.open(str(path))
    with pytest.raises(StoreError, match="is not a guard database"):
        Store.open(str(path), create=True)
    assert path.read_text().startswith("hello")  # untouched


def test_other_sqlite_database_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "app.db"
    con = sqlite3.connect(path)
    con.execute("create table users (id integer)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="not a guard database .*users"):
        Store.open(str(path), create=True)
    assert [r[0] for r in sqlite3.connect(path).execute("select name from sqlite_master")] == ["users"]


def test_new_database_records_its_schema_revision(tmp_path):
    from guard.store import migrations

    store = Store.open(str(tmp_path / "g.db"), create=True)
    revisions = [r[0] for r in sqlite3.connect(tmp_path / "g.db").execute("select version_num from guard_schema")]
    assert revisions == [migrations.head()] and store.schema_revision() == migrations.head()
    assert store.policy_names() == []
    Store.open(str(tmp_path / "g.db"))  # reopening migrates nothing twice
    assert len(list(sqlite3.connect(tmp_path / "g.db").execute("select version_num from guard_schema"))) == 1


def test_url_and_environment(tmp_path, monkeypatch):
    assert database_url("x.db") == "sqlite:///x.db"
    assert database_url("postgresql://u@h/db") == "postgresql://u@h/db"
    monkeypatch.setenv("GUARD_DB", str(tmp_path / "env.db"))
    assert database_url(None) == f"sqlite:///{tmp_path / 'env.db'}"
    Store.open(None, create=True)
    assert (tmp_path / "env.db").exists()
    Store.open(f"sqlite:///{tmp_path / 'url.db'}", create=True)
    assert (tmp_path / "url.db").exists()


def test_unknown_policy_names_what_exists(tmp_path):
    store = Store.open(str(tmp_path / "g.db"), create=True)
    with pytest.raises(StoreError, match="holds 0 policies"):
        store.load_artifact()
    with pytest.raises(StoreError, match="no compiled policy named 'x'"):
        store.load_artifact("x")


def test_blob_round_trip():
    import torch

    t = torch.randn(3, 4, 5)
    blob = to_blob(t)
    assert len(blob) == 3 * 4 * 5 * 4
    assert torch.equal(from_blob(blob, (3, 4, 5)), t)
