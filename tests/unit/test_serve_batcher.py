"""The micro-batcher on its own (no HTTP, no model): gathering, bounds, failures, cancellation, stop."""

import threading
import time

import pytest

from guard.serve.batcher import BatcherStopped, MicroBatcher, QueueFull


class Recorder:
    """A run_batch that records each batch, optionally waiting on a gate before answering."""

    def __init__(self, gate: threading.Event | None = None):
        self.batches: list[list] = []
        self.gate = gate
        self.started = threading.Event()

    def __call__(self, items):
        self.batches.append(list(items))
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        return [item * 10 for item in items]


def test_concurrent_items_share_one_call_and_answer_in_order():
    run = Recorder()
    batcher = MicroBatcher(run, max_batch=8, max_wait_ms=500).start()
    try:
        futures = batcher.submit([1, 2, 3])
        assert [f.result(5) for f in futures] == [10, 20, 30]
        assert run.batches == [[1, 2, 3]]
    finally:
        batcher.stop()


def test_a_full_batch_goes_without_waiting_and_the_rest_follow():
    run = Recorder()
    # max_wait is long: only a full batch may leave before it
    batcher = MicroBatcher(run, max_batch=4, max_wait_ms=5000).start()
    try:
        started = time.monotonic()
        futures = batcher.submit(list(range(4)))
        assert [f.result(5) for f in futures] == [0, 10, 20, 30]
        assert time.monotonic() - started < 4  # did not wait out max_wait
        assert run.batches == [[0, 1, 2, 3]]
    finally:
        batcher.stop()


def test_max_wait_gathers_items_that_arrive_separately():
    run = Recorder()
    batcher = MicroBatcher(run, max_batch=16, max_wait_ms=400).start()
    try:
        first = batcher.submit([1])
        time.sleep(0.05)
        second = batcher.submit([2])
        assert first[0].result(5) == 10 and second[0].result(5) == 20
        assert run.batches == [[1, 2]]
    finally:
        batcher.stop()


def test_items_queue_up_while_a_batch_runs_and_go_together_next():
    gate = threading.Event()
    run = Recorder(gate)
    batcher = MicroBatcher(run, max_batch=16, max_wait_ms=0).start()
    try:
        first = batcher.submit([1])
        assert run.started.wait(5)
        later = [batcher.submit([n])[0] for n in (2, 3, 4)]
        assert batcher.depth == 3
        gate.set()
        assert [f.result(5) for f in first + later] == [10, 20, 30, 40]
        assert run.batches == [[1], [2, 3, 4]]
    finally:
        batcher.stop()


def test_a_full_queue_refuses_all_or_nothing():
    gate = threading.Event()
    run = Recorder(gate)
    batcher = MicroBatcher(run, max_batch=1, max_wait_ms=0, max_queue=3).start()
    try:
        running = batcher.submit([0])
        assert run.started.wait(5)  # the worker holds item 0; the queue is empty again
        queued = batcher.submit([1, 2])
        with pytest.raises(QueueFull):
            batcher.submit([3, 4])  # 2 + 2 > 3: none of them is queued
        assert batcher.depth == 2
        queued += batcher.submit([3])  # one more still fits
        with pytest.raises(QueueFull):
            batcher.submit([4])
        gate.set()
        assert [f.result(5) for f in running + queued] == [0, 10, 20, 30]
    finally:
        gate.set()
        batcher.stop()


def test_a_failing_item_fails_alone():
    def run(items):
        return [ValueError(f"bad {i}") if i < 0 else i + 1 for i in items]

    batcher = MicroBatcher(run, max_batch=8, max_wait_ms=200).start()
    try:
        futures = batcher.submit([1, -1, 2])
        assert futures[0].result(5) == 2 and futures[2].result(5) == 3
        with pytest.raises(ValueError, match="bad -1"):
            futures[1].result(5)
    finally:
        batcher.stop()


def test_a_batch_that_raises_is_retried_item_by_item():
    calls = []

    def run(items):
        calls.append(list(items))
        if any(i < 0 for i in items):
            raise ValueError("a negative item spoils the batch")
        return [i + 1 for i in items]

    batcher = MicroBatcher(run, max_batch=8, max_wait_ms=200).start()
    try:
        futures = batcher.submit([1, -1, 2])
        assert futures[0].result(5) == 2 and futures[2].result(5) == 3
        with pytest.raises(ValueError, match="spoils"):
            futures[1].result(5)
        assert calls == [[1, -1, 2], [1], [-1], [2]]
        assert batcher.submit([5])[0].result(5) == 6  # the worker lives on
    finally:
        batcher.stop()


