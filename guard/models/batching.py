"""How prepared inputs are cut into forward passes: by a token budget, as text-embeddings-inference's queue does.

A forward over a right-padded batch computes `rows x longest row` tokens, real or not. The rule,
shared by `guard check`, `guard scan` and `guard serve` (torch and ONNX engines alike):

- sort the inputs by length, longest first (ties keep their order);
- cut a batch when one more input would take its padded tokens (rows x its first, longest,
  input's length) over `token_budget`, or its rows over `max_batch`;
- an input longer than the budget on its own runs alone;
- results go back in input order (the caller scatters them by the indices).

`token_budget=None` is the count cut guard used before 0.3 (`length_buckets`: sorted, then
`max_batch` at a time), kept for comparison (benchmarks/batching.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

TOKEN_BUDGET = 8192  # padded tokens per forward: one input at guard's token limit fits alone


@dataclass(frozen=True)
class Batching:
    """How many inputs go into one forward: at most `max_batch` rows and `token_budget` padded
    tokens (None: no token budget, the count cut alone)."""

    max_batch: int = 16
    token_budget: int | None = TOKEN_BUDGET

    def plan(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices into `lengths`, grouped into forwards (see the module docstring)."""
        if self.token_budget is None:
            return length_buckets(lengths, self.max_batch)
        return token_batches(lengths, self.token_budget, self.max_batch)


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of `batch_size` of similar length (less padding), longest first."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def token_batches(lengths: Sequence[int], token_budget: int, max_batch: int | None = None) -> list[list[int]]:
    """Indices grouped into batches, longest first, each within `token_budget` padded tokens
    (rows x longest) and `max_batch` rows; an input over the budget alone is a batch of one."""
    if token_budget < 1 or (max_batch is not None and max_batch < 1):
        raise ValueError("token_budget and max_batch must be at least 1")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        full = max_batch is not None and len(current) >= max_batch
        if current and (full or (len(current) + 1) * longest > token_budget):
            batches.append(current)
            current = []
        if not current:
            longest = max(lengths[i], 1)  # sorted longest first: the batch's first input sets its width
        current.append(i)
    if current:
        batches.append(current)
    return batches


def padded_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    """Tokens the forwards compute, padding included: sum of rows x longest row."""
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches if batch)
