"""The server's parts without HTTP: API keys, the audit log and its writer, retention, input parsing."""

import base64
import hashlib
import threading
from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from guard.cli.commands import app
from guard.errors import GuardError
from guard.serve.audit import AuditFailed, AuditWriter
from guard.serve.inputs import parse_input
from guard.serve.keys import ApiKeys, load_keys
from guard.serve.limits import ApiError, LimitError, ServiceLimits
from guard.store.audit import AuditKey, AuditLog, AuditRecord, input_digest, load_or_create_secret, parse_since
from guard.store.database import Store
from tests.support.audit_rows import audit_record

# --- keys ----------------------------------------------------------------------------------------


def test_keys_accept_only_a_bearer_with_a_known_key():
    keys = ApiKeys(["k" * 20, "second-key-0123456789"])
    assert keys.check(f"Bearer {'k' * 20}") and keys.check("bearer second-key-0123456789")
    assert keys.check("Bearer second-key-0123456789") != keys.check(f"Bearer {'k' * 20}")  # a key id each
    for header in (None, "", "Bearer", "Bearer ", f"Basic {'k' * 20}", "k" * 20, "Bearer " + "k" * 19, "Bearer x"):
        assert keys.check(header) is None, header
    assert not ApiKeys() and len(keys) == 2


def test_key_ids_do_not_reveal_the_key():
    # issue 18: a keyed hash (the audit secret's), not a plain SHA-256 of the key: a guessed key
    # cannot be matched against the ids in the audit log
    key = "secret-key-0123456789"
    keys = ApiKeys([key])
    key_id = keys.check(f"Bearer {key}")
    assert len(key_id) == 12 and key not in key_id and keys.ids == [key_id]
    assert key_id != hashlib.sha256(key.encode()).hexdigest()[:12]
    audit_key = AuditKey(b"s" * 32)
    keys.use_audit_key(audit_key)
    assert keys.check(f"Bearer {key}") == audit_key.key_id(hashlib.sha256(key.encode()).digest()) != key_id
    assert AuditKey(b"t" * 32).key_id(hashlib.sha256(key.encode()).digest()) != keys.check(f"Bearer {key}")


def test_keys_from_options_environment_and_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# comment\n\nfile-key-0123456789abc\n")
    env = {"GUARD_API_KEYS": "env-key-0123456789abc, env-key-2-0123456789abc"}
    keys = load_keys(["option-key-0123456789"], str(path), env=env)
    assert len(keys) == 4
    assert load_keys(env={"GUARD_API_KEYS_FILE": str(path)}).check("Bearer file-key-0123456789abc")
    with pytest.raises(GuardError, match="at least 16"):
        load_keys(["short"], env={})
    with pytest.raises(GuardError, match="cannot read the API key file"):
        load_keys(key_file=str(tmp_path / "missing"), env={})


# --- the audit log -------------------------------------------------------------------------------


def record(i: int, when: datetime, policy="p", flagged=False) -> AuditRecord:
    return audit_record(i, when, policy, flagged, input_sha256=input_digest(f"text {i}", key=b"k" * 32))


@pytest.fixture
def audit(tmp_path):
    return AuditLog(Store.open(str(tmp_path / "g.db"), create=True))


def test_audit_rows_filter_and_prune(audit):
    now = datetime.now(timezone.utc)
    audit.write(
        [
            record(0, now - timedelta(days=10), "a", True),
            record(1, now - timedelta(hours=2), "a", False),
            record(2, now - timedelta(minutes=5), "b", True),
        ]
    )
    assert [r.request_id for r in audit.query()] == ["r0", "r1", "r2"]
    assert [r.request_id for r in audit.query(since=now - timedelta(hours=3))] == ["r1", "r2"]
    assert [r.request_id for r in audit.query(policy="a", flagged=True)] == ["r0"]
    assert [r.request_id for r in audit.query(limit=2)] == ["r1", "r2"]  # the newest two, oldest first
    assert audit.query(policy="b").__next__().scores == {"harmful": 0.25}
    assert audit.prune(now - timedelta(days=7)) == 1 and audit.count() == 2


def test_guard_audit_prune_command(audit, tmp_path):
    now = datetime.now(timezone.utc)
    audit.write([record(0, now - timedelta(days=40)), record(1, now)])
    out = CliRunner().invoke(app, ["audit", "--db", str(tmp_path / "g.db"), "--prune-days", "30"])
    assert out.exit_code == 0 and "pruned 1 audit rows" in out.output
    assert [r.request_id for r in audit.query()] == ["r1"]


def test_parse_since():
    now = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=timezone.utc)
    with pytest.raises(GuardError, match="not a time"):
        parse_since("last week", now)


def test_input_digest_is_keyed_and_covers_text_and_images():
    # issue 18: HMAC-SHA256 under the audit secret; the text alone does not give it
    key = b"k" * 32
    assert input_digest("hello", key=key) != hashlib.sha256(b"hello").hexdigest()
    assert input_digest("hello", key=key) != input_digest("hello", key=b"j" * 32)
    assert input_digest("hello", ["abc"], key=key) != input_digest("hello", key=key)
    assert input_digest("hello", ["abc"], key=key) != input_digest("hello", ["abd"], key=key)


