"""`guard review stats` and `/review/stats`: per policy, how often it flags (overall and per time
bucket), how much of its traffic was reviewed, how the reviewers' decisions (guard.store.reviews.decide)
agree with it (agreement, the precision of its flags), the false-positive rate of its confident
verdicts estimated from the queue's random sample, and label drift; with 95% Wilson intervals.

Only the random sample estimates an error rate without bias: the rest of the queue is chosen for
being uncertain (the verdicts most likely wrong), and reviewers pick and filter what they work on,
while the sample is chosen by a hash of the audit row's id, which knows nothing of the text or the
verdict (guard.store.reviews.sampled)."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta

import sqlalchemy as sa

from guard.eval.sources import share
from guard.store.database import Store
from guard.store.reviews import SAMPLE_RATE, Reviews, decide, is_uncertain, sampled
from guard.store.tables import AuditRow

BUCKETS = ("hour", "day", "week")


def bucket_of(hour: str, bucket: str) -> str:
    """The bucket an audit row's hour (`created_at[:13]`, "2026-12-08T14") falls in: the hour itself,
    its day ("2026-12-08"), or the Monday its ISO week starts on."""
    if bucket == "hour":
        return hour
    day = hour[:10]
    if bucket == "day":
        return day
    if bucket != "week":
        raise ValueError(f"unknown bucket {bucket!r} (use {', '.join(BUCKETS)})")
    start = date.fromisoformat(day)
    return (start - timedelta(days=start.weekday())).isoformat()


def stats(
    store: Store,
    flagged_labels: dict[str, set[str]] | None = None,
    *,
    bucket: str = "day",
    sample_rate: float = SAMPLE_RATE,
) -> list[dict]:
    """Per policy: verdicts audited and flagged, inputs reviewed, and how the reviewers' decisions
    agree with the model: agreement overall, precision of its flags (flagged verdicts the reviewers
    kept flagged), the false-positive rate of its confident verdicts on the random sample
    (`sample_rate`, the server's --review-sample), each with a 95% Wilson interval; ties; and per
    `bucket` of time its flag rate and label shares, with each bucket's drift from the first.
    `flagged_labels`: each policy's flagged labels (default: the labels its audited verdicts flagged)."""
    audit = AuditRow.__table__
    hour = sa.func.substr(audit.c.created_at, 1, 13)
    per_hour = sa.select(
        audit.c.policy,
        hour.label("hour"),
        audit.c.label,
        audit.c.flagged,
        sa.func.count().label("n"),
    ).group_by(audit.c.policy, hour, audit.c.label, audit.c.flagged)
    inputs_query = sa.select(audit.c.policy, sa.func.count(sa.distinct(audit.c.input_sha256)).label("inputs"))
    with store.engine.connect() as conn:
        hours = conn.execute(per_hour).all()
        inputs = {row.policy: row.inputs for row in conn.execute(inputs_query.group_by(audit.c.policy))}
    decisions, in_sample = _decisions_in_sample(store, sample_rate)
    out = []
    for policy in sorted({row.policy for row in hours} | {d.policy for d in decisions}):
        mine_hours = [row for row in hours if row.policy == policy]
        seen_flagged = {row.label for row in mine_hours if row.flagged}
        flags = (flagged_labels or {}).get(policy, seen_flagged)
        verdicts = sum(row.n for row in mine_hours)
        flagged = sum(row.n for row in mine_hours if row.flagged)
        mine = [d for d in decisions if d.policy == policy]
        settled = [d for d in mine if d.label is not None]
        model_flagged = [d for d in settled if d.model_label in flags]
        negatives = [d for d in settled if in_sample[id(d)] and d.label not in flags]  # truly not flagged
        sample = [d for d in settled if in_sample[id(d)]]
        out.append(
            {
                "policy": policy,
                "verdicts": verdicts,
                "flag_rate": share(flagged, verdicts),
                "inputs": inputs.get(policy, 0),
                "reviewed": share(len(mine), inputs[policy]) if policy in inputs else None,
                "agreement": share(sum(d.label == d.model_label for d in settled), len(settled)),
                "flag_precision": share(sum(d.label in flags for d in model_flagged), len(model_flagged)),
                "sample_agreement": share(sum(d.label == d.model_label for d in sample), len(sample)),
                "sample_fpr": share(sum(d.model_label in flags for d in negatives), len(negatives)),
                "sample_rate": sample_rate,
                "ties": sum(d.label is None for d in mine),
                "bucket": bucket,
                "buckets": _buckets(mine_hours, bucket),
            }
        )
    return out


def _decisions_in_sample(store: Store, sample_rate: float):
    """Every decision, and (by `id`) whether one of its reviews is about a confident verdict in the
    queue's random sample (its audit row still there: a pruned row's sample membership is unknown)."""
    reviews = Reviews(store).all()
    decisions = decide(reviews)
    audit = AuditRow.__table__
    ids = sorted({r.audit_id for r in reviews})
    confident_sampled = set()
    with store.engine.connect() as conn:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            stmt = sa.select(audit.c.id, audit.c.uncertain, audit.c.scores).where(audit.c.id.in_(chunk))
            for row in conn.execute(stmt):
                if not is_uncertain(row) and sampled(row.id, sample_rate):
                    confident_sampled.add(row.id)
    sample_keys = {(r.policy, r.input_sha256) for r in reviews if r.audit_id in confident_sampled}
    return decisions, {id(d): (d.policy, d.input_sha256) in sample_keys for d in decisions}


def _buckets(hours, bucket: str) -> list[dict]:
    """Per bucket, oldest first: verdicts, flag rate, label counts, and each label's share minus its
    share in the first bucket (`drift`), with half the sum of their sizes (`drift_total`, the total
    variation distance: 0 the same mix of labels, 1 none in common)."""
    grouped: dict[str, dict] = {}
    for row in hours:
        entry = grouped.setdefault(bucket_of(row.hour, bucket), {"verdicts": 0, "flagged": 0, "labels": {}})
        entry["verdicts"] += row.n
        entry["flagged"] += row.n if row.flagged else 0
        entry["labels"][row.label] = entry["labels"].get(row.label, 0) + row.n
    names = sorted({label for entry in grouped.values() for label in entry["labels"]})
    out, first = [], None
    for start in sorted(grouped):
        entry = grouped[start]
        shares = {name: entry["labels"].get(name, 0) / entry["verdicts"] for name in names}
        first = first or shares
        drift = {name: round(shares[name] - first[name], 6) for name in names}
        out.append(
            {
                "start": start,
                "verdicts": entry["verdicts"],
                "flag_rate": share(entry["flagged"], entry["verdicts"]),
                "labels": {name: entry["labels"].get(name, 0) for name in names},
                "drift": drift,
                "drift_total": round(sum(abs(d) for d in drift.values()) / 2, 6),
            }
        )
    return out


CSV_FIELDS = ["policy", "bucket", "start", "verdicts", "flagged", "flag_rate", "flag_rate_low", "flag_rate_high"]


def to_csv(rows: list[dict]) -> str:
    """One CSV line per policy and time bucket: the flag rate with its interval, then each label's
    count and drift from the first bucket (columns `count:LABEL`, `drift:LABEL`), and the total drift."""
    names = sorted({name for row in rows for b in row["buckets"] for name in b["labels"]})
    fields = CSV_FIELDS + [f"count:{n}" for n in names] + [f"drift:{n}" for n in names] + ["drift_total"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        for b in row["buckets"]:
            rate = b["flag_rate"]
            line = {"policy": row["policy"], "bucket": row["bucket"], "start": b["start"], "verdicts": b["verdicts"]}
            line.update(
                flagged=rate["k"], flag_rate=rate["value"], flag_rate_low=rate["low"], flag_rate_high=rate["high"]
            )
            line.update({f"count:{n}": b["labels"].get(n, 0) for n in names})
            line.update({f"drift:{n}": b["drift"].get(n, "") for n in names})
            line["drift_total"] = b["drift_total"]
            writer.writerow(line)
    return buffer.getvalue()