def test_cancelled_items_are_skipped():
    gate = threading.Event()
    run = Recorder(gate)
    batcher = MicroBatcher(run, max_batch=8, max_wait_ms=0).start()
    try:
        first = batcher.submit([1])
        assert run.started.wait(5)
        doomed, kept = batcher.submit([2, 3])
        assert doomed.cancel()  # a caller that timed out
        gate.set()
        assert kept.result(5) == 30 and first[0].result(5) == 10
        assert run.batches == [[1], [3]]
    finally:
        batcher.stop()


def test_stop_finishes_queued_items_and_refuses_new_ones():
    gate = threading.Event()
    run = Recorder(gate)
    batcher = MicroBatcher(run, max_batch=1, max_wait_ms=0).start()
    futures = batcher.submit([1])
    assert run.started.wait(5)
    futures += batcher.submit([2, 3])
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()
    time.sleep(0.05)
    with pytest.raises(BatcherStopped):
        batcher.submit([4])
    gate.set()
    stopper.join(10)
    assert [f.result(0) for f in futures] == [10, 20, 30]
    assert not batcher.alive


def test_on_batch_reports_sizes():
    sizes = []
    batcher = MicroBatcher(lambda items: items, max_batch=8, max_wait_ms=300, on_batch=lambda n, s: sizes.append(n))
    batcher.start()
    try:
        for f in batcher.submit([1, 2, 3, 4, 5]):
            f.result(5)
    finally:
        batcher.stop()
    assert sizes == [5]


def test_the_next_batch_waits_for_the_last_ones_callers_not_the_oldest_items_window():
    """Issue 21: an item that queued while a batch ran had used up its window (counted from its
    arrival) by the batch's end, so it left alone and the callers just answered made the next batch.
    The window now opens when the model is free, and the batch waits for the demand the last batch
    showed: its 2 items' callers plus the 1 that queued meanwhile."""
    gate = threading.Event()
    run = Recorder(gate)
    batcher = MicroBatcher(run, max_batch=16, max_wait_ms=300).start()
    try:
        first = batcher.submit([1, 2])  # a fresh batcher waits out the window: batch [1, 2]
        assert run.started.wait(5)
        queued = batcher.submit([3])
        time.sleep(0.5)  # longer than max_wait: [3] would leave alone the moment the model is free
        gate.set()
        assert [f.result(5) for f in first] == [10, 20]
        returning = batcher.submit([4, 5])  # the answered callers send their next items
        assert [f.result(5) for f in queued + returning] == [30, 40, 50]
        assert run.batches == [[1, 2], [3, 4, 5]]
    finally:
        batcher.stop()


def test_a_lone_caller_does_not_wait_for_a_batch_to_fill():
    """Once the demand is one item (the last batch held one and nothing queued), the next item goes
    at once instead of waiting out max_wait: no added latency at concurrency 1."""
    run = Recorder()
    batcher = MicroBatcher(run, max_batch=16, max_wait_ms=3000).start()
    try:
        assert batcher.submit([1])[0].result(10) == 10  # a fresh batcher waits the window once
        started = time.monotonic()
        assert batcher.submit([2])[0].result(10) == 20
        assert time.monotonic() - started < 2.5  # not the 3 s window
        assert run.batches == [[1], [2]]
    finally:
        batcher.stop()


def test_a_slow_batch_earns_its_callers_a_longer_wait():
    """When the target is not there yet, the window is max_wait or a quarter of the last batch's
    run time, whichever is longer: after a 0.8 s batch, items 0.1 s apart still go together even
    with max_wait at 20 ms (a loaded machine's callers take that long to come back)."""
    gate = threading.Event()
    run = Recorder(gate)
    batcher = MicroBatcher(run, max_batch=4, max_wait_ms=20).start()
    try:
        first = batcher.submit([1, 2, 3, 4])  # full: goes at once, then runs 0.8 s
        assert run.started.wait(5)
        time.sleep(0.8)
        gate.set()
        assert [f.result(5) for f in first] == [10, 20, 30, 40]
        late = batcher.submit([5])
        time.sleep(0.1)  # longer than max_wait, shorter than 0.8 s / 4
        late += batcher.submit([6])
        assert [f.result(5) for f in late] == [50, 60]
        assert run.batches == [[1, 2, 3, 4], [5, 6]]
    finally:
        batcher.stop()
