"""Cold start: `guard check --text hello` in fresh processes against `python -c "import torch, transformers"`.

Each command runs N times, alternating, each in a new process (no state shared but the OS file
cache, warmed by one untimed run of each first); the report gives each command's median wall time
and its ratio to the import baseline measured in the same run (issue 21 asks for at most 1.3x).

    python -m benchmarks.cold_start --db guard.db -n 5
    python -m benchmarks.cold_start --db new.db --label before="/old/.venv/bin/guard" -n 5

`--label NAME=GUARD` adds another guard executable (another checkout's, for before/after figures)
checked on the same database (`--db-for NAME=DB` gives it its own, e.g. one an older schema reads).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BASELINE = [sys.executable, "-c", "import torch, transformers"]

# `--stages`: where a cold check's time goes past the baseline, one fresh process, transformers alone
STAGES = """
import time
t = [time.perf_counter()]
import torch, transformers
t.append(time.perf_counter())
import transformers.models.llama.modeling_llama  # what AutoModelForCausalLM imports for SmolLM2
t.append(time.perf_counter())
from guard.models.loading import cache_dir, fingerprint, resolve
directory = cache_dir() / "gguf" / fingerprint(resolve("smollm2-135m")).split(":")[-1][:32]
t.append(time.perf_counter())
model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
t.append(time.perf_counter())
tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
t.append(time.perf_counter())
with torch.inference_mode():
    model(**tokenizer(["hello"], return_tensors="pt"), use_cache=False)
t.append(time.perf_counter())
names = ["import torch, transformers", "import modeling_llama", "fingerprint", "weights", "tokenizer", "first forward"]
print(" | ".join(f"{n} {b - a:.2f} s" for n, a, b in zip(names, t, t[1:])))
"""


def timed(command: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the process and its children). CPU time moves
    much less than wall time when other work shares the cores."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):  # 1: flagged
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a database with the default policy compiled")
    parser.add_argument("-n", type=int, default=5, help="timed runs of each command")
    parser.add_argument("--label", action="append", default=[], help="NAME=GUARD: another guard executable")
    parser.add_argument("--db-for", action="append", default=[], help="NAME=DB: its own database")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--stages", action="store_true", help="also time a model load's stages, one process")
    args = parser.parse_args(argv)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    if args.stages:
        for _ in range(args.n):
            subprocess.run([sys.executable, "-c", STAGES], env=env, check=True, stderr=subprocess.DEVNULL)
    guard_here = str(Path(sys.executable).with_name("guard"))
    dbs = dict(item.split("=", 1) for item in args.db_for)
    commands = {"import torch, transformers": BASELINE}
    for name, executable in [("guard check", guard_here), *(item.split("=", 1) for item in args.label)]:
        commands[name] = [executable, "check", "--text", "hello", "--db", dbs.get(name, args.db)]
    for command in commands.values():  # warm the file cache
        timed(command, env)
    wall: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.n):
        for name, command in commands.items():
            w, c = timed(command, env)
            wall[name].append(w)
            cpu[name].append(c)
    base_wall = statistics.median(wall["import torch, transformers"])
    base_cpu = statistics.median(cpu["import torch, transformers"])
    rows = []
    for name in commands:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        rows.append({"command": name, "wall_s": w, "wall_ratio": w / base_wall, "cpu_s": c, "cpu_ratio": c / base_cpu})
    if args.json:
        print(json.dumps({"n": args.n, "rows": rows, "wall": wall, "cpu": cpu}, indent=1))
    else:
        print(f"| command | wall, median of {args.n} (s) | x baseline | CPU (s) | x baseline |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['command']} | {r['wall_s']:.2f} | {r['wall_ratio']:.2f} | {r['cpu_s']:.2f} | {r['cpu_ratio']:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
