"""Load test of `guard serve` on the real SmolLM2 default policy, loopback only, bounded in count.

Run: .venv/bin/python -m pytest benchmarks/test_bench_serve.py -s -p no:cacheprovider
     (GUARD_BENCH_REQUESTS=N sets requests per level, default 96; GUARD_THREADS the worker's threads)

Three servers, one after another in the same run, each `guard serve` in its own process:
micro-batching (--max-batch 32 --max-wait-ms 5), one request per forward (--max-batch 1), and
micro-batching with --audit. At concurrency 1, 4, 16 and 64 a closed-loop client (each of C
workers sends its next request when the last is answered) posts single texts to /v1/check.
Every response must be 200 with the verdict the library gives that text alone, single-threaded.
Prints a markdown table (requests/s, p50, p99, mean batch size) and writes .benchmarks/serve.json.

Before the servers, the same run measures the library's own ceiling for batching: 64 texts as
batches of 16 against one at a time, in this process (fastest of 3 passes each). A server that
gathers requests into forwards cannot gain more over one-per-forward than the forward itself does.
"""

import asyncio
import json
import os
import re
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.texts import heldout_texts
from tests.support.serve_helpers import ServeProcess

CONCURRENCY = (1, 4, 16, 64)
REQUESTS = int(os.environ.get("GUARD_BENCH_REQUESTS", "96"))
MODES = {
    "micro-batching": ["--max-batch", "32", "--max-wait-ms", "5"],
    "one per forward": ["--max-batch", "1", "--max-wait-ms", "0"],
    "micro-batching + audit": ["--max-batch", "32", "--max-wait-ms", "5", "--audit"],
}
OUT = Path(__file__).resolve().parent.parent / ".benchmarks"


def batch_stats(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics").text
    total = float(re.search(r"^guard_batch_size_sum ([\d.e+]+)$", text, re.M)[1])
    count = float(re.search(r"^guard_batch_size_count ([\d.e+]+)$", text, re.M)[1])
    return total, count


async def closed_loop(url: str, texts: list[str], concurrency: int, count: int):
    """`count` requests from `concurrency` workers; returns (seconds, latencies, responses by index)."""
    queue = list(range(count))
    latencies, answers = [], {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker():
            while queue:
                i = queue.pop()
                started = time.perf_counter()
                response = await client.post("/v1/check", json={"input": texts[i % len(texts)]})
                latencies.append(time.perf_counter() - started)
                answers[i] = response

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, answers


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def same_verdict(served: dict, expected: dict) -> bool:
    """Same label, flag, votes and uncertain mark; calibrated scores within 1e-4 (a batched forward
    differs from a single one in the last float32 bits, which a margin vote's calibration shows)."""
    keys = ("label", "flagged", "scores", "uncertain")
    close = all(abs(served["calibrated"][n] - p) <= 1e-4 for n, p in expected["calibrated"].items())
    return (
        close
        and all(served[k] == expected[k] for k in keys)
        and [v["label"] for v in served["votes"]] == [v["label"] for v in expected["votes"]]
    )


def fastest(run, passes: int) -> float:
    """The shortest of `passes` timed runs of `run()`, in seconds."""
    times = []
    for _ in range(passes):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def library_ceiling(guard, texts: list[str], batch: int = 16, passes: int = 3) -> float:
    """Texts per second checked in batches of `batch` over texts per second one at a time."""
    one_at_a_time = fastest(lambda: [guard.check(text) for text in texts], passes)
    batched = fastest(lambda: guard.check_batch(texts, batch_size=batch), passes)
    return one_at_a_time / batched


def test_serve_load(compiled_db, guard, tmp_path):
    texts = heldout_texts()
    expected = [guard.check(text).to_dict() for text in texts]  # the library, single-threaded, one at a time
    ceiling = library_ceiling(guard, texts[:64])
    rows, mismatches = [], []
    for mode, args in MODES.items():
        with ServeProcess(["--db", compiled_db, "--device", "cpu", *args], tmp_path / f"{mode}.log") as server:
            asyncio.run(closed_loop(server.url, texts, 4, 8))  # warm-up
            for concurrency in CONCURRENCY:
                before = batch_stats(server.url)
                seconds, latencies, answers = asyncio.run(closed_loop(server.url, texts, concurrency, REQUESTS))
                after = batch_stats(server.url)
                errors = [r for r in answers.values() if r.status_code != 200]
                assert not errors, errors[0].text
                for i, response in answers.items():
                    served = response.json()["results"][0]["verdicts"]["text-harm"]
                    if not same_verdict(served, expected[i % len(texts)]):
                        mismatches.append((mode, i % len(texts)))
                rows.append(
                    {
                        "mode": mode,
                        "concurrency": concurrency,
                        "requests": REQUESTS,
                        "requests_per_s": REQUESTS / seconds,
                        "p50_ms": percentile(latencies, 0.5) * 1000,
                        "p99_ms": percentile(latencies, 0.99) * 1000,
                        "mean_batch": (after[0] - before[0]) / max(1.0, after[1] - before[1]),
                    }
                )
    OUT.mkdir(exist_ok=True)
    (OUT / "serve.json").write_text(json.dumps({"library_batch16_vs_single": ceiling, "rows": rows}, indent=1))
    print_table(rows)
    assert not mismatches, f"verdicts differing from the library's: {mismatches[:10]}"
    by = {(r["mode"], r["concurrency"]): r for r in rows}
    speedup = by["micro-batching", 16]["requests_per_s"] / by["one per forward", 16]["requests_per_s"]
    print(f"\nconcurrency 16: micro-batching / one per forward = {speedup:.2f}x requests/s")
    print(f"library ceiling, same run: batches of 16 / one at a time = {ceiling:.2f}x texts/s")


def print_table(rows: list[dict]) -> None:
    base = {r["concurrency"]: r["requests_per_s"] for r in rows if r["mode"] == "one per forward"}
    print("\n| mode | concurrency | requests/s | vs one per forward | p50 ms | p99 ms | mean batch |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["requests_per_s"] / base[r["concurrency"]]
        print(
            f"| {r['mode']} | {r['concurrency']} | {r['requests_per_s']:.1f} | {ratio:.2f}x | "
            f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['mean_batch']:.1f} |"
        )


if __name__ == "__main__":
    pytest.main([__file__, "-s", "-p", "no:cacheprovider"])
