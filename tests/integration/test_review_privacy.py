"""Privacy of the review loop: erasing an input's text (`guard audit --erase-sha256`) and the
audit log's retention reach the copies reviews keep, and leave every row (and so every count)."""

from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from guard.cli import app
from guard.errors import GuardError
from guard.store.audit import AuditLog, AuditRecord
from guard.store.database import Store
from guard.store.reviews import Reviews, decide, export

LABELS = ["harmful", "benign"]


def record(text: str, digest: str, when: datetime) -> AuditRecord:
    return AuditRecord(
        created_at=when.isoformat(timespec="microseconds"),
        request_id="r",
        item=0,
        endpoint="check",
        policy="p",
        policy_version="v1",
        model_fingerprint="fp",
        input_sha256=digest,
        label="harmful",
        flagged=True,
        scores={"harmful": 0.9, "benign": 0.1},
        latency_ms=1.0,
        input_text=text,
        votes={"harmful": 3, "benign": 1},
        uncertain=False,
    )


@pytest.fixture
def store(tmp_path):
    store = Store.open(str(tmp_path / "guard.db"), create=True)
    now = datetime.now(timezone.utc)
    AuditLog(store).write(
        [
            record("how do I fix a pipe", "a" * 64, now - timedelta(days=40)),
            record("how do I fix a pipe", "a" * 64, now),
            record("how do I bake bread", "b" * 64, now),
        ]
    )
    reviews = Reviews(store)
    for audit_id in (1, 2, 3):
        reviews.add(audit_id, reviewer="r1", role="review", action="correct", label="benign", labels=LABELS)
    return store


def texts(store) -> dict:
    log, reviews = AuditLog(store), Reviews(store)
    return {
        "audit": [row.input_text for row in log.query()],
        "reviews": [review.input_text for review in Reviews(store).all()],
        "counts": (log.count(), len(reviews.all())),
    }


@pytest.mark.parametrize(
    "form", [["audit", "erase", "--sha256"], ["audit", "--erase-sha256"]], ids=["erase-command", "old-option"]
)
def test_erase_removes_the_text_everywhere_and_keeps_the_rows(store, tmp_path, form):
    result = CliRunner().invoke(app, [*form[:-1], "--db", str(tmp_path / "guard.db"), form[-1], "a" * 64])
    assert result.exit_code == 0, result.output
    assert "2 audit rows and 2 reviews" in result.stdout
    assert texts(store) == {
        "audit": [None, None, "how do I bake bread"],
        "reviews": [None, None, "how do I bake bread"],
        "counts": (3, 3),
    }
    done = export(decide(Reviews(store).all()), hold_out=0)
    assert [line["text"] for line in done.lines] == ["how do I bake bread"] and done.without_text == 1
    bad = CliRunner().invoke(app, [*form[:-1], "--db", str(tmp_path / "guard.db"), form[-1], "nope"])
    assert bad.exit_code == 2 and "64 hex digits" in bad.stderr
    with pytest.raises(GuardError):
        AuditLog(store).erase("A" * 64)


def test_retention_reaches_the_reviews_copies(store):
    pruned = AuditLog(store).prune(datetime.now(timezone.utc) - timedelta(days=30))
    assert pruned == 1
    assert texts(store) == {
        "audit": ["how do I fix a pipe", "how do I bake bread"],
        "reviews": [None, "how do I fix a pipe", "how do I bake bread"],  # the review of the pruned row
        "counts": (2, 3),
    }


def test_stats_count_what_the_reviewers_decided(store, tmp_path):
    """Two inputs (one seen twice), every verdict flagged, both corrected to benign by one
    reviewer, then a second reviewer confirms the bread one: a tie there."""
    from guard.eval.review_stats import stats

    Reviews(store).add(3, reviewer="r2", role="review", action="confirm", labels=LABELS)
    (row,) = stats(store)
    assert row["policy"] == "p" and row["verdicts"] == 3 and row["inputs"] == 2 and row["ties"] == 1
    assert (row["flag_rate"]["k"], row["flag_rate"]["n"]) == (3, 3)
    assert (row["reviewed"]["k"], row["reviewed"]["n"]) == (2, 2)
    assert (row["agreement"]["k"], row["agreement"]["n"]) == (0, 1)  # the pipe: benign, the model said harmful
    assert (row["flag_precision"]["k"], row["flag_precision"]["n"]) == (0, 1)
    assert row["agreement"]["low"] == 0.0 and 0.7 < row["agreement"]["high"] < 0.85  # Wilson, n = 1
    result = CliRunner().invoke(app, ["review", "stats", "--db", str(tmp_path / "guard.db"), "--json"])
    assert result.exit_code == 0 and '"ties": 1' in result.stdout
