"""The audit writer: a background thread that writes audit rows in batches (group commit).

Requests hand their rows to `write` and await the returned future before they answer, so a row
exists for every answered request even if the process is killed a moment later. The thread
writes whatever has accumulated in one transaction as soon as the previous one has committed:
under load many requests share one commit, and an idle server adds one small commit of latency.
Rows older than the retention period are pruned at start and then every `prune_every` seconds.

A failed commit fails each of its requests with an `AuditFailed` of its own that names the kind of
failure only: the database's own error text holds the statement's parameters, which are the rows
of every request in the commit, and must reach no response and no log line. A request that gave
up waiting cancels its future; rows whose future is cancelled before the commit starts are dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from datetime import datetime, timedelta, timezone

from guard.store.audit import AuditLog, AuditRecord

log = logging.getLogger("guard.serve")


class AuditFailed(Exception):
    """The rows of one request could not be written; `reason` is safe to log (no row data)."""

    def __init__(self, reason: str):
        super().__init__(f"the audit write failed ({reason})")
        self.reason = reason


def failure_reason(exc: BaseException) -> str:
    """The kind of a database failure, without its text: the exception's class and the driver's
    error code (SQLITE_BUSY, a PostgreSQL SQLSTATE) where it has one."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlite_errorname", None) or getattr(orig, "sqlstate", None)
    name = type(orig).__name__
    return f"{name} {code}" if code else name


class AuditWriter:
    def __init__(
        self,
        audit: AuditLog,
        *,
        max_rows: int = 1000,
        retention_days: float | None = None,
        prune_every: float = 3600.0,
        on_write=None,  # on_write(rows, seconds): for metrics
    ):
        self.audit = audit
        self.max_rows = max_rows
        self.retention_days = retention_days
        self.prune_every = prune_every
        self.on_write = on_write
        self._pending: list[tuple[list[AuditRecord], Future]] = []
        self._cond = threading.Condition()
        self._closing = False
        self._last_prune = float("-inf")
        self._thread = threading.Thread(target=self._run, name="guard-audit-writer", daemon=True)

    def start(self) -> AuditWriter:
        self._prune_if_due()
        self._thread.start()
        return self

    def write(self, records: list[AuditRecord]) -> Future:
        """Queue rows; the future completes once they are committed (or fails with the error)."""
        future: Future = Future()
        with self._cond:
            if self._closing:
                future.set_exception(RuntimeError("the audit log is closed"))
                return future
            self._pending.append((records, future))
            self._cond.notify()
        return future

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float | None = None) -> None:
        """Write everything queued, then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait(self._wait_time())
                    if not self._pending and not self._closing:
                        break  # woke up to prune
                batch = self._take()
                if not batch and self._closing:
                    return
            if batch:
                self._commit(batch)
            self._prune_if_due()

    def _wait_time(self) -> float | None:
        if self.retention_days is None:
            return None
        return max(0.0, self._last_prune + self.prune_every - time.monotonic())

    def _take(self) -> list[tuple[list[AuditRecord], Future]]:
        """Whole requests, up to about max_rows rows (at least one request)."""
        batch, rows = [], 0
        while self._pending and (not batch or rows + len(self._pending[0][0]) <= self.max_rows):
            records, future = self._pending.pop(0)
            if not future.set_running_or_notify_cancel():
                continue  # its request gave up (timeout): it was never answered, so no row
            batch.append((records, future))
            rows += len(records)
        return batch

    def _commit(self, batch: list[tuple[list[AuditRecord], Future]]) -> None:
        records = [r for rs, _ in batch for r in rs]
        started = time.perf_counter()
        try:
            self.audit.write(records)
        except Exception as exc:
            reason = failure_reason(exc)  # never str(exc): it holds every row of the commit
            log.error("audit commit failed", extra={"reason": reason, "rows": len(records), "requests": len(batch)})
            for _, future in batch:
                future.set_exception(AuditFailed(reason))  # one each: nothing shared between requests
            return
        if self.on_write is not None:
            self.on_write(len(records), time.perf_counter() - started)
        for _, future in batch:
            future.set_result(len(records))

    def _prune_if_due(self) -> None:
        if self.retention_days is None or time.monotonic() - self._last_prune < self.prune_every:
            return
        self._last_prune = time.monotonic()
        before = datetime.now(timezone.utc) - timedelta(days=self.retention_days)
        try:
            pruned = self.audit.prune(before)
        except Exception as exc:
            log.error("audit pruning failed", extra={"reason": failure_reason(exc)})
            return
        if pruned:
            log.info("audit rows pruned", extra={"rows": pruned, "before": before.isoformat()})
