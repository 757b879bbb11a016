"""The audit log: every verdict `guard serve --audit` gave, in the policy database.

A row records when, which request (id and input index), which policy version on which model,
a SHA-256 of the input (the text itself only if asked for), the label, flagged, the scores and
the latency. `guard audit` lists and exports rows; `prune` applies a retention period.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from guard.errors import GuardError
from guard.store import AuditRow, Store


@dataclass
class AuditRecord:
    created_at: str  # ISO 8601 UTC, microseconds (now_iso())
    request_id: str
    item: int
    endpoint: str
    policy: str
    policy_version: str
    model_fingerprint: str
    input_sha256: str
    label: str
    flagged: bool
    scores: dict
    latency_ms: float
    input_text: str | None = None
    api_key: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def input_digest(text: str | None, image_hashes: Sequence[str] = ()) -> str:
    """SHA-256 of an input: its text (UTF-8), then each image's content hash after a NUL."""
    digest = hashlib.sha256((text or "").encode())
    for image in image_hashes:
        digest.update(b"\0" + image.encode())
    return digest.hexdigest()


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """A point in time from `30m`, `12h`, `7d`, `2w` (ago) or an ISO date/time (UTC if no zone)."""
    now = now or datetime.now(timezone.utc)
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", value)
    if match:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match[2]]
        return now - timedelta(**{unit: int(match[1])})
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise GuardError(
            f"'{value}' is not a time: use 30m, 12h, 7d, 2w or an ISO date like 2026-11-28T12:00"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds")


class AuditLog:
    def __init__(self, store: Store):
        self.store = store

    def write(self, records: Iterable[AuditRecord]) -> int:
        """Insert records in one transaction; returns how many."""
        rows = [record.to_dict() for record in records]
        if rows:
            with self.store.engine.begin() as conn:
                conn.execute(sa.insert(AuditRow), rows)
        return len(rows)

    def query(
        self,
        since: datetime | None = None,
        policy: str | None = None,
        flagged: bool | None = None,
        limit: int | None = None,
    ) -> Iterator[AuditRecord]:
        """Rows oldest first (the newest `limit` if given), filtered."""
        table = AuditRow.__table__
        stmt = sa.select(table)
        if since is not None:
            stmt = stmt.where(table.c.created_at >= _iso(since))
        if policy is not None:
            stmt = stmt.where(table.c.policy == policy)
        if flagged is not None:
            stmt = stmt.where(table.c.flagged == flagged)
        if limit is not None:  # the newest `limit`, still printed oldest first
            newest = stmt.order_by(table.c.id.desc()).limit(limit).subquery()
            stmt = sa.select(newest)
        stmt = stmt.order_by("id")
        with self.store.engine.connect() as conn:
            for row in conn.execute(stmt).mappings():
                yield AuditRecord(**{k: v for k, v in row.items() if k != "id"})

    def count(self) -> int:
        with self.store.engine.connect() as conn:
            return conn.scalar(sa.select(sa.func.count()).select_from(AuditRow.__table__))

    def prune(self, before: datetime) -> int:
        """Delete rows older than `before`; returns how many went."""
        with self.store.engine.begin() as conn:
            result = conn.execute(sa.delete(AuditRow.__table__).where(AuditRow.__table__.c.created_at < _iso(before)))
        return result.rowcount
