"""The audit writer: a background thread that writes audit rows in batches (group commit).

Requests hand their rows to `write` and await the returned future before they answer, so a row
exists for every answered request even if the process is killed a moment later. The thread
writes whatever has accumulated in one transaction as soon as the previous one has committed:
under load many requests share one commit, and an idle server adds one small commit of latency.
Rows older than the retention period are pruned at start and then every `prune_every` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from datetime import datetime, timedelta, timezone

from guard.audit import AuditLog, AuditRecord

log = logging.getLogger("guard.serve")


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
            batch.append((records, future))
            rows += len(records)
        return batch

    def _commit(self, batch: list[tuple[list[AuditRecord], Future]]) -> None:
        records = [r for rs, _ in batch for r in rs]
        started = time.perf_counter()
        try:
            self.audit.write(records)
        except Exception as exc:
            log.error("audit write failed", extra={"error": str(exc), "rows": len(records)})
            for _, future in batch:
                future.set_exception(exc)
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
            log.error("audit pruning failed", extra={"error": str(exc)})
            return
        if pruned:
            log.info("audit rows pruned", extra={"rows": pruned, "before": before.isoformat()})
