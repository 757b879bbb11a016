"""The audit log: every verdict `guard serve --audit` gave, in the policy database.

A row records when, which request (a server-made id, the caller's X-Request-ID in a column of
its own, and the input index), which policy version on which model, a keyed hash of the input
(the text itself only if asked for), the label, flagged, the scores and the latency. `guard
audit` lists and exports rows; `prune` applies a retention period.

The input hash and the API key id are HMAC-SHA256 under a secret (`AuditKey`) kept in a file
beside an SQLite database (`guard.db.audit-key`, created 0600 on first use) or where
`--audit-secret FILE` / `GUARD_AUDIT_SECRET_FILE` says (required for PostgreSQL): whoever reads
the log without the secret can neither confirm a guessed text nor a guessed key from it.
Rows written before schema revision 0005 hold a plain SHA-256.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

from guard.errors import GuardError
from guard.store.database import Store, sqlite_file
from guard.store.tables import AuditRow, ReviewRow

log = logging.getLogger("guard.audit")  # the logger name of 0.2: log configurations name it

SECRET_SUFFIX = ".audit-key"  # beside an SQLite database: guard.db.audit-key
SECRET_ENV = "GUARD_AUDIT_SECRET_FILE"


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
    client_request_id: str | None = None  # the caller's X-Request-ID, as sent (request_id is the server's)
    votes: dict | None = None  # each label's head votes (revision 0007; None before)
    uncertain: bool | None = None  # whether the verdict was uncertain (revision 0007; None before)
    nearest: list | None = None  # the nearest exemplars at the top heads (revision 0008; with --review only)

    def to_dict(self) -> dict:
        return asdict(self)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def input_digest(text: str | None, image_hashes: Sequence[str] = (), *, key: bytes) -> str:
    """HMAC-SHA256 (under the audit secret `key`) of an input: its text (UTF-8), then each
    image's content hash after a NUL. Without the key a guessed text cannot be confirmed."""
    digest = hmac.new(key, b"input\0" + (text or "").encode(), hashlib.sha256)
    for image in image_hashes:
        digest.update(b"\0" + image.encode())
    return digest.hexdigest()


class AuditKey:
    """The audit log's secret: keyed hashes of inputs and API keys."""

    def __init__(self, secret: bytes, path: Path | None = None):
        if len(secret) < 16:
            raise GuardError("the audit secret is too short (at least 16 bytes)")
        self.secret = secret
        self.path = path

    def input_digest(self, text: str | None, image_hashes: Sequence[str] = ()) -> str:
        return input_digest(text, image_hashes, key=self.secret)

    def key_id(self, key_digest: bytes) -> str:
        """A short id for an API key (given as its SHA-256): safe to store and log, and without
        the secret not to be matched against a guessed key."""
        return hmac.new(self.secret, b"api-key\0" + key_digest, hashlib.sha256).hexdigest()[:12]

    @classmethod
    def for_store(cls, store: Store, path: str | os.PathLike | None = None, env=os.environ) -> AuditKey:
        """The secret in `path` (else GUARD_AUDIT_SECRET_FILE, else beside an SQLite database),
        created with mode 0600 if it does not exist yet."""
        path = path or env.get(SECRET_ENV) or None
        if path is None:
            database = sqlite_file(str(store.engine.url))
            if database is None:
                raise GuardError(
                    "the audit log on this database needs a secret file for its keyed hashes: "
                    f"give --audit-secret FILE (or {SECRET_ENV}); it is created, mode 0600, if missing"
                )
            path = database.with_name(database.name + SECRET_SUFFIX)
        path = Path(path).expanduser()
        return cls(load_or_create_secret(path), path)


def load_or_create_secret(path: Path) -> bytes:
    """The 32-byte secret in `path` (64 hex digits), made and written 0600 if the file is missing.

    The file is written to a temporary name and linked into place, so two servers starting at
    once agree on one secret and neither reads a half-written file."""
    if not path.exists():
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
            with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
                os.link(temporary, path)
        except OSError as exc:
            raise GuardError(f"cannot create the audit secret '{path}' ({exc.strerror or exc})") from None
        finally:
            with contextlib.suppress(OSError):
                os.remove(temporary)
    try:
        text = path.read_text().strip()
        mode = path.stat().st_mode
    except OSError as exc:
        raise GuardError(f"cannot read the audit secret '{path}' ({exc.strerror or exc})") from None
    if not re.fullmatch(r"[0-9a-fA-F]{32,}", text):
        raise GuardError(f"the audit secret '{path}' is not a hex secret (64 hex digits, as guard writes it)")
    if mode & 0o077:
        log.warning("the audit secret is readable by others: chmod 600 it", extra={"path": str(path)})
    return bytes.fromhex(text[: len(text) // 2 * 2])


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
        """Delete rows older than `before`, and the copies of their texts that reviews keep
        (the reviews stay, counted, without the text); returns how many audit rows went."""
        audit, reviews = AuditRow.__table__, ReviewRow.__table__
        with self.store.engine.begin() as conn:
            result = conn.execute(sa.delete(audit).where(audit.c.created_at < _iso(before)))
            orphaned = reviews.c.audit_id.not_in(sa.select(audit.c.id).scalar_subquery())
            conn.execute(sa.update(reviews).where(orphaned, reviews.c.input_text.is_not(None)).values(input_text=None))
        return result.rowcount

    def erase(self, input_sha256: str) -> tuple[int, int]:
        """Erase one input's text (given by its hash, as `guard audit` shows it) from the audit
        rows and the reviews' copies, keeping the rows (counts and verdicts stay); returns how
        many (audit rows, reviews) held it."""
        audit, reviews = AuditRow.__table__, ReviewRow.__table__
        if not re.fullmatch(r"[0-9a-f]{64}", input_sha256):
            raise GuardError(f"'{input_sha256}' is not an input hash (64 hex digits, as 'guard audit --json' shows)")
        with self.store.engine.begin() as conn:
            rows = conn.execute(
                sa.update(audit)
                .where(audit.c.input_sha256 == input_sha256, audit.c.input_text.is_not(None))
                .values(input_text=None)
            ).rowcount
            copies = conn.execute(
                sa.update(reviews)
                .where(reviews.c.input_sha256 == input_sha256, reviews.c.input_text.is_not(None))
                .values(input_text=None)
            ).rowcount
        return rows, copies
