"""How many reviewed corrections bring the default policy's false-positive rate on an over-flagged
public benign set under 10% without losing recall (issue 22; BENCHMARKS.md, "The review loop").

The benign set is CyberSecEval's false-refusal prompts (`policies/text-harm/eval/cyberseceval-frr.jsonl`,
never fitted; the shipped policy flags about a third of them). Its 200 prompts are split by index:
the even ones are the review pool, the odd ones the held-out test. A reviewer who works the pool
labels its items benign (correcting those the policy flags, confirming the rest); the first N
reviewed items become exemplars (`- from: reviews-N.jsonl`, as `guard review export` writes them,
each counted `weight` times by the fit) and `guard eval` fits the policy as compile does and
measures it on the held-out half plus two never-fitted harmful sets (MaliciousInstruct,
SimpleSafetyTests). N = 0 is the shipped policy; every weight in `--weights` is measured at every
point in the same run. The activation cache makes every point after the first cost one fit.

Run:  .venv/bin/python -m benchmarks.review_curve --db /tmp/curve.db [--points 0,10,25,50,100]
          [--benign derived-terse] [--weights 1,10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "policies/text-harm/eval"
HARMFUL = ("maliciousinstruct", "simplesafetytests")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def point(n: int, pool: list[dict], test: Path, db: str, folder: Path, benign: str, weight: float) -> dict:
    policy = yaml.safe_load((ROOT / "policies/text-harm.yaml").read_text())
    policy["data_root"] = str(ROOT / "policies")
    if n:
        reviews = folder / f"reviews-{n}-w{weight:g}.jsonl"
        lines = [{"text": r["text"], "label": "benign", "source": "reviews", "weight": weight} for r in pool[:n]]
        reviews.write_text("".join(json.dumps(line) + "\n" for line in lines))
        policy["exemplars"].append({"from": str(reviews)})
    path = folder / f"text-harm-{n}-w{weight:g}.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    command = [sys.executable, "-m", "guard.cli", "eval", str(path), str(test), "--db", db]
    command += ["--group-by", "source", "--device", "cpu", "--json"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    groups = {g["group"]: g["sav"] for g in json.loads(result.stdout)["by_group"]["groups"]}
    caught = sum(groups[name]["recall"]["k"] for name in HARMFUL)
    harmful = sum(groups[name]["recall"]["n"] for name in HARMFUL)
    return {"n": n, "fpr": groups[benign]["fpr"], "recall": {"k": caught, "n": harmful}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="database for the activation cache (reused between points)")
    parser.add_argument("--points", default="0,10,25,50,100")
    parser.add_argument("--benign", default="cyberseceval-frr", help="the benign source in policies/text-harm/eval/")
    parser.add_argument("--weights", default="1,10", help="the reviewed items' weights to compare")
    args = parser.parse_args()
    rows = [r for r in read(EVAL / f"{args.benign}.jsonl") if r["label"] == "benign"]
    for r in rows:
        r["source"] = args.benign
    pool, held = rows[0::2], rows[1::2]
    folder = Path(tempfile.mkdtemp(prefix="review-curve-"))
    test = folder / "test.jsonl"
    test.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in held + read(EVAL / "maliciousinstruct.jsonl") + read(EVAL / "simplesafetytests.jsonl")
        )
    )
    weights = [float(w) for w in args.weights.split(",")]
    header = "".join(f" FPR, weight {w:g} | recall, weight {w:g} |" for w in weights)
    print(f"FPR on the {len(held)} held-out {args.benign} items; recall on MaliciousInstruct + SimpleSafetyTests")
    print(f"| reviewed corrections |{header}")
    print("|---|" + "---|---|" * len(weights))
    for n in (int(p) for p in args.points.split(",")):
        cells = []
        for weight in weights if n else weights[:1]:  # no reviewed items: the weight changes nothing
            got = point(n, pool, test, args.db, folder, args.benign, weight)
            fpr, recall = got["fpr"], got["recall"]
            cells.append(f"{fpr['value']:.0%} ({fpr['k']}/{fpr['n']}) [{fpr['low']:.0%}-{fpr['high']:.0%}]")
            cells.append(f"{recall['k'] / recall['n']:.1%} ({recall['k']}/{recall['n']})")
        cells = cells * len(weights) if not n else cells
        print(f"| {n} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
