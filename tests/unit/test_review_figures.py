"""`guard review stats`' figures on an SQLite database of audited verdicts and reviews spread over
days, against a naive recount written here with plain loops: flag rate per time bucket, label
drift, the false-positive rate on the random sample of confident verdicts; the CSV says the same
as the JSON; the stats page's chart and tables are escaped."""

import csv
import io
import json
import random
from datetime import date, datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from guard.cli.commands import app
from guard.eval.metrics import wilson
from guard.eval.review_stats import bucket_of, stats, to_csv
from guard.serve.review_page import stats_page
from guard.store.audit import AuditLog
from guard.store.database import Store
from guard.store.reviews import Reviews, sampled
from tests.support.audit_rows import audit_record

LABELS = ["harmful", "benign"]
RATE = 0.5  # the queue's random sample of confident verdicts (--review-sample)


@pytest.fixture(scope="module")
def figures_db(tmp_path_factory):
    """400 verdicts of policy "harm" (and 20 of "other") over ten days, the flag rate rising; about
    half reviewed, by one or two reviewers who sometimes disagree with the model."""
    db = str(tmp_path_factory.mktemp("figures") / "guard.db")
    store = Store.open(db, create=True)
    rng = random.Random(7)
    start = datetime(2026, 11, 27, 9, tzinfo=timezone.utc)  # a Friday: the days span three ISO weeks
    records = []
    for i in range(420):
        when = start + timedelta(hours=rng.randrange(240))
        policy = "other" if i >= 400 else "harm"
        flagged = rng.random() < 0.2 + 0.04 * ((when - start).days)
        records.append(
            audit_record(
                i,
                when,
                policy,
                flagged,
                scores={"harmful": 0.9 if flagged else 0.1, "benign": 0.1 if flagged else 0.9},
                latency_ms=1.0,
                input_text=f"text {i}",
                uncertain=rng.random() < 0.3,
            )
        )
    AuditLog(store).write(records)
    reviews = Reviews(store)
    for audit_id in range(1, 421):
        if rng.random() < 0.5:
            continue
        for reviewer in ["a"] if rng.random() < 0.7 else ["a", "b"]:
            label = rng.choice(LABELS) if rng.random() < 0.5 else None
            if label is None:
                reviews.add(audit_id, reviewer=reviewer, role="review", action="confirm", labels=LABELS)
            else:
                reviews.add(audit_id, reviewer=reviewer, role="review", action="correct", label=label, labels=LABELS)
    return db


def naive(db):
    """The rows and the reviewers' settled labels, recounted: (audit rows, {audit id: settled label or
    None for a tie}) with the majority rule of docs/review.md (no admins here)."""
    store = Store.open(db)
    rows = list(AuditLog(store).query())
    ids = {row.request_id: n for n, row in enumerate(sorted(rows, key=lambda r: int(r.request_id[1:])), start=1)}
    latest: dict[int, dict[str, str]] = {}
    for review in Reviews(store).all():
        latest.setdefault(review.audit_id, {})[review.reviewer] = review.label
    settled = {}
    for audit_id, by_reviewer in latest.items():
        votes = list(by_reviewer.values())
        counts = sorted({label: votes.count(label) for label in votes}.items(), key=lambda kv: -kv[1])
        settled[audit_id] = None if len(counts) > 1 and counts[0][1] == counts[1][1] else counts[0][0]
    return rows, ids, settled


def interval(k, n):
    low, high = wilson(k, n)
    return {"k": k, "n": n, "value": pytest.approx(k / n, abs=1e-6), "low": pytest.approx(low, abs=1e-6), "high": pytest.approx(high, abs=1e-6)}  # fmt: skip


