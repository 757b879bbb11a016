"""`guard serve` throughput by engine: torch, float32 ONNX and int8 ONNX, one after another in one run.

The load is benchmarks/test_bench_serve.py's (closed-loop clients posting single texts to
`/v1/check`, loopback, micro-batching `--max-batch 32 --max-wait-ms 5`), on the default policy
compiled in `--db`, with texts drawn from its fit-side files (benchmarks/onnx_int8.py). Every
response must be 200; each verdict is compared with the torch library's, single-threaded: torch and
float32 ONNX must give the same verdicts (asserted), int8's agreement is counted.

Run: .venv/bin/python -m benchmarks.serve_engines --db guard.db [--requests 32] [--concurrency 1 4 16 64]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from benchmarks.onnx_int8 import fit_texts
from benchmarks.test_bench_serve import batch_stats, closed_loop, percentile, same_verdict
from tests.support.serve_helpers import ServeProcess

MICRO_BATCHING = ["--max-batch", "32", "--max-wait-ms", "5", "--timeout", "300"]  # a loaded 2-core machine: no 504s


def main() -> None:
    # long: one run from the exports to the printed table, in the order it happens
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--texts", type=int, default=64)
    args = parser.parse_args()

    import transformers

    from guard.check.engine import Guard
    from guard.onnx.export import export_onnx

    transformers.logging.set_verbosity_error()
    guard = Guard.load(args.db, device="cpu", dtype="float32")
    folder = Path(tempfile.mkdtemp(prefix="guard-serve-engines-"))
    for weights, quantize in (("float32", None), ("int8", "int8")):
        export_onnx(guard.artifact, folder / weights, loaded=guard.loaded, quantize=quantize)
    texts = fit_texts(args.texts)
    expected = [guard.check(text).to_dict() for text in texts]
    del guard  # the servers get the cores
    engines = {
        "torch": [],
        "onnx float32": ["--engine", "onnx", "--onnx", str(folder / "float32")],
        "onnx int8": ["--engine", "onnx", "--onnx", str(folder / "int8")],
    }
    rows = []
    for engine, extra in engines.items():
        with ServeProcess(["--db", args.db, *MICRO_BATCHING, *extra], folder / f"{engine}.log") as server:
            asyncio.run(closed_loop(server.url, texts, 4, 8))  # warm-up
            for concurrency in args.concurrency:
                before = batch_stats(server.url)
                seconds, latencies, answers = asyncio.run(closed_loop(server.url, texts, concurrency, args.requests))
                after = batch_stats(server.url)
                assert all(r.status_code == 200 for r in answers.values()), "a request failed"
                agree = sum(
                    same_verdict(r.json()["results"][0]["verdicts"]["text-harm"], expected[i % len(texts)])
                    for i, r in answers.items()
                )
                if engine != "onnx int8":
                    assert agree == len(answers), f"{engine}: {len(answers) - agree} verdicts differ from torch's"
                rows.append(
                    {
                        "engine": engine,
                        "concurrency": concurrency,
                        "requests_per_s": args.requests / seconds,
                        "p50_ms": percentile(latencies, 0.5) * 1000,
                        "p99_ms": percentile(latencies, 0.99) * 1000,
                        "mean_batch": (after[0] - before[0]) / max(1.0, after[1] - before[1]),
                        "agree": f"{agree}/{len(answers)}",
                    }
                )
    base = {r["concurrency"]: r["requests_per_s"] for r in rows if r["engine"] == "torch"}
    print(
        "\n| engine | concurrency | requests/s | vs torch | p50 ms | p99 ms | mean batch | verdicts = torch library |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['engine']} | {r['concurrency']} | {r['requests_per_s']:.2f} | "
            f"{r['requests_per_s'] / base[r['concurrency']]:.2f}x | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
            f"{r['mean_batch']:.1f} | {r['agree']} |"
        )


if __name__ == "__main__":
    main()
