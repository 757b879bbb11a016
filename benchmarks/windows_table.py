"""Markdown tables from benchmarks/study_windows.py (`--study FILE`) and benchmarks/window_eval.py
(`--eval FILE`) JSON: per source, recall (harmful) or FPR (benign) with 95% Wilson intervals,
whole text against windows, and the attack flips."""

from __future__ import annotations

import argparse
import json

from guard.eval.metrics import wilson


def cell(k: int, n: int) -> str:
    low, high = wilson(k, n)
    return f"{k / n:.0%} ({k}/{n}) [{low:.0%}-{high:.0%}]"


def rows(pairs: dict[str, tuple[dict, dict]]) -> list[str]:
    out = ["| source | measure | whole text | windows |", "|---|---|---|---|"]
    for key, (a, b) in pairs.items():
        source, label = key.split("|")
        out.append(f"| {source} | {'recall' if label == 'harmful' else 'FPR'} | {cell(*a)} | {cell(*b)} |")
    return out


def flips(table: dict) -> list[str]:
    out = ["| attack | whole text: flipped / flagged | windows: flipped / flagged |", "|---|---|---|"]
    modes = list(table)
    for attack in table[modes[0]]:
        out.append("| " + attack + " | " + " | ".join(cell(*table[m][attack]) for m in modes) + " |")
    tot = [(sum(f for f, _ in table[m].values()), sum(n for _, n in table[m].values())) for m in modes]
    out.append("| all | " + " | ".join(f"{f / n:.1%}" for f, n in tot) + " |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--study")
    ap.add_argument("--eval")
    args = ap.parse_args()
    if args.study:
        s = json.load(open(args.study))
        whole, win = s["rates"]["whole"]["plain"], s["rates"]["w1s1"]["plain"]
        pairs = {g: (tuple(whole[g]), tuple(win[g])) for g in sorted(whole)}
        for lab in ("harmful", "benign"):
            a = [sum(whole[g][i] for g in whole if g.endswith(lab)) for i in (0, 1)]
            b = [sum(win[g][i] for g in win if g.endswith(lab)) for i in (0, 1)]
            pairs[f"pooled|{lab}"] = (tuple(a), tuple(b))
        print("\n".join(rows(pairs)) + "\n")
        print("\n".join(flips({"whole": s["flips"]["whole"], "windows": s["flips"]["w1s1"]})) + "\n")
    if args.eval:
        e = json.load(open(args.eval))
        whole, win = e["sources"]["whole"], e["sources"]["windowed"]
        pairs = {g: ((whole[g]["flagged"], whole[g]["n"]), (win[g]["flagged"], win[g]["n"])) for g in whole}
        print("\n".join(rows(pairs)) + "\n")
        print("\n".join(flips({"whole": e["attacks"]["whole"], "windows": e["attacks"]["windowed"]})))


if __name__ == "__main__":
    main()