@pytest.mark.parametrize("bucket", ["hour", "day", "week"])
def test_flag_rate_and_drift_per_bucket_match_a_recount(figures_db, bucket):
    rows, _, _ = naive(figures_db)
    (harm, other) = stats(Store.open(figures_db), bucket=bucket, sample_rate=RATE)
    assert (harm["policy"], other["policy"]) == ("harm", "other")
    mine = [row for row in rows if row.policy == "harm"]

    def key(row):
        day = date.fromisoformat(row.created_at[:10])
        if bucket == "hour":
            return row.created_at[:13]
        return (day - timedelta(days=day.isoweekday() - 1)).isoformat() if bucket == "week" else day.isoformat()

    starts = sorted({key(row) for row in mine})
    assert [b["start"] for b in harm["buckets"]] == starts
    first = None
    for b, start in zip(harm["buckets"], starts):
        inside = [row for row in mine if key(row) == start]
        flagged = len([row for row in inside if row.flagged])
        assert b["verdicts"] == len(inside) and b["flag_rate"] == interval(flagged, len(inside))
        shares = {label: len([r for r in inside if r.label == label]) / len(inside) for label in LABELS}
        first = first or shares
        for label in LABELS:
            assert b["labels"].get(label, 0) == len([r for r in inside if r.label == label])
            assert b["drift"][label] == pytest.approx(shares[label] - first[label], abs=1e-6)
        assert b["drift_total"] == pytest.approx(sum(abs(shares[n] - first[n]) for n in LABELS) / 2, abs=1e-6)
    assert harm["buckets"][0]["drift_total"] == 0
    if bucket == "week":
        assert len(starts) == 3 and all(date.fromisoformat(s).weekday() == 0 for s in starts)
    assert harm["flag_rate"] == interval(len([r for r in mine if r.flagged]), len(mine))


def test_the_false_positive_rate_comes_from_the_random_sample_of_confident_verdicts(figures_db):
    rows, ids, settled = naive(figures_db)
    (harm, _) = stats(Store.open(figures_db), sample_rate=RATE)
    negatives = fp = sample = agree = 0
    for row in rows:
        audit_id = ids[row.request_id]
        if row.policy != "harm" or audit_id not in settled or settled[audit_id] is None:
            continue
        if row.uncertain or not sampled(audit_id, RATE):
            continue
        sample += 1
        agree += settled[audit_id] == row.label
        if settled[audit_id] == "benign":
            negatives += 1
            fp += row.flagged
    assert negatives > 20 and fp > 0  # the data exercises it
    assert harm["sample_fpr"] == interval(fp, negatives)
    assert harm["sample_agreement"] == interval(agree, sample)
    # every settled review, the queue's uncertain verdicts included: the biased figure, kept apart
    everything = [(ids[r.request_id], r) for r in rows if r.policy == "harm" and settled.get(ids[r.request_id])]
    assert harm["agreement"] == interval(sum(settled[i] == r.label for i, r in everything), len(everything))


def test_csv_says_what_the_json_says(figures_db):
    rows = stats(Store.open(figures_db), bucket="day", sample_rate=RATE)
    lines = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert len(lines) == sum(len(row["buckets"]) for row in rows)
    for line, (row, b) in zip(lines, [(r, b) for r in rows for b in r["buckets"]]):
        assert (line["policy"], line["bucket"], line["start"]) == (row["policy"], "day", b["start"])
        assert int(line["verdicts"]) == b["verdicts"] and int(line["flagged"]) == b["flag_rate"]["k"]
        assert float(line["flag_rate_low"]) == b["flag_rate"]["low"]
        for label in LABELS:
            assert int(line[f"count:{label}"]) == b["labels"].get(label, 0)
    result = CliRunner().invoke(app, ["review", "stats", "--db", figures_db, "--csv", "--review-sample", str(RATE)])
    assert result.exit_code == 0 and result.stdout == to_csv(rows)
    result = CliRunner().invoke(app, ["review", "stats", "--db", figures_db, "--json", "--bucket", "week"])
    assert [json.loads(line)["bucket"] for line in result.stdout.splitlines()] == ["week", "week"]
    assert CliRunner().invoke(app, ["review", "stats", "--db", figures_db, "--json", "--csv"]).exit_code == 2


def test_bucket_of_hours_days_and_iso_weeks():
    assert bucket_of("2026-12-08T14", "hour") == "2026-12-08T14"
    assert bucket_of("2026-12-08T14", "day") == "2026-12-08"
    assert bucket_of("2026-12-08T14", "week") == "2026-12-07"  # a Tuesday: its week starts on Monday the 7th
    assert bucket_of("2026-12-07T00", "week") == "2026-12-07"
    assert bucket_of("2027-01-02T10", "week") == "2026-12-28"  # across the year's end
    with pytest.raises(ValueError):
        bucket_of("2026-12-08T14", "month")


def test_the_stats_page_draws_each_policy_and_escapes_names(figures_db):
    rows = stats(Store.open(figures_db), sample_rate=RATE)
    rows[1]["policy"] = "<script>alert(1)</script>"
    html = stats_page(rows, "n0nce")
    assert html.count("<script") == 1 and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count('<svg class="flag-rate"') == 2
    assert html.count("<rect") == sum(len(row["buckets"]) for row in rows)  # one bar per bucket
    assert 'href="/review/api/stats.csv?bucket=day"' in html
