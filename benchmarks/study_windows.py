"""Study for issues 20/23: does checking sentence windows (flag when the whole text or any window
is flagged) stop the padding attack, and what does it cost in false positives?

Fit side only (the selection): leave-one-source-out over the policy's own exemplar files. Each
fold is fitted as compile fits it (guard.eval.sources.fit_fold); the held-out source's items are
judged whole and windowed, and every attack of guard.eval.attacks is applied to the held-out harmful
items (`--attack-cap` per file) and judged the same ways. Head outputs go through the activation
cache of `--db`, so a later `guard eval` with the same database reuses them.

Run:  .venv/bin/python -m benchmarks.study_windows [--db /tmp/q.db] [--configs 1:1,2:1] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from guard.check.engine import PolicyHeads
from guard.check.windows import window_texts
from guard.compiler import render_exemplars
from guard.eval.attacks import attacks_for
from guard.eval.sources import exemplar_groups, fit_fold, loso_folds
from guard.method import calibration, sav
from guard.models import load_model
from guard.models.features import features
from guard.policy import load_policy
from guard.store.database import Store

CACHE = Path(".benchmarks/windows-acts.pt")


def head_outputs(loaded, policy, texts, store, exemplars, acts, cache: Path = CACHE) -> torch.Tensor:
    """`[N, max_layer + 1, H, D]` for each text: exemplars' from the database's cache, the others
    computed up to max_layer only (the check's forward) and kept in a torch file."""
    depth = policy.max_layer + 1
    known = {ex.text: acts[i, :depth] for i, ex in enumerate(exemplars)}
    saved = torch.load(cache) if cache.exists() else {}
    todo = [t for t in texts if t not in known and t not in saved]
    if todo:
        rendered = [loaded.prepare(policy.render({"text": t})) for t in todo]
        step = 128
        for start in range(0, len(todo), step):
            part = features(loaded, rendered[start : start + step], layers=list(range(depth)), batch_size=16).z
            saved.update({t: part[j].clone() for j, t in enumerate(todo[start : start + step])})
            cache.parent.mkdir(exist_ok=True)
            torch.save(saved, cache)
            print(f"  {min(start + step, len(todo))}/{len(todo)} new texts", flush=True)
    return torch.stack([known[t] if t in known else saved[t] for t in texts])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", default="policies/text-harm.yaml")
    ap.add_argument("--db", default="/tmp/q.db")
    ap.add_argument("--configs", default="1:1,2:1", help="window:stride pairs (sentences)")
    ap.add_argument("--attack-cap", type=int, default=20, help="attacked harmful items per held-out file")
    ap.add_argument("--out")
    ap.add_argument(
        "--calibrate",
        action="store_true",
        help="fit each fold's calibration too (slow; without a target it changes no flag: the vote's sign decides)",
    )
    args = ap.parse_args()
    if not args.calibrate:
        calibration.can_calibrate = lambda *a, **k: False  # noqa: ARG005 (flags are the margin vote's sign either way)
    configs = [tuple(int(x) for x in c.split(":")) for c in args.configs.split(",")]
    started = time.perf_counter()

    policy = load_policy(args.policy)
    loaded = load_model(policy.model, policy.base_dir, device="cpu")
    store = Store.open(args.db)
    exemplars = policy.exemplars
    acts = features(loaded, render_exemplars(policy, loaded), store=store, batch_size=16).z
    groups = exemplar_groups(policy, "source")
    attacks = attacks_for(policy.prompt)

    # every text to judge: (exemplar index, variant) -> text; variant "plain" or an attack's name
    jobs: dict[tuple[int, str], str] = {}
    per_file: dict[str, int] = defaultdict(int)
    for i, ex in enumerate(exemplars):
        jobs[(i, "plain")] = ex.text
        if ex.label == "harmful" and per_file[groups[i]] < args.attack_cap:
            per_file[groups[i]] += 1
            for attack in attacks:
                jobs[(i, attack.name)] = attack.apply(ex.text)
    texts = sorted(
        {w for t in jobs.values() for (win, st) in configs for w in window_texts(t, win, st)} | set(jobs.values())
    )
    print(f"{len(jobs)} jobs, {len(texts)} distinct texts to judge", flush=True)
    heads_of = head_outputs(loaded, policy, texts, store, exemplars, acts)
    print(f"head outputs ready, {time.perf_counter() - started:.0f} s", flush=True)
    index = {t: n for n, t in enumerate(texts)}

    names = policy.label_names
    flag = {i for i, lab in enumerate(policy.labels) if lab.flagged}
    # result[mode][variant][group] = (flagged, n) ; mode "whole" or "w{window}s{stride}"
    result: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: [0, 0])))
    base_flagged: dict[tuple[int, str], bool] = {}
    for group, train, test in loso_folds(groups):
        art = fit_fold(policy, acts, train, loaded)
        judge = PolicyHeads(art)
        held = set(test)
        mine = [t for (i, v), t in jobs.items() if i in held]
        need = sorted(
            {index[w] for t in mine for (win, st) in configs for w in window_texts(t, win, st)}
            | {index[t] for t in mine}
        )
        verdicts = judge.verdicts(sav.at_heads(heads_of[need], art.heads))
        flagged_of = {texts[n]: names.index(v.label) in flag for n, v in zip(need, verdicts)}
        for (i, variant), t in jobs.items():
            if i not in held:
                continue
            label = exemplars[i].label
            modes = {"whole": flagged_of[t]}
            for win, st in configs:
                modes[f"w{win}s{st}"] = any(flagged_of[w] for w in window_texts(t, win, st))
            for mode, f in modes.items():
                cell = result[mode][variant][f"{group}|{label}"]
                cell[0] += int(f)
                cell[1] += 1
            base_flagged[(i, variant)] = modes
        print(f"fold {group} done, {time.perf_counter() - started:.0f} s", flush=True)

    # attack flips per mode: among attacked items flagged plain (in that mode), how many are not flagged attacked
    flips: dict = defaultdict(dict)
    for mode in result:
        for attack in attacks:
            targets = [i for (i, v) in jobs if v == attack.name and base_flagged[(i, "plain")][mode]]
            flipped = sum(not base_flagged[(i, attack.name)][mode] for i in targets)
            flips[mode][attack.name] = [flipped, len(targets)]
    summary = {
        "configs": args.configs,
        "rates": {m: {v: dict(g) for v, g in r.items()} for m, r in result.items()},
        "flips": flips,
        "seconds": round(time.perf_counter() - started, 1),
    }
    for mode in result:
        plain = result[mode]["plain"]
        harm = [plain[g] for g in plain if g.endswith("|harmful")]
        ben = [plain[g] for g in plain if g.endswith("|benign")]
        rec = sum(c[0] for c in harm) / sum(c[1] for c in harm)
        fpr = sum(c[0] for c in ben) / sum(c[1] for c in ben)
        mrec = sum(c[0] / c[1] for c in harm) / len(harm)
        mfpr = sum(c[0] / c[1] for c in ben) / len(ben)
        fl = " ".join(f"{a}={f}/{n}" for a, (f, n) in flips[mode].items())
        print(
            f"{mode}: pooled recall {rec:.1%} FPR {fpr:.1%}; mean over sources recall {mrec:.1%} FPR {mfpr:.1%}; flips {fl}"
        )
        worst = sorted(((c[0] / c[1], g, c) for g, c in plain.items() if g.endswith("|benign")), reverse=True)[:6]
        print("   highest FPR:", ", ".join(f"{g.split('|')[0]} {c[0]}/{c[1]}" for _, g, c in worst))
        low = sorted(((c[0] / c[1], g, c) for g, c in plain.items() if g.endswith("|harmful")))[:6]
        print("   lowest recall:", ", ".join(f"{g.split('|')[0]} {c[0]}/{c[1]}" for _, g, c in low))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(summary, fh, indent=1)


if __name__ == "__main__":
    main()
