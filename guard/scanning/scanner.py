"""The streaming scanner: items in, one record per item out, in order, with flat memory.

Items are taken a window at a time (`window` items, default 8 batches); within a window each
item is prepared once and the engine's `check_prepared` sorts them by length into forwards cut by
a token budget (guard.models.batching), so padding stays small while memory holds one window,
never the whole input. Each item gives one record:

    {"id": ..., "flagged": bool, "verdicts": {policy: verdict without votes}}
    {"id": ..., "error": "one-line reason"}

An item that cannot be checked (empty text, unreadable image, too long, a missing prompt field)
becomes an error record and the rest of its window goes on. `check_window` is the one per-window
function: the local scan, `guard check -` and the Ray actors all call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING

from guard.errors import GuardError
from guard.scanning.readers import ScanItem

if TYPE_CHECKING:
    from guard.check.prepared import Prepared
    from guard.check.protocol import Engine

WINDOW_BATCHES = 8  # default window: this many batches, length-bucketed together


def result_record(item_id, result, votes: bool = False, key: str = "id") -> dict:
    """The record of a checked item: its id, then the CheckResult's shape (flagged by any
    policy, each policy's verdict, with or without the per-head votes)."""
    return {key: item_id, **result.to_dict(votes=votes)}


def error_record(item_id, reason: str, key: str = "id") -> dict:
    return {key: item_id, "error": reason}


def check_items(guards: Engine, items: list[ScanItem], batch_size: int = 16, explain: bool = False) -> list:
    """Per item, a CheckResult (`{policy: Verdict}`) or the one-line reason it cannot be
    checked. Each item is prepared once (`guards.prepare`: rendered, limit-checked, tokenised),
    so a missing field or an empty text is caught per item, not for the whole window; the items
    that can be checked go through `check_prepared` together (forwards cut by a token budget).
    `guards` is any Engine (guard.check.protocol): a GuardSet, a Guard, an OnnxGuard."""
    outcomes: list = [""] * len(items)
    ready: list[tuple[int, Prepared]] = []
    for i, item in enumerate(items):
        if item.error is not None:
            outcomes[i] = item.error
            continue
        try:
            ready.append((i, guards.prepare(item.fields)))
        except GuardError as exc:
            outcomes[i] = str(exc)
    try:
        results = guards.check_prepared([p for _, p in ready], batch_size=batch_size, explain=explain)
    except GuardError:
        results = None  # something `prepare` did not foresee: check one at a time to find it
    for n, (i, prepared) in enumerate(ready):
        if results is not None:
            outcomes[i] = results[n]
            continue
        try:
            outcomes[i] = guards.check_prepared([prepared], batch_size=1, explain=explain)[0]
        except GuardError as exc:
            outcomes[i] = str(exc)
    return outcomes


def check_window(
    guards, items: list[ScanItem], batch_size: int = 16, votes: bool = False, key: str = "id", explain: bool = False
) -> list[dict]:
    """One record per item, in order: its verdicts (with each head's vote when `votes`, with the
    explanation, guard.check.explain's, when `explain`), or an error record."""
    return [
        error_record(item.id, outcome, key) if isinstance(outcome, str) else result_record(item.id, outcome, votes, key)
        for item, outcome in zip(items, check_items(guards, items, batch_size, explain=explain))
    ]


def as_items(items: Iterable) -> Iterator[ScanItem]:
    """Items from what a library caller has: Items, (id, text or fields) pairs, texts or
    field dicts (ids are then the position, from 1)."""
    for number, item in enumerate(items, start=1):
        if isinstance(item, ScanItem):
            yield item
        elif isinstance(item, tuple) and len(item) == 2:
            item_id, value = item
            yield ScanItem(item_id, dict(value) if isinstance(value, dict) else {"text": value})
        else:
            yield ScanItem(number, dict(item) if isinstance(item, dict) else {"text": item})


def windows(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def scan_windows(
    items: Iterable,
    guards,
    *,
    batch_size: int = 16,
    window: int | None = None,
    votes: bool = False,
    key: str = "id",
    explain: bool = False,
) -> Iterator[list[dict]]:
    """`scan`, a window's records at a time (writers flush after each)."""
    size = window or batch_size * WINDOW_BATCHES
    for chunk in windows(as_items(items), size):
        yield check_window(guards, chunk, batch_size, votes, key, explain)


def scan(
    items: Iterable, guards, *, batch_size: int = 16, window: int | None = None, votes: bool = False
) -> Iterator[dict]:
    """Check items as they come and yield one record per item, in order (see the module
    docstring). `guards` is an Engine (a GuardSet, a Guard, an OnnxGuard); `items` as `as_items` takes them. Memory
    holds one window of `window` items (default 8 batches)."""
    for records in scan_windows(items, guards, batch_size=batch_size, window=window, votes=votes):
        yield from records


@dataclass
class Summary:
    """Counts over a scan's records: items, checked, flagged (items, and per policy and label), errors."""

    items: int = 0
    checked: int = 0
    flagged: int = 0
    errors: int = 0
    labels: dict[str, dict[str, int]] = field(default_factory=dict)  # policy -> flagged label -> items

    def add(self, record: dict) -> None:
        self.items += 1
        if "error" in record:
            self.errors += 1
            return
        self.checked += 1
        self.flagged += bool(record["flagged"])
        for name, verdict in record["verdicts"].items():
            if verdict["flagged"]:
                per_label = self.labels.setdefault(name, {})
                per_label[verdict["label"]] = per_label.get(verdict["label"], 0) + 1

    def to_dict(self) -> dict:
        return {
            "items": self.items,
            "checked": self.checked,
            "flagged": self.flagged,
            "errors": self.errors,
            "flagged_labels": self.labels,
        }
