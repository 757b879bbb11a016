"""Batching by a token budget against guard 0.2's count cut: padded-token waste and texts/s, one run.

Run: .venv/bin/python -m benchmarks.batching [--items 300] [--policy policies/text-harm-0.2.yaml]
     [--db DB] [--rounds 3] [--device cpu]

The policy is compiled into a temporary database (or `--db`, compiled already) on its model
(SmolLM2-135M for guard's text-harm policies). `--items` texts of policies/text-harm/eval/*.jsonl
(every k-th line over all files, so every source and length range is in) are checked in scan
windows of 128 (guard scan's default: 8 batches of 16), in the same process, by:

- old: what 0.2 did per window: render and count each input (scanner.prepare), render it again
  (GuardSet.check_batch), count its tokens again to sort, cut 16 at a time, tokenise each batch;
- new: prepare each input once (guard.check.prepared) and cut forwards by the token budget
  (guard.models.batching), at the same row cap, and at a larger one (`--wide`).

Rounds alternate old and new, so machine load hits both alike; the median round is reported.
Waste is padded tokens / real tokens over the forwards of each plan. The verdicts of every path
must equal the old path's (labels, flags, scores rounded as the golden files round them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 128  # guard scan's default window at batch size 16


def sample_texts(n: int) -> list[str]:
    rows = []
    for path in sorted((ROOT / "policies/text-harm/eval").glob("*.jsonl")):
        rows += [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    step = max(1, len(rows) // n)
    return rows[::step][:n]


def old_window(guards, texts: list[str], batch_size: int):
    """guard 0.2's path for one window (one policy group): prepare, render again, count again, count cut."""
    from guard.check.engine import CheckResult
    from guard.models.features import features

    (template, escape), group = next(iter(guards.groups.items()))
    for text in texts:
        guards.prepare({"text": text})  # scanner.prepare: render, limit-check, count
    rendered = [guards.render(template, text, escape=escape) for text in texts]  # check_batch's render
    layers = sorted({layer for policy in group for layer in policy.layers})
    acts = features(guards.loaded, rendered, layers=layers, batch_size=batch_size).z  # counts, encodes
    policy = group[0]
    positions = [layers.index(layer) for layer, _ in policy.artifact.heads]
    heads = [head for _, head in policy.artifact.heads]
    return [CheckResult({policy.artifact.name: v}) for v in policy.verdicts(acts[:, positions, heads])]


def new_window(guards, texts: list[str], batch_size: int, budget: int):
    prepared = [guards.prepare({"text": text}) for text in texts]
    return guards.check_prepared(prepared, batch_size=batch_size, token_budget=budget)


def waste(lengths: list[int], batching) -> tuple[float, int]:
    """(padded / real tokens, forwards) of a plan over scan windows."""
    from guard.models.batching import padded_tokens

    padded = real = forwards = 0
    for start in range(0, len(lengths), WINDOW):
        window = lengths[start : start + WINDOW]
        plan = batching.plan(window)
        padded += padded_tokens(window, plan)
        real += sum(window)
        forwards += len(plan)
    return padded / real, forwards


def rounded(results) -> list:
    return [r.to_dict(votes=False) for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--policy", default="policies/text-harm-0.2.yaml")
    parser.add_argument("--db", default=None, help="a database with the policy compiled (skips compiling)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--budget", type=int, default=None, help="token budget [default: guard's TOKEN_BUDGET]")
    parser.add_argument("--wide", type=int, default=64, help="the larger row cap tried with the budget")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from guard.check.engine import GuardSet
    from guard.compiler import compile_policy
    from guard.models.batching import TOKEN_BUDGET, Batching

    budget = args.budget or TOKEN_BUDGET
    texts = sample_texts(args.items)
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db
        if db is None:
            db = str(Path(tmp) / "guard.db")
            started = time.perf_counter()
            compile_policy(ROOT / args.policy, db)
            print(f"compiled {args.policy} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        guards = GuardSet.load(db, device=args.device)
        lengths = [guards.prepare({"text": t}).tokens for t in texts]
        paths = {
            f"old: count cut, {args.batch_size} rows": lambda w: old_window(guards, w, args.batch_size),
            f"new: budget {budget}, {args.batch_size} rows": lambda w: new_window(guards, w, args.batch_size, budget),
            f"new: budget {budget}, {args.wide} rows": lambda w: new_window(guards, w, args.wide, budget),
        }
        plans = [Batching(args.batch_size, None), Batching(args.batch_size, budget), Batching(args.wide, budget)]
        windows = [texts[i : i + WINDOW] for i in range(0, len(texts), WINDOW)]
        for run in paths.values():  # warm-up: allocator, kernels
            run(windows[0][:16])
        seconds: dict[str, list[float]] = {name: [] for name in paths}
        outputs: dict[str, list] = {}
        for _ in range(args.rounds):
            for name, run in paths.items():
                started = time.perf_counter()
                results = [r for w in windows for r in run(w)]
                seconds[name].append(time.perf_counter() - started)
                outputs[name] = rounded(results)
    base = next(iter(paths))
    print(
        f"{len(texts)} texts, {sum(lengths):,} tokens (median {statistics.median(lengths):.0f}, "
        f"max {max(lengths)}), windows of {WINDOW}, {args.rounds} rounds, device {args.device}"
    )
    print("| path | forwards | padded / real tokens | texts/s (median round) | vs old | verdicts as old |")
    print("|---|---|---|---|---|---|")
    base_rate = len(texts) / statistics.median(seconds[base])
    for (name, times), plan in zip(seconds.items(), plans):
        ratio, forwards = waste(lengths, plan)
        rate = len(texts) / statistics.median(times)
        same = outputs[name] == outputs[base]
        print(f"| {name} | {forwards} | {ratio:.3f} | {rate:.1f} | {rate / base_rate:.2f}x | {same} |")


if __name__ == "__main__":
    main()
