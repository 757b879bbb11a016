"""Schema migrations (Alembic): a database written by guard 0.1 upgrades in place and gives the
same verdicts; new databases start at the head revision; a newer schema is refused."""

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from guard.check.engine import GuardSet
from guard.store import migrations
from guard.store.database import Store

DATA = Path(__file__).parents[1] / "data"


@pytest.fixture
def old_db(tmp_path):
    path = tmp_path / "guard-0.1.db"
    shutil.copy(DATA / "guard-0.1.db", path)
    return path


def tables(path) -> set[str]:
    return {r[0] for r in sqlite3.connect(path).execute("select name from sqlite_master where type='table'")}


def counts(path) -> dict[str, int]:
    con = sqlite3.connect(path)
    return {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in ("heads", "exemplars", "activations")}


def test_guard_0_1_database_upgrades_in_place_and_keeps_its_verdicts(old_db, guard01_llama):
    llama = guard01_llama
    expected = json.loads((DATA / "guard-0.1-verdicts.json").read_text())
    assert llama.fingerprint == expected["fingerprint"], "tests/data/tiny-llama-0.1 is the tiny llama of 0.1"
    assert "guard_migrations" in tables(old_db) and "guard_schema" not in tables(old_db)
    before = counts(old_db)
    assert before["heads"] == 6 and before["activations"] == 8

    store = Store.open(str(old_db))
    assert store.schema_revision() == migrations.head()
    assert "guard_migrations" not in tables(old_db)  # guard 0.1 now refuses it instead of misreading it
    assert counts(old_db) == before  # the table copy did not cascade into heads or exemplars
    assert store.policy_names() == ["harm", "loose"]
    assert [v["revision"] for v in store.versions()] == [1, 1]

    results = GuardSet.load(str(old_db), model=llama).check_batch(expected["texts"])
    same = ("policy", "version", "flagged", "label", "scores", "calibrated", "margin")
    for got, want in zip(results, expected["verdicts"]):
        for name, verdict in want.items():
            now = got[name].to_dict()
            assert {k: now[k] for k in same} == {k: verdict[k] for k in same}
            # since 0.2 a verdict its own calibrated probability does not back is uncertain too
            # (the unrounded probability: a tied vote lands a hair below or above 0.5)
            backed = got[name].calibrated[got[name].label] >= 0.5
            assert now["uncertain"] == (verdict["uncertain"] or not backed)
            vote = ("layer", "head", "label", "similarity", "similarities", "margin")
            assert [{k: v[k] for k in vote} for v in now["votes"]] == [
                {k: v[k] for k in vote} for v in verdict["votes"]
            ]


def test_upgraded_database_keeps_versions_of_new_compiles(old_db, guard01_llama, tmp_path):
    llama = guard01_llama
    from guard.compiler import compile_policy
    from tests.support.fixtures import TEXTS, write_policy

    texts = {"harmful": TEXTS["harmful"][:3], "benign": TEXTS["benign"][:3]}
    report = compile_policy(
        write_policy(tmp_path, llama.source.reference, texts, name="harm"), str(old_db), loaded=llama
    )
    assert report.artifact.revision == 2
    store = Store.open(str(old_db))
    history = store.versions("harm")
    assert [(v["revision"], v["current"]) for v in history] == [(2, True), (1, False)]
    assert history[1]["dtype"] is None and history[0]["dtype"] == "float32"  # 0.1 did not record it


def test_concurrent_first_opens_migrate_once(tmp_path):
    import concurrent.futures

    path = str(tmp_path / "fresh.db")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: Store.open(path, create=True), range(4)))
    assert all(s.schema_revision() == migrations.head() for s in stores)
    assert sqlite3.connect(path).execute("select count(*) from guard_schema").fetchone()[0] == 1


def test_revisions_form_one_chain():
    revisions = list(migrations.script().walk_revisions())
    assert [r.revision for r in reversed(revisions)] == ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008"]
    assert migrations.head() == "0008"
    assert migrations.newest_file_revision() == migrations.head()  # the no-Alembic check at open


