"""Bad-input clients against normal traffic on `guard serve` (issue 18, point 2), loopback only.

Run: .venv/bin/python -m pytest benchmarks/test_bench_serve_bad_inputs.py -s -p no:cacheprovider
     (GUARD_BENCH_REQUESTS=N normal requests per phase, default 96; GUARD_BENCH_ROUNDS=R, default 4;
     GUARD_BENCH_BAD_INTERVAL=S seconds between one bad client's requests, default 0.25, 0 floods;
     GUARD_BENCH_DB=PATH a database holding the compiled default policy, to skip compiling it)

One `guard serve` on the real SmolLM2 default policy (--max-batch 32 --max-wait-ms 5), warmed up
by two phases of normal traffic. Each round runs two phases on it, one after the other (the order
alternates between rounds): the control (32 closed-loop connections posting held-out texts to
/v1/check, N requests in all) and the same with 4 more connections that post bad inputs for as
long as the normal traffic runs (a lone surrogate, "\\ud800", and a NUL, alternately), each at
most one every GUARD_BENCH_BAD_INTERVAL seconds: 16 a second in all, about the rate of the normal
traffic. Unpaced, each bad client sends as fast as its cheap 400s come back (over 100 a second on
2 cores): that is a flood, which slows everything by its own load. The issue measured p50 1.4 s
-> 2.7 s and 22 -> 12.5 req/s before bad inputs were refused ahead of the batches. Prints a
markdown table (normal traffic's requests/s, p50, p99; the bad requests sent and their statuses)
and writes .benchmarks/serve_bad_inputs.json. Not a test of a bound: the figures go to BENCHMARKS.md.
"""

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.test_bench_serve import percentile
from benchmarks.texts import heldout_texts
from tests.support.serve_helpers import ServeProcess

NORMAL = 32
BAD = 4
REQUESTS = int(os.environ.get("GUARD_BENCH_REQUESTS", "96"))
ROUNDS = int(os.environ.get("GUARD_BENCH_ROUNDS", "4"))
BAD_INTERVAL = float(os.environ.get("GUARD_BENCH_BAD_INTERVAL", "0.25"))
BAD_BODIES = [b'{"input": "tell me about \\ud800 this"}', b'{"input": "a NUL \\u0000 here"}']
OUT = Path(__file__).resolve().parent.parent / ".benchmarks"


async def phase(url: str, texts: list[str], bad_clients: int) -> dict:
    queue = list(range(REQUESTS))
    latencies, statuses, bad_statuses = [], Counter(), Counter()
    done = asyncio.Event()
    limits = httpx.Limits(max_connections=NORMAL + bad_clients, max_keepalive_connections=NORMAL + bad_clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def normal():
            while queue:
                i = queue.pop()
                started = time.perf_counter()
                response = await client.post("/v1/check", json={"input": texts[i % len(texts)]})
                latencies.append(time.perf_counter() - started)
                statuses[response.status_code] += 1

        async def bad(worker: int):
            i = worker
            while not done.is_set():
                sent = time.perf_counter()
                body = BAD_BODIES[i % len(BAD_BODIES)]
                response = await client.post("/v1/check", content=body, headers={"Content-Type": "application/json"})
                bad_statuses[response.status_code] += 1
                i += 1
                left = BAD_INTERVAL - (time.perf_counter() - sent)
                if left > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(done.wait(), left)

        started = time.perf_counter()
        bad_tasks = [asyncio.create_task(bad(w)) for w in range(bad_clients)]
        await asyncio.gather(*(normal() for _ in range(NORMAL)))
        seconds = time.perf_counter() - started
        done.set()
        await asyncio.gather(*bad_tasks)
    return {
        "bad_clients": bad_clients,
        "requests": REQUESTS,
        "requests_per_s": REQUESTS / seconds,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "statuses": dict(statuses),
        "bad_requests": sum(bad_statuses.values()),
        "bad_statuses": dict(bad_statuses),
    }


def test_bad_inputs_do_not_slow_normal_traffic(request, tmp_path):
    texts = heldout_texts()
    rows = []
    db = os.environ.get("GUARD_BENCH_DB") or request.getfixturevalue("compiled_db")
    args = ["--db", db, "--device", "cpu", "--max-batch", "32", "--max-wait-ms", "5"]
    with ServeProcess(args, tmp_path / "serve.log") as server:
        for _ in range(2):  # warm-up: the first phases after start run several times slower
            asyncio.run(phase(server.url, texts, 0))
        for round_ in range(ROUNDS):
            for bad_clients in (0, BAD) if round_ % 2 == 0 else (BAD, 0):  # no order favoured by a drift
                row = asyncio.run(phase(server.url, texts, bad_clients))
                rows.append({"round": round_ + 1, **row})
    OUT.mkdir(exist_ok=True)
    (OUT / "serve_bad_inputs.json").write_text(json.dumps({"bad_interval_s": BAD_INTERVAL, "rows": rows}, indent=1))
    print("\n| round | bad clients | normal requests/s | p50 ms | p99 ms | bad requests sent | bad statuses |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['round']} | {r['bad_clients']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.0f} | "
            f"{r['p99_ms']:.0f} | {r['bad_requests']} | {r['bad_statuses']} |"
        )
    ratios = []
    for round_ in range(1, ROUNDS + 1):
        control, bad = sorted((r for r in rows if r["round"] == round_), key=lambda r: r["bad_clients"])
        ratios.append(bad["p50_ms"] / control["p50_ms"])
        print(f"round {round_}: p50 with bad clients / control = {ratios[-1]:.2f}")
    print(f"median of the rounds: {sorted(ratios)[len(ratios) // 2]:.2f}")
    assert all(r["statuses"] == {200: REQUESTS} for r in rows), [r["statuses"] for r in rows]
