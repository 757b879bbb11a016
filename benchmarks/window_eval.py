"""Never-fitted measurement of sentence windows (issues 20/23), after the window size was chosen
on the fit side (benchmarks/study_windows.py).

The policy is fitted as compile fits it; each item of `--eval` (the never-fitted sources) and
each attacked variant of each item of `--attack-set` is judged as `guard check` judges it, once
on the whole text (the shipped policy) and once with `window`/`stride` (guard.check.windows.
window_verdicts: flagged when the whole text or any window is). Whole texts' head outputs come
from the activation cache of `--db`; windows' are computed up to the policy's max_layer (the
check's own forward) and kept in a torch file.

Run:  .venv/bin/python -m benchmarks.window_eval --db /tmp/q.db --eval EVAL.jsonl --attack-set ATTACK.jsonl
      [--window 1 --stride 1] [--precompute] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks.study_windows import head_outputs
from guard.check.engine import Guard, PolicyHeads
from guard.check.windows import window_texts, window_verdicts
from guard.compiler import fit, render_exemplars
from guard.eval.attacks import attacks_for
from guard.eval.sources import share
from guard.method import sav
from guard.models import load_model
from guard.models.features import features
from guard.policy import load_policy
from guard.store.database import Store

EVAL_CACHE = Path(".benchmarks/windows-eval-acts.pt")


def read(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", default="policies/text-harm.yaml")
    ap.add_argument("--db", default="/tmp/q.db")
    ap.add_argument("--eval", required=True)
    ap.add_argument("--attack-set", required=True)
    ap.add_argument("--window", type=int, default=1)
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--precompute", action="store_true", help="only compute the windows' head outputs")
    ap.add_argument("--whole-only", default="", type=lambda v: set(filter(None, v.split(","))))
    ap.add_argument("--cached-only", action="store_true", help="judge sources with missing windows whole")
    ap.add_argument("--out")
    args = ap.parse_args()
    started = time.perf_counter()
    policy = load_policy(args.policy)
    loaded = load_model(policy.model, policy.base_dir, device="cpu")
    store = Store.open(args.db)
    acts = features(loaded, render_exemplars(policy, loaded), store=store, batch_size=16).z
    items = read(args.eval)
    attack_items = read(args.attack_set)
    attacks = attacks_for(policy.prompt)
    attacked = {a.name: [a.apply(r["text"]) for r in attack_items] for a in attacks}
    wholes = [r["text"] for r in items] + [r["text"] for r in attack_items] + [t for v in attacked.values() for t in v]
    # harmful sources in --whole-only are judged on whole texts only: windows can only add flags, so
    # their windowed recall is at least the figure reported (a lower bound, said so in the table)
    set_wholes = set(wholes)
    whole_only = {r["text"] for r in items if r["source"] in args.whole_only}
    # computed in this order (the cache is saved as it goes): the attacks' windows first, then the
    # eval sources from the fewest windows to the most
    sizes: dict = defaultdict(int)
    for r in items:
        sizes[r["source"]] += len(window_texts(r["text"], args.window, args.stride)) - 1
    ordered = [t for v in attacked.values() for t in v] + [
        r["text"] for r in sorted(items, key=lambda r: (sizes[r["source"]], r["source"]))
    ]
    windows = list(
        dict.fromkeys(
            w
            for t in ordered
            if t not in whole_only
            for w in window_texts(t, args.window, args.stride)[1:]
            if w not in set_wholes
        )
    )
    print(f"{len(wholes)} whole texts, {len(windows)} window texts", flush=True)
    if args.cached_only:  # sources whose windows are not all computed yet are judged whole (and said so)
        have = set(torch.load(EVAL_CACHE)) if EVAL_CACHE.exists() else set()
        missing = {w for w in windows if w not in have}
        partial = sorted(
            {
                r["source"]
                for r in items
                if r["text"] not in whole_only
                and any(w in missing for w in window_texts(r["text"], args.window, 1)[1:])
            }
        )
        print(f"windows not computed for: {', '.join(partial) or 'none'}", flush=True)
        whole_only |= {r["text"] for r in items if r["source"] in partial}
        windows = [w for w in windows if w not in missing]
        assert not any(w in missing for t in attacked.values() for x in t for w in window_texts(x, args.window, 1))
        args.whole_only |= set(partial)
    win_acts = head_outputs(loaded, policy, windows, store, policy.exemplars, acts, cache=EVAL_CACHE)
    if args.precompute:
        return
    depth = policy.max_layer + 1
    distinct = sorted(set(wholes))
    rendered = [loaded.prepare(policy.render({"text": t})) for t in distinct]
    found = features(loaded, rendered, store=store, batch_size=16, progress="whole texts")
    print(f"whole texts: {found.computed} forwards run, {found.cached} cached", flush=True)
    whole_index = {t: n for n, t in enumerate(distinct)}
    win_index = {t: n for n, t in enumerate(windows)}

    art = fit(policy, acts, loaded)
    judge = PolicyHeads(art)
    art_w = fit(policy, acts, loaded)
    art_w.metrics["method"] = {**art.method, "window": args.window, "stride": args.stride, "aggregate": "any"}
    judge_w = PolicyHeads(art_w)

    def verdicts(texts: list[str], windowed: bool):
        rows = found.z[[whole_index[t] for t in texts]][:, :depth]
        whole = (judge_w if windowed else judge).verdicts(sav.at_heads(rows, art.heads))
        if not windowed:
            return whole

        def run(pairs):
            got = [win_acts[win_index[t]] if t in win_index else found.z[whole_index[t], :depth] for _, t in pairs]
            return judge_w.verdicts(sav.at_heads(torch.stack(got), art.heads))

        out = window_verdicts(art_w, [None if t in whole_only else t for t in texts], whole, run)
        return out

    out: dict = {"window": args.window, "stride": args.stride, "whole_only": sorted(args.whole_only)}
    out.update(sources={}, attacks={})
    for mode, windowed in (("whole", False), ("windowed", True)):
        vs = verdicts([r["text"] for r in items], windowed)
        cells: dict = defaultdict(lambda: [0, 0])
        for r, v in zip(items, vs):
            cell = cells[(r["source"], r["label"])]
            cell[0] += int(v.flagged)
            cell[1] += 1
        for lab in ("harmful", "benign"):
            cells[("pooled", lab)] = [
                sum(c[0] for (s, lb), c in cells.items() if lb == lab and s != "pooled"),
                sum(c[1] for (s, lb), c in cells.items() if lb == lab and s != "pooled"),
            ]
        out["sources"][mode] = {
            f"{s}|{lab}": {"flagged": c[0], "n": c[1], "share": share(c[0], c[1])}
            for (s, lab), c in sorted(cells.items())
        }
        base = verdicts([r["text"] for r in attack_items], windowed)
        targets = [i for i, v in enumerate(base) if v.flagged]
        rows = {}
        for a in attacks:
            av = verdicts([attacked[a.name][i] for i in targets], windowed)
            rows[a.name] = [sum(not v.flagged for v in av), len(targets)]
        out["attacks"][mode] = rows
        print(mode, json.dumps(rows), flush=True)
    print(f"{'source|label':40s} {'whole':>16s} {'windowed':>16s}")
    for key, cell in out["sources"]["whole"].items():
        w = out["sources"]["windowed"][key]
        print(
            f"{key:40s} {cell['flagged']:>5d}/{cell['n']:<5d} {cell['flagged'] / cell['n']:6.1%}  "
            f"{w['flagged']:>5d}/{w['n']:<5d} {w['flagged'] / w['n']:6.1%}"
        )
    # check latency (Guard.check_batch, batch 16, the model's forward up to max_layer): single
    # sentences, where windows add nothing, and padded requests (three sentences: four forwards)
    samples = {
        "one sentence (maliciousinstruct)": [r["text"] for r in items if r["source"] == "maliciousinstruct"][:32],
        "padded request (three sentences)": attacked["padding"][:32],
    }
    out["latency_ms_per_text"] = {}
    for name, texts in samples.items():
        for mode, artifact in (("whole", art), ("windowed", art_w)):
            guard = Guard(artifact, loaded)
            guard.check_batch(texts[:4])  # warm-up
            t0 = time.perf_counter()
            guard.check_batch(texts, batch_size=16)
            ms = 1000 * (time.perf_counter() - t0) / len(texts)
            out["latency_ms_per_text"][f"{name}, {mode}"] = round(ms, 1)
            print(f"latency {name}, {mode}: {ms:.1f} ms per text", flush=True)
    out["seconds"] = round(time.perf_counter() - started, 1)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