def test_opening_a_database_at_head_imports_no_alembic(tmp_path):
    """`guard check` opens the database on every run: at head, one query decides, without Alembic
    (a second or so of imports on a cold start); a database behind head is still upgraded."""
    import subprocess
    import sys

    path = tmp_path / "guard.db"
    Store.open(str(path), create=True).engine.dispose()
    code = (
        "import sys\nfrom guard.store import Store\n"
        f"Store.open({str(path)!r})\n"
        "print(sorted(m for m in ('alembic', 'guard.store.audit') if m in sys.modules))"
    )

    def run():
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    assert run().strip() == "[]"
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE heads DROP COLUMN bank")
    con.execute("UPDATE guard_schema SET version_num = '0005'")
    con.commit()
    con.close()
    assert run().strip() == "['alembic']"  # behind head: Alembic upgrades it
    assert Store.open(str(path)).schema_revision() == "0008"
    assert "bank" in {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(heads)")}


def test_a_0004_audit_log_upgrades_keeping_its_rows(tmp_path):
    """Revision 0005 (issue 18) adds audit_log.client_request_id: rows written before keep their
    request_id and get NULL there, and the audit log reads them as before."""
    from guard.store.audit import AuditLog

    path = tmp_path / "audit-0004.db"
    Store.open(str(path), create=True).engine.dispose()
    con = sqlite3.connect(path)  # take the database back to what revision 0004 made
    con.execute("DROP INDEX ix_audit_log_client_request_id")
    con.execute("ALTER TABLE audit_log DROP COLUMN client_request_id")
    con.execute(
        "INSERT INTO audit_log (created_at, request_id, item, endpoint, api_key, policy, policy_version, "
        "model_fingerprint, input_sha256, input_text, label, flagged, scores, latency_ms) VALUES "
        "('2026-11-28T12:00:00.000000+00:00', 'old-1', 0, 'check', NULL, 'p', 'v1', 'fp', ?, NULL, 'benign', 0, "
        "'{\"harmful\": 0.25}', 1.5)",
        ("ab" * 32,),
    )
    con.execute("ALTER TABLE heads DROP COLUMN bank")  # revision 0006's
    con.execute("UPDATE guard_schema SET version_num = '0004'")
    con.commit()
    con.close()

    store = Store.open(str(path))
    assert store.schema_revision() == migrations.head() == "0008"
    (row,) = AuditLog(store).query()
    assert (row.request_id, row.client_request_id, row.input_sha256) == ("old-1", None, "ab" * 32)
    indexes = {r[1] for r in sqlite3.connect(path).execute("PRAGMA index_list(audit_log)")}
    assert "ix_audit_log_client_request_id" in indexes
    Store.open(str(path))  # at head: opening again changes nothing


def test_a_0_2_database_gains_the_reviews_table_keeping_its_audit_rows(old_db):
    """Revision 0007 (issue 22): a guard 0.2 database (schema 0006: guard 0.1's upgraded, with
    audit rows) gains `reviews` and `staff_actions`, and the audit log's `votes` and `uncertain`
    columns, NULL on the rows it had; those rows are reviewable and stay as they were."""
    from guard.store.audit import AuditLog
    from guard.store.reviews import Reviews

    Store.open(str(old_db)).engine.dispose()  # 0.1 -> head, then back to what 0.2 left (0006)
    con = sqlite3.connect(old_db)
    con.execute("DROP TABLE reviews")
    con.execute("DROP TABLE staff_actions")
    con.execute("ALTER TABLE audit_log DROP COLUMN votes")
    con.execute("ALTER TABLE audit_log DROP COLUMN uncertain")
    con.execute("ALTER TABLE audit_log DROP COLUMN nearest")  # revision 0008's
    con.execute("UPDATE guard_schema SET version_num = '0006'")
    con.execute(
        "INSERT INTO audit_log (created_at, request_id, client_request_id, item, endpoint, api_key, policy, "
        "policy_version, model_fingerprint, input_sha256, input_text, label, flagged, scores, latency_ms) VALUES "
        "('2026-11-28T12:00:00.000000+00:00', 'r1', NULL, 0, 'check', NULL, 'harm', 'v1', 'fp', ?, "
        "'how do I fix a pipe', 'harmful', 1, '{\"harmful\": 0.6, \"benign\": 0.4}', 1.5)",
        ("ab" * 32,),
    )
    con.commit()
    con.close()
    assert "reviews" not in tables(old_db)

    store = Store.open(str(old_db))
    assert store.schema_revision() == migrations.head() == "0008"
    assert {"reviews", "staff_actions"} <= tables(old_db)
    (row,) = AuditLog(store).query()
    assert (row.input_text, row.votes, row.uncertain, row.nearest, row.scores) == (
        "how do I fix a pipe",
        None,
        None,
        None,
        {"harmful": 0.6, "benign": 0.4},
    )
    assert "nearest" in {r[1] for r in sqlite3.connect(old_db).execute("PRAGMA table_info(audit_log)")}
    reviews = Reviews(store)
    (item,) = reviews.queue()
    assert item.reason == "uncertain"  # no flag recorded: a winning probability under 0.75
    reviews.add(
        item.audit_id, reviewer="r", role="review", action="correct", label="benign", labels=["harmful", "benign"]
    )
    assert [r.to_dict() for r in AuditLog(store).query()] == [row.to_dict()]
    assert [(r.label, r.model_label, r.input_text) for r in reviews.all("harm")] == [
        ("benign", "harmful", "how do I fix a pipe")
    ]
