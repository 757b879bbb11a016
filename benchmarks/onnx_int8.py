"""int8 against float32 ONNX against torch: agreement and speed of `guard export --quantize int8`.

One run, one process, the same inputs for the three engines: the compiled default policy on the
real SmolLM2-135M (torch, float32), its float32 ONNX export and its int8 export (onnxruntime's
dynamic quantisation of the MatMul weights). Texts are a seeded sample of the default policy's
fit-side files (`policies/text-harm/fit/*.jsonl`; nothing held back is read).

- agreement with torch, on every sampled text: verdicts (label and flagged) equal, the largest gap
  in the calibrated probability of the flagged label, in vote shares, and in a head's similarity;
- speed, rounds interleaved so that load on the machine hits every engine alike: throughput
  (texts per second over the first THROUGHPUT texts in forwards of 16) and latency (one text at a
  time over the first LATENCY texts), reported as ratios against torch and float32 ONNX;
- the graph's size on disk.

Run: .venv/bin/python -m benchmarks.onnx_int8 --db guard.db [--texts 300] [--rounds 3] [--json out.json]
(`guard compile policies/text-harm.yaml --db guard.db` first.)
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from benchmarks.texts import ROOT

FIT = ROOT / "policies" / "text-harm" / "fit"


def fit_texts(count: int, seed: int = 0) -> list[str]:
    """`count` texts drawn with `seed` from every fit-side file of the default policy, file order fixed."""
    texts = []
    for path in sorted(FIT.glob("*.jsonl")):
        texts.extend(json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return random.Random(seed).sample(texts, count)


def agreement(got, expected, flagged: list[str]) -> dict:
    """How far one engine's verdicts are from the torch engine's, over the same texts."""
    same = sum((a.label, a.flagged) == (b.label, b.flagged) for a, b in zip(got, expected))
    prob = max(
        (abs(a.calibrated[n] - b.calibrated[n]) for a, b in zip(got, expected) if a.calibrated for n in flagged),
        default=0.0,
    )
    shares = max(abs(a.scores[n] - b.scores[n]) for a, b in zip(got, expected) for n in a.scores)
    sims = max(
        abs(x.similarity[n] - y.similarity[n])
        for a, b in zip(got, expected)
        for x, y in zip(a.votes, b.votes)
        for n in x.similarity
    )
    votes = sum(x.label != y.label for a, b in zip(got, expected) for x, y in zip(a.votes, b.votes))
    return {
        "texts": len(expected),
        "verdicts_equal": same,
        "agreement": same / len(expected),
        "head_votes_changed": votes,
        "max_calibrated_gap": prob,
        "max_vote_share_gap": shares,
        "max_similarity_gap": sims,
    }


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    # long: one benchmark run from loading to the printed table, in the order it happens
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="database holding the compiled text-harm policy")
    parser.add_argument("--policy", default="text-harm")
    parser.add_argument("--texts", type=int, default=300, help="texts for agreement")
    parser.add_argument("--throughput", type=int, default=64, help="texts per throughput round")
    parser.add_argument("--latency", type=int, default=8, help="texts per latency round (one at a time)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()

    import onnxruntime
    import torch
    import transformers

    from guard.check.engine import Guard
    from guard.onnx.engine import OnnxGuard
    from guard.onnx.export import export_onnx

    transformers.logging.set_verbosity_error()
    guard = Guard.load(args.db, args.policy, device="cpu", dtype="float32")
    folder = Path(tempfile.mkdtemp(prefix="guard-int8-"))
    exports = {w: export_onnx(guard.artifact, folder / w, loaded=guard.loaded, quantize=q) for w, q in
               (("float32", None), ("int8", "int8"))}  # fmt: skip
    engines = {"torch": guard, **{w: OnnxGuard.load(r.directory) for w, r in exports.items()}}
    texts = fit_texts(args.texts)
    flagged = [label.name for label in guard.artifact.labels if label.flagged]

    verdicts = {name: engine.check_batch(texts, batch_size=16) for name, engine in engines.items()}
    agree = {name: agreement(verdicts[name], verdicts["torch"], flagged) for name in ("float32", "int8")}
    agree["int8 vs float32"] = agreement(verdicts["int8"], verdicts["float32"], flagged)

    seconds = {name: {"throughput": [], "latency": []} for name in engines}
    batch, single = texts[: args.throughput], texts[: args.latency]
    for engine in engines.values():  # warm-up: thread pools, first-call allocations
        engine.check_batch(batch[:16], batch_size=16)
    for _ in range(args.rounds):
        for name, engine in engines.items():
            seconds[name]["throughput"].append(timed(lambda: engine.check_batch(batch, batch_size=16)))
            seconds[name]["latency"].append(timed(lambda: [engine.check(t) for t in single]))
    best = {name: {k: min(v) for k, v in s.items()} for name, s in seconds.items()}
    figures = {
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "threads": torch.get_num_threads(),
        "graph_bytes": {w: r.onnx_bytes for w, r in exports.items()},
        "agreement": agree,
        "texts_per_second": {n: len(batch) / b["throughput"] for n, b in best.items()},
        "latency_ms": {n: 1000 * b["latency"] / len(single) for n, b in best.items()},
        "seconds": seconds,
    }
    print_table(figures, args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


def print_table(figures: dict, args) -> None:
    rate, latency, size = figures["texts_per_second"], figures["latency_ms"], figures["graph_bytes"]
    print(f"\nagreement on {args.texts} fit-side texts (seed 0)\n")
    print(
        "| engine | verdicts equal to torch's | head votes changed | max gap P(flagged) | max gap vote share | max gap similarity |"
    )
    print("|---|---|---|---|---|---|")
    for name, a in figures["agreement"].items():
        print(
            f"| {name} | {a['verdicts_equal']}/{a['texts']} ({a['agreement']:.1%}) | {a['head_votes_changed']} "
            f"| {a['max_calibrated_gap']:.2e} | {a['max_vote_share_gap']:.3f} | {a['max_similarity_gap']:.2e} |"
        )
    print(f"\nspeed: best of {args.rounds} interleaved rounds; {figures['versions']}, {figures['threads']} threads\n")
    print(
        "| engine | graph MB | texts/s, forwards of 16 | vs torch | vs float32 ONNX | ms/text one at a time | vs torch | vs float32 ONNX |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in rate:
        mb = f"{size[name] / 1e6:.0f}" if name in size else "-"
        print(
            f"| {name} | {mb} | {rate[name]:.2f} | {rate[name] / rate['torch']:.2f}x | {rate[name] / rate['float32']:.2f}x "
            f"| {latency[name]:.1f} | {latency[name] / latency['torch']:.2f} | {latency[name] / latency['float32']:.2f} |"
        )


if __name__ == "__main__":
    main()
