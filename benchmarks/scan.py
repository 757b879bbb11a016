"""Bulk scans: `guard scan` against `guard check -` (items/s), and peak memory against input size.

Run: .venv/bin/python -m benchmarks.scan [--items 2000] [--big 20000] [--skip-real]
Prints the tables recorded in BENCHMARKS.md. Every command runs in a fresh process; its peak
resident set (ru_maxrss from wait4) includes the model, so compare across input sizes.

- Throughput: the default policy (policies/text-harm.yaml) on SmolLM2-135M, `--items` texts
  (the held-out texts, cycled, each numbered so no two are equal), `guard check - --json` from a
  text file against `guard scan TEXTS.jsonl --out R.jsonl`; wall time includes loading the model.
- Memory: the scanner against the pre-streaming path (`GuardSet.check_batch` on every item at
  once, what `guard check -` did in 0.1) at `--items` and `--big` items, on the tiny random-weight
  model of tests/support/fixtures.py (a 20,000-item run of the real model does not fit in minutes on 2 CPU
  cores; the scanner's memory does not depend on the model).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUARD = str(Path(sys.executable).parent / "guard")

ALL_AT_ONCE = """
import json, sys
from guard.check.engine import GuardSet
guards = GuardSet.load(sys.argv[1], device="cpu")
texts = [json.loads(line)["text"] for line in open(sys.argv[2])]
results = guards.check_batch(texts, batch_size=int(sys.argv[3]))
print(sum(r[guards.names[0]].flagged for r in results))
"""


def run(cmd: list[str], stdin: str | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one command in a fresh process."""
    started = time.monotonic()
    with open(stdin or os.devnull, "rb") as source:
        proc = subprocess.Popen(cmd, stdin=source, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1, 2):
        raise SystemExit(f"{' '.join(cmd)} failed ({code}): {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def write_texts(directory: Path, texts: list[str], n: int) -> tuple[str, str]:
    """n numbered texts (cycled from `texts`) as a text file and as JSONL with ids."""
    lines = [f"{texts[i % len(texts)]} (#{i})" for i in range(n)]
    txt, jsonl = directory / f"texts-{n}.txt", directory / f"texts-{n}.jsonl"
    txt.write_text("".join(t + "\n" for t in lines))
    jsonl.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(lines)))
    return str(txt), str(jsonl)


def throughput(tmp: Path, db: str, texts: list[str], n: int, batch: int, label: str) -> None:
    txt, jsonl = write_texts(tmp, texts, n)
    common = ["--db", db, "--device", "cpu", "--batch-size", str(batch)]
    check_s, check_mib = run([GUARD, "check", "-", "--json", *common], stdin=txt)
    scan_s, scan_mib = run([GUARD, "scan", jsonl, "--out", str(tmp / f"t-{n}.jsonl"), "-q", "--overwrite", *common])
    say(f"\n### Throughput: {label}, {n} texts, batch {batch} (wall time includes loading the model)\n")
    say("| command | seconds | items/s | peak RSS MiB |\n|---|---|---|---|")
    say(f"| `guard check - --json` | {check_s:.1f} | {n / check_s:.1f} | {check_mib:.0f} |")
    say(f"| `guard scan --out .jsonl` | {scan_s:.1f} | {n / scan_s:.1f} | {scan_mib:.0f} |")
    say(f"\nscan / check - items/s: **{check_s / scan_s:.2f}x**")


def memory(tmp: Path, db: str, texts: list[str], sizes: list[int], baseline: list[int], batch: int) -> None:
    say(f"\n### Peak memory: tiny random-weight model, batch {batch}\n")
    say("| items | command | seconds | peak RSS MiB |\n|---|---|---|---|")
    for n in sorted(set(sizes) | set(baseline)):
        _, jsonl = write_texts(tmp, texts, n)
        if n in sizes:
            out = str(tmp / f"m-{n}.jsonl")
            seconds, mib = run([GUARD, "scan", jsonl, "--out", out, "-q", "--overwrite", "--db", db, "--device", "cpu",
                                "--batch-size", str(batch)])  # fmt: skip
            say(f"| {n:,} | `guard scan` | {seconds:.1f} | {mib:.0f} |")
        if n in baseline:
            seconds, mib = run([sys.executable, "-c", ALL_AT_ONCE, db, jsonl, str(batch)])
            say(f"| {n:,} | all at once (`check_batch`, 0.1 `check -`) | {seconds:.1f} | {mib:.0f} |")


def say(line: str) -> None:
    print(line, flush=True)


def tiny_db(tmp: Path) -> tuple[str, list[str]]:
    from tests.support.fixtures import TEXTS, make_text_model, write_policy

    model = make_text_model(tmp / "tiny-model")
    db = str(tmp / "tiny.db")
    subprocess.run(
        [GUARD, "compile", str(write_policy(tmp, model, TEXTS)), "--db", db], check=True, capture_output=True
    )
    return db, [t for texts in TEXTS.values() for t in texts]


def real_db(tmp: Path) -> tuple[str, list[str]]:
    from benchmarks.texts import POLICY, heldout_texts
    from guard.compiler import compile_policy

    db = str(tmp / "real.db")
    compile_policy(POLICY, db, device="cpu")
    return db, heldout_texts()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000, help="texts in the throughput runs")
    parser.add_argument("--memory", default="2000,20000", help="scan sizes in the memory table")
    parser.add_argument("--baseline", default="2000,20000", help="all-at-once sizes in the memory table")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--only", choices=["memory", "tiny", "real"], action="append", help="run only these parts")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parts = args.only or ["memory", "tiny", "real"]
    sizes = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        if "memory" in parts or "tiny" in parts:
            db, texts = tiny_db(tmp)
            if "memory" in parts:
                memory(tmp, db, texts, sizes(args.memory), sizes(args.baseline), args.batch_size)
            if "tiny" in parts:
                throughput(tmp, db, texts, args.items, args.batch_size, "tiny random-weight model")
        if "real" in parts:
            db, texts = real_db(tmp)
            throughput(tmp, db, texts, args.items, args.batch_size, "SmolLM2-135M, default policy")


if __name__ == "__main__":
    main()
