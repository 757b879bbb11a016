"""`guard serve` throughput against torch threads and --workers, beside the library's batching
ceiling measured in the same run, on the real SmolLM2 default policy; loopback only, bounded.

Run: .venv/bin/python -m benchmarks.serve_scale --db DB [--requests 96] [--concurrency 1 4 16 64]
     [--server "threads=1" --server "threads=2" --server "workers=2,threads=1" ...]

DB holds the default policy compiled (`guard compile policies/text-harm.yaml --db DB`). Each
--server is one `guard serve` process (KEY=VALUE pairs become --KEY VALUE; `default` adds
nothing), started, awaited until /readyz says ready, warmed by 8 requests, then driven at each
concurrency by the closed-loop client of benchmarks/test_bench_serve.py (single texts posted to
/v1/check). Every answer must be 200 with the library's label for its text.

Before each server (and the ceiling again before each level) the same process measures, with
that server's torch threads, the library on the same texts: one text per forward (`Guard.check`) and the ceiling of batching, chunks of 16
texts (what 16 concurrent callers can hand over at once) checked with check_batch in forwards of
8 and of 16, the faster kept. Prints a markdown table of requests/s with each as a ratio of
those two, and writes .benchmarks/serve_scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.test_bench_serve import batch_stats, closed_loop, fastest, percentile
from benchmarks.texts import heldout_texts
from tests.support.serve_helpers import ServeProcess

OUT = Path(__file__).resolve().parent.parent / ".benchmarks"


def library_rates(guard, texts: list[str], threads: int, passes: int = 2, single: bool = True) -> dict[str, float]:
    """Texts/s of the library in chunks of 16 (forwards of 8 or 16, the faster) and, with
    `single`, one at a time, at `threads` torch threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        chunks = [texts[i : i + 16] for i in range(0, len(texts), 16)]
        batched = min(
            fastest(lambda: [guard.check_batch(chunk, batch_size=size) for chunk in chunks], passes) for size in (8, 16)
        )
        rates = {"ceiling": len(texts) / batched}
        if single:
            rates["single"] = len(texts) / fastest(lambda: [guard.check(text) for text in texts], passes)
    finally:
        torch.set_num_threads(before)
    return rates


def server_args(spec: str) -> tuple[list[str], dict, dict]:
    """`guard serve` options, the spec's KEY=VALUE pairs, and the environment: `base=DIR` runs the
    guard package found in DIR (another checkout, e.g. `git archive main guard | tar -x -C DIR`)."""
    options = dict(pair.split("=", 1) for pair in spec.split(",") if "=" in pair)
    env = {"PYTHONPATH": options.pop("base")} if "base" in options else {}
    args = [item for key, value in options.items() for item in (f"--{key}", value)]
    return args, options, env


def wait_ready(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{url}/readyz", timeout=30).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the server never became ready")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--server", action="append", default=None)
    parser.add_argument("--library-texts", type=int, default=64)
    parser.add_argument("--passes", type=int, default=2, help="library passes (the fastest is kept)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server under test too
    servers = args.server or ["threads=1", "threads=2", "workers=2,threads=1", "max-batch=1,threads=1"]

    from guard.check.engine import Guard

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    guard = Guard.load(args.db, device="cpu")
    texts = heldout_texts()[: max(args.requests, args.library_texts)]
    expected = [guard.check(text).label for text in texts]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in servers:
            extra, options, env = server_args(spec)
            threads = int(options.get("threads", os.cpu_count()))
            library = library_rates(guard, texts[: args.library_texts], threads, args.passes)
            print(
                f"{spec}: library {library['single']:.1f} texts/s single, {library['ceiling']:.1f} batched", flush=True
            )
            log = Path(tmp) / f"{len(rows)}.log"
            with ServeProcess(["--db", args.db, "--device", "cpu", *extra], log, env=env, timeout=600) as server:
                wait_ready(server.url)
                asyncio.run(closed_loop(server.url, texts, 4, 8))
                for concurrency in args.concurrency:
                    # the ceiling again just before this level: the machine's speed drifts
                    ceiling = library_rates(guard, texts[: args.library_texts], threads, 1, single=False)["ceiling"]
                    before = batch_stats(server.url)
                    seconds, latencies, answers = asyncio.run(
                        closed_loop(server.url, texts, concurrency, args.requests)
                    )
                    after = batch_stats(server.url)  # one worker's, with --workers
                    bad = [r for r in answers.values() if r.status_code != 200]
                    assert not bad, bad[0].text
                    wrong = [
                        i
                        for i, r in answers.items()
                        if r.json()["results"][0]["verdicts"]["text-harm"]["label"] != expected[i % len(texts)]
                    ]
                    workers = Counter(r.headers.get("x-guard-worker", "0") for r in answers.values())
                    rate = args.requests / seconds
                    rows.append(
                        {
                            "server": spec,
                            "concurrency": concurrency,
                            "requests_per_s": rate,
                            "p50_ms": percentile(latencies, 0.5) * 1000,
                            "p99_ms": percentile(latencies, 0.99) * 1000,
                            "vs_library_single": rate / library["single"],
                            "vs_library_ceiling": rate / library["ceiling"],
                            "ceiling_this_level": ceiling,
                            "vs_ceiling_this_level": rate / ceiling,
                            "library": library,
                            "workers_answering": dict(workers),
                            "mean_batch": (after[0] - before[0]) / max(1.0, after[1] - before[1]),
                            "wrong_labels": len(wrong),
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "serve_scale.json").write_text(json.dumps(rows, indent=1))
    print(
        "\n| server | concurrency | requests/s | vs library single | vs ceiling (level's) | mean batch | p50 ms | p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['server']} | {r['concurrency']} | {r['requests_per_s']:.1f} | {r['vs_library_single']:.2f}x | "
            f"{r['vs_ceiling_this_level']:.2f}x | {r['mean_batch']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} |"
        )


if __name__ == "__main__":
    main()
