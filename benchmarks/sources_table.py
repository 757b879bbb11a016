"""Markdown per-source table from `guard eval --json` outputs (BENCHMARKS.md, issue 20).

Each argument is `TITLE=FILE.json`; every method in each file becomes a column (`TITLE SAV`,
`TITLE embedding + LR`). A row is a group (source): its recall on harmful items and its
false-positive rate on benign items, with 95% Wilson intervals.

Run:  .venv/bin/python -m benchmarks.sources_table "0.3=new.json" "0.2=old.json"
"""

from __future__ import annotations

import json
import sys


def cell(rate: dict | None) -> str:
    if rate is None:
        return ""
    return f"{rate['value']:.0%} ({rate['k']}/{rate['n']}) [{rate['low']:.0%}-{rate['high']:.0%}]"


def columns(args: list[str]) -> list[tuple[str, dict]]:
    out = []
    for arg in args:
        title, path = arg.split("=", 1)
        by_group = json.loads(open(path).read())["by_group"]
        for method, name in by_group["methods"].items():
            rows = {g["group"]: g[method] for g in by_group["groups"]}
            rows["pooled"] = by_group["pooled"][method]
            out.append((f"{title} {name}", rows))
    return out


def table(cols: list[tuple[str, dict]]) -> str:
    groups = [g for g in cols[0][1] if g != "pooled"] + ["pooled"]
    head = "| source | measure | " + " | ".join(title for title, _ in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for group in groups:
        for measure in ("recall", "fpr"):
            cells = [cell(rows.get(group, {}).get(measure)) for _, rows in cols]
            if any(cells):
                lines.append(f"| {group} | {'recall' if measure == 'recall' else 'FPR'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(columns(sys.argv[1:])))
