"""Persona frames on the fit side (issue 20's role-play gap): does fitting on
`fit/derived-persona.jsonl` (awesome-chatgpt-prompts' "I want you to act as ..." openings before
fit-side harmful requests and, as matched twins, benign ones; policies/data/CARD.md) help the
policy catch role-play frames it was never fitted on?

Two policies, identical but for one exemplar line: "without" (policies/text-harm.yaml less any
derived-persona line) and "with" (plus `{from: text-harm/fit/derived-persona.jsonl, shots: 40,
seed: 0}`). Selection is on the fit side only: leave-one-source-out over the fitted sources, with
the criterion fixed before the run (LOSO recall and FPR pooled over the 19 sources both runs hold
out no worse by more than one item per hundred, LOSO recall on the held-out derived-roleplay file
up). Then one measurement of each on
the never-fitted eval sources (policies/text-harm/eval/, all files concatenated), grouped by
source, with the embedding baseline on the same run.

Run:  .venv/bin/python -m benchmarks.study_persona --db /tmp/q2.db --eval /tmp/eval.jsonl [--out DIR]
      (cat policies/text-harm/eval/*.jsonl > /tmp/eval.jsonl first; the two LOSO runs and the two
      never-fitted runs are plain `guard eval` calls, printed before they run)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from benchmarks.sources_table import columns, table

ROOT = Path(__file__).resolve().parents[1]
PERSONA = "  - {from: text-harm/fit/derived-persona.jsonl, shots: 40, seed: 0}\n"
AFTER = "  - {from: text-harm/fit/derived-past.jsonl, shots: 40, seed: 0}\n"


def variants() -> dict[str, str]:
    shipped = (ROOT / "policies" / "text-harm.yaml").read_text(encoding="utf-8")
    without = shipped.replace(PERSONA, "")
    assert AFTER in without
    return {"without": without, "with": without.replace(AFTER, AFTER + PERSONA)}


def run(args: list[str], out: Path) -> None:
    print("$", " ".join(args), ">", out, file=sys.stderr)
    with open(out, "w") as f:
        subprocess.run(args, check=True, stdout=f, cwd=ROOT)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="/tmp/q2.db")
    ap.add_argument("--eval", required=True, help="every eval file concatenated")
    ap.add_argument("--out", default=".benchmarks/persona", type=Path)
    ap.add_argument("--skip-eval", action="store_true", help="fit-side selection only")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    guard = [str(ROOT / ".venv" / "bin" / "guard"), "eval"]
    written = []
    try:
        for name, text in variants().items():
            path = ROOT / "policies" / f".study-persona-{name}.yaml"  # beside text-harm/ for from:
            path.write_text(text, encoding="utf-8")
            written.append(path)
            run(
                [*guard, str(path), "--leave-one-source-out", "--db", args.db, "--json"], args.out / f"loso-{name}.json"
            )
        loso = [f"LOSO {n}={args.out / f'loso-{n}.json'}" for n in ("without", "with")]
        print(table(columns(loso)))
        if args.skip_eval:
            return
        for name, path in zip(("without", "with"), written):
            cmd = [*guard, str(path), args.eval, "--group-by", "source", "--db", args.db, "--baseline", "embed"]
            run([*cmd, "--json"], args.out / f"eval-{name}.json")
        never = [f"never-fitted {n}={args.out / f'eval-{n}.json'}" for n in ("without", "with")]
        print(table(columns(never)))
    finally:
        for path in written:
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
