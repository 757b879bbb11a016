"""The micro-batcher: one worker thread gathers queued items into batches for one model call each.

Callers (the event loop, any thread) `submit` items and get `concurrent.futures.Future`s back at
once; they never wait on the model. The worker gathers a batch (up to `max_batch`) and hands it to
`run_batch` in one call. While a batch runs, new items queue up.

How long to gather: until the queue holds as many items as the demand the last batch showed (its
own items, whose callers are about to send their next, plus those that queued while it ran), and
no longer after the model became free with an item waiting than `max_wait` or, if longer, a
quarter of the last batch's run time (`PATIENCE`): the callers just answered need a moment to send
again (responses out, requests in, tokenised), longer on a loaded machine, and waiting a quarter of
a forward to double the next one is a bargain wherever batching pays at all. Issue 21: with the
window counted from the oldest item's arrival alone, items that queued during a forward had used
their window up by its end, so a batch left at once with those few and the callers just answered
formed the next: at 16 closed-loop callers batches alternated around 9 and 7 (mean 9.1), far from
the 16 the library batches. With the demand as the target, a lone caller's item goes at once (no
wait at concurrency 1) and 16 callers' items go together.

The queue is bounded: `submit` refuses with `QueueFull` rather than building a backlog that no
caller will live to see answered. Items that are still gathering count towards the bound.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

log = logging.getLogger("guard.serve")

PATIENCE = 0.25  # of the last batch's run time: the longest wait for its callers to come back


class QueueFull(Exception):
    """The queue cannot take these items now; try again shortly."""


class BatcherStopped(Exception):
    """The batcher is shutting down and takes no new items."""


@dataclass
class _Pending:
    item: object
    future: Future
    enqueued: float  # time.monotonic()


# run_batch(items) -> one result per item, in order; an Exception in the list fails that item only
RunBatch = Callable[[list], Sequence[object]]
# on_batch(size, seconds): called after each batch, for metrics
OnBatch = Callable[[int, float], None]


class MicroBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        on_batch: OnBatch | None = None,
        on_start: Callable[[], None] | None = None,
        name: str = "guard-model-worker",
    ):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be at least 1, max_wait_ms at least 0")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.on_start = on_start
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._target = max_batch  # items the next batch waits for (within max_wait): the demand last seen
        self._free_since = float("-inf")  # time.monotonic() when the last batch ended
        self._last_run = 0.0  # seconds the last batch took
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # --- the callers' side -------------------------------------------------------------------

    def start(self) -> MicroBatcher:
        self._thread.start()
        return self

    def submit(self, items: Sequence) -> list[Future]:
        """Queue all of `items` (or none: raises QueueFull if they do not all fit)."""
        now = time.monotonic()
        pending = [_Pending(item, Future(), now) for item in items]
        with self._cond:
            if self._stopping:
                raise BatcherStopped("the server is shutting down")
            if len(self._queue) + len(pending) > self.max_queue:
                raise QueueFull(f"the queue holds {len(self._queue)} of {self.max_queue} items")
            self._queue.extend(pending)
            self._cond.notify()
        return [p.future for p in pending]

    @property
    def depth(self) -> int:
        """Items waiting, those being gathered included (not the batch that is running)."""
        return len(self._queue)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        """Take no new items, finish every queued one, and end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the worker --------------------------------------------------------------------------

    def _run(self) -> None:
        if self.on_start is not None:
            try:
                self.on_start()
            except Exception:  # a failed set-up must not leave callers waiting on a dead worker
                log.exception("the model worker's start-up failed; it runs with defaults")
        while True:
            batch = self._gather()
            if batch is None:
                return
            # a caller that gave up (timeout) cancelled its future: skip it
            live = [p for p in batch if p.future.set_running_or_notify_cancel()]
            started = time.perf_counter()
            if live:
                self._process(live)
                if self.on_batch is not None:
                    self.on_batch(len(live), time.perf_counter() - started)
            with self._cond:
                self._last_run = time.perf_counter() - started
                # the demand: this batch's callers come back, and those queued meanwhile are here
                self._target = max(1, min(self.max_batch, len(live) + len(self._queue)))
                self._free_since = time.monotonic()

    def _gather(self) -> list[_Pending] | None:
        """Wait for the first item, then for the batch to reach the target demand, at most
        max_wait (or PATIENCE of the last run) after the later of the first item's arrival and
        the end of the last batch."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            window = max(self.max_wait, PATIENCE * self._last_run)
            deadline = max(self._queue[0].enqueued, self._free_since) + window
            while len(self._queue) < self._target and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            count = min(self.max_batch, len(self._queue))
            return [self._queue.popleft() for _ in range(count)]

    def _process(self, batch: list[_Pending]) -> None:
        try:
            results = list(self.run_batch([p.item for p in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            # one bad item must not fail the others: run each alone
            for p in batch:
                self._process([p])
            return
        for p, result in zip(batch, results):
            if isinstance(result, BaseException):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)
