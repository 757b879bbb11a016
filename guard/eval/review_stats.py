"""`guard review stats` and `/review/stats`: per policy, how often it flags, how much of its traffic
was reviewed, and how the reviewers' decisions (guard.store.reviews.decide) agree with it: overall
agreement and the precision of its flags, with 95% Wilson intervals."""

from __future__ import annotations

import sqlalchemy as sa

from guard.eval.sources import share
from guard.store.database import Store
from guard.store.reviews import Reviews, decide
from guard.store.tables import AuditRow


def stats(store: Store, flagged_labels: dict[str, set[str]] | None = None) -> list[dict]:
    """Per policy: verdicts audited and flagged, inputs reviewed, and how the reviewers' decisions
    agree with the model: agreement overall, precision of its flags (flagged verdicts the reviewers
    kept flagged), each with a 95% Wilson interval; ties. `flagged_labels`: each policy's flagged
    labels (default: the labels its audited verdicts flagged)."""
    audit = AuditRow.__table__
    query = sa.select(
        audit.c.policy,
        sa.func.count().label("verdicts"),
        sa.func.sum(sa.case((audit.c.flagged, 1), else_=0)).label("flagged"),
        sa.func.count(sa.distinct(audit.c.input_sha256)).label("inputs"),
    ).group_by(audit.c.policy)
    flagged_query = sa.select(audit.c.policy, audit.c.label).where(audit.c.flagged).distinct()
    with store.engine.connect() as conn:
        counts = {row.policy: row for row in conn.execute(query)}
        seen_flagged: dict[str, set[str]] = {}
        for row in conn.execute(flagged_query):
            seen_flagged.setdefault(row.policy, set()).add(row.label)
    decisions = decide(Reviews(store).all())
    out = []
    for policy in sorted(set(counts) | {d.policy for d in decisions}):
        row = counts.get(policy)
        mine = [d for d in decisions if d.policy == policy]
        settled = [d for d in mine if d.label is not None]
        flags = (flagged_labels or {}).get(policy, seen_flagged.get(policy, set()))
        model_flagged = [d for d in settled if d.model_label in flags]
        out.append(
            {
                "policy": policy,
                "verdicts": row.verdicts if row else 0,
                "flag_rate": share(int(row.flagged or 0), row.verdicts) if row else None,
                "inputs": row.inputs if row else 0,
                "reviewed": share(len(mine), row.inputs) if row else None,
                "agreement": share(sum(d.label == d.model_label for d in settled), len(settled)),
                "flag_precision": share(sum(d.label in flags for d in model_flagged), len(model_flagged)),
                "ties": sum(d.label is None for d in mine),
            }
        )
    return out