def test_the_audit_secret_is_made_once_0600_beside_the_database(tmp_path, monkeypatch):
    monkeypatch.delenv("GUARD_AUDIT_SECRET_FILE", raising=False)
    store = Store.open(str(tmp_path / "g.db"), create=True)
    assert (tmp_path / "g.db").stat().st_mode & 0o777 == 0o600  # a new database is its owner's only
    key = AuditKey.for_store(store)
    assert key.path == tmp_path / "g.db.audit-key" and key.path.stat().st_mode & 0o777 == 0o600
    assert AuditKey.for_store(store).secret == key.secret  # the same secret next time
    elsewhere = AuditKey.for_store(store, tmp_path / "other.key")
    assert elsewhere.secret != key.secret and load_or_create_secret(tmp_path / "other.key") == elsewhere.secret
    monkeypatch.setenv("GUARD_AUDIT_SECRET_FILE", str(tmp_path / "other.key"))
    assert AuditKey.for_store(store).secret == elsewhere.secret
    (tmp_path / "bad.key").write_text("not hex\n")
    with pytest.raises(GuardError, match="not a hex secret"):
        load_or_create_secret(tmp_path / "bad.key")


def test_the_audit_secret_needs_a_file_where_there_is_no_sqlite_file(monkeypatch):
    monkeypatch.delenv("GUARD_AUDIT_SECRET_FILE", raising=False)

    class Postgres:  # a Store on a server database: no file to put the secret beside
        class engine:
            url = "postgresql+psycopg://guard@localhost/guard"

    with pytest.raises(GuardError, match="--audit-secret"):
        AuditKey.for_store(Postgres())


def test_writer_groups_waiting_rows_into_one_commit_and_prunes(audit):
    now = datetime.now(timezone.utc)
    audit.write([record(99, now - timedelta(days=100))])
    commits = []
    writer = AuditWriter(audit, retention_days=30, on_write=lambda rows, s: commits.append(rows))
    # hold the writer's first commit back so that the other requests pile up behind it
    gate, inner = threading.Event(), audit.write

    def slow_write(records):
        gate.wait(10)
        return inner(records)

    audit.write = slow_write
    writer.start()
    assert [r.request_id for r in audit.query()] == []  # pruned at start: older than 30 days
    futures = [writer.write([record(i, now)]) for i in range(5)]
    gate.set()
    assert [f.result(10) for f in futures][-1] >= 1
    writer.close()
    assert sorted(r.request_id for r in audit.query()) == [f"r{i}" for i in range(5)]
    assert sum(commits) == 5 and len(commits) < 5  # fewer commits than requests


def test_writer_reports_failures_to_each_waiting_request_without_the_error_text(audit):
    # issue 18: the database's error text holds every row of the commit; each request gets an
    # error of its own that names only the kind of failure
    gate, entered, inner = threading.Event(), threading.Event(), audit.write
    calls = []

    def broken(records):
        calls.append(len(records))
        if len(calls) == 1:
            entered.set()
            gate.wait(10)  # hold the first commit so that the next two share one
            return inner(records)
        raise RuntimeError(f"disk full while writing {[r.request_id for r in records]}")

    audit.write = broken
    writer = AuditWriter(audit).start()
    first = writer.write([record(0, datetime.now(timezone.utc))])
    assert entered.wait(10)
    futures = [writer.write([record(i, datetime.now(timezone.utc))]) for i in (1, 2)]
    gate.set()
    first.result(10)
    errors = []
    for future in futures:
        with pytest.raises(AuditFailed) as caught:
            future.result(10)
        errors.append(caught.value)
    assert calls == [1, 2] and errors[0] is not errors[1]
    assert all(e.reason == "RuntimeError" and "r1" not in str(e) and "disk" not in str(e) for e in errors)
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.write([]).result(1)


# --- inputs --------------------------------------------------------------------------------------


def test_input_shapes():
    limits = ServiceLimits()
    assert [i.text for i in parse_input("one", limits)] == ["one"]
    assert [(i.param, i.text) for i in parse_input(["a", "b"], limits)] == [("input[0]", "a"), ("input[1]", "b")]
    (item,) = parse_input([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], limits)
    assert item.text == "a\nb" and item.images == [] and item.input_types == ["text"]


def test_image_parts_decode_within_limits():
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 10, 10)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    (item,) = parse_input([{"type": "image_url", "image_url": {"url": url}}], ServiceLimits())
    assert item.text is None and item.images[0].size == (8, 6) and item.input_types == ["image"]
    with pytest.raises(LimitError) as info:
        parse_input([{"type": "image_url", "image_url": {"url": url}}] * 3, ServiceLimits(max_images=2))
    assert info.value.limit == "max_images"
    with pytest.raises(LimitError) as info:
        parse_input([{"type": "image_url", "image_url": url}], ServiceLimits(max_image_pixels=47))
    assert info.value.limit == "max_image_pixels"
    with pytest.raises(ApiError, match="never fetches"):
        parse_input([{"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}], ServiceLimits())


def test_nearest_exemplars_on_the_review_page_are_escaped_deduplicated_and_closest_first():
    from guard.serve.review_page import nearest_list

    hostile = '<img src=x onerror="alert(1)">'
    nearest = [
        {"rank": 1, "layer": 3, "head": 2, "voted": "harmful", "exemplars": [
            {"index": 7, "text": hostile, "label": "harmful", "similarity": 0.5},
            {"index": 2, "text": "bake bread", "label": "benign", "similarity": 0.9},
        ]},
        {"rank": 2, "layer": 1, "head": 0, "voted": "benign", "exemplars": [
            {"index": 7, "text": hostile, "label": "harmful", "similarity": 0.7},
        ]},
    ]  # fmt: skip
    html = nearest_list(nearest)
    assert "<img" not in html and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    assert html.index("bake bread") < html.index("&lt;img")  # closest first
    assert html.count("&lt;img") == 1 and "harmful · 0.70 · heads 1, 2" in html  # once, its best similarity
    assert nearest_list(None) == nearest_list([]) == ""
