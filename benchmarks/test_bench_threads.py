"""One shared Guard under threads, on the real SmolLM2-135M (CPU): how many checks per second 4
threads get with torch's default intra-op threads (one per core) against 1 thread per forward,
and one thread alone as the baseline. Group `threads`; ratios in BENCHMARKS.md.

Run: .venv/bin/python -m pytest benchmarks/test_bench_threads.py --benchmark-enable -q -p no:cacheprovider
"""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from benchmarks.texts import heldout_texts

CALLERS = 4
CHECKS = 40  # single checks, shared out among the callers


def _serve(guard, texts, callers):
    with ThreadPoolExecutor(callers) as pool:
        return list(pool.map(guard.check, texts))


@pytest.mark.parametrize(
    "callers,intra_op", [(1, None), (CALLERS, None), (CALLERS, 1)], ids=["1-caller", "4-callers", "4-callers-1-thread"]
)
def test_shared_guard(benchmark, guard, callers, intra_op):
    texts = (heldout_texts() * 2)[:CHECKS]
    default = torch.get_num_threads()
    torch.set_num_threads(intra_op or default)
    try:
        expected = [v.label for v in guard.check_batch(texts, batch_size=1)]
        benchmark.group = "threads"
        got = benchmark.pedantic(_serve, args=(guard, texts, callers), rounds=3, warmup_rounds=1)
        benchmark.extra_info.update(checks=CHECKS, callers=callers, intra_op_threads=torch.get_num_threads())
        assert [v.label for v in got] == expected  # same verdicts whatever the threading
    finally:
        torch.set_num_threads(default)
