"""The server's parts without HTTP: API keys, the audit log and its writer, retention, input parsing."""

import base64
import hashlib
import threading
from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from guard.audit import AuditLog, AuditRecord, input_digest, parse_since
from guard.cli import app
from guard.errors import GuardError
from guard.serve.audit import AuditWriter
from guard.serve.inputs import parse_input
from guard.serve.keys import ApiKeys, load_keys
from guard.serve.limits import ApiError, LimitError, Limits
from guard.store import Store

# --- keys ----------------------------------------------------------------------------------------


def test_keys_accept_only_a_bearer_with_a_known_key():
    keys = ApiKeys(["k" * 20, "second-key-0123456789"])
    assert keys.check(f"Bearer {'k' * 20}") and keys.check("bearer second-key-0123456789")
    assert keys.check("Bearer second-key-0123456789") != keys.check(f"Bearer {'k' * 20}")  # a key id each
    for header in (None, "", "Bearer", "Bearer ", f"Basic {'k' * 20}", "k" * 20, "Bearer " + "k" * 19, "Bearer x"):
        assert keys.check(header) is None, header
    assert not ApiKeys() and len(keys) == 2


def test_key_ids_do_not_reveal_the_key():
    key = "secret-key-0123456789"
    key_id = ApiKeys([key]).check(f"Bearer {key}")
    assert key_id == hashlib.sha256(key.encode()).hexdigest()[:12] and key not in key_id


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
    return AuditRecord(
        created_at=when.isoformat(timespec="microseconds"),
        request_id=f"r{i}",
        item=0,
        endpoint="check",
        policy=policy,
        policy_version="v1",
        model_fingerprint="fp",
        input_sha256=input_digest(f"text {i}"),
        label="harmful" if flagged else "benign",
        flagged=flagged,
        scores={"harmful": 0.25},
        latency_ms=1.5,
    )


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


def test_input_digest_covers_text_and_images():
    assert input_digest("hello") == hashlib.sha256(b"hello").hexdigest()
    assert input_digest("hello", ["abc"]) != input_digest("hello") != input_digest("hello", ["abd"])


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


def test_writer_reports_failures_to_the_waiting_request(audit):
    writer = AuditWriter(audit).start()

    def broken(records):
        raise RuntimeError("disk full")

    audit.write = broken
    with pytest.raises(RuntimeError, match="disk full"):
        writer.write([record(0, datetime.now(timezone.utc))]).result(10)
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.write([]).result(1)


# --- inputs --------------------------------------------------------------------------------------


def test_input_shapes():
    limits = Limits()
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
    (item,) = parse_input([{"type": "image_url", "image_url": {"url": url}}], Limits())
    assert item.text is None and item.images[0].size == (8, 6) and item.input_types == ["image"]
    with pytest.raises(LimitError) as info:
        parse_input([{"type": "image_url", "image_url": {"url": url}}] * 3, Limits(max_images=2))
    assert info.value.limit == "max_images"
    with pytest.raises(LimitError) as info:
        parse_input([{"type": "image_url", "image_url": url}], Limits(max_image_pixels=47))
    assert info.value.limit == "max_image_pixels"
    with pytest.raises(ApiError, match="never fetches"):
        parse_input([{"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}], Limits())
