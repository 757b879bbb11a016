"""Peak memory of checking with one engine (torch or onnxruntime), measured in a fresh process.

Unlike benchmarks/memory.py (memory above an already-loaded model), this measures the whole
process: what a user pays to check N texts with each engine, loading included, because the point
of the ONNX engine is not to load the torch model. Reported: the process's peak resident set
(VmHWM), the resident set after loading, and the peak above it while checking.
Run as `python -m benchmarks.onnx_memory ENGINE DB_OR_EXPORT COUNT`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _status_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def measure(engine: str, where: str, count: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.onnx_memory", engine, where, str(count)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"},  # see benchmarks/memory.py
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _main(engine: str, where: str, count: int) -> None:
    import transformers

    from benchmarks.texts import heldout_texts

    transformers.logging.set_verbosity_error()
    if engine == "torch":
        from guard.runtime import Guard

        checker = Guard.load(where, device="cpu")
    elif engine == "onnx":
        from guard.onnx_engine import OnnxGuard

        checker = OnnxGuard.load(where)
    else:
        raise SystemExit(f"unknown engine {engine}")
    checker.check("hello")  # warm-up: thread pools and kernels are not the checking's memory
    loaded_kb = _status_kb("VmRSS")
    checker.check_batch(heldout_texts()[:count], batch_size=16)
    peak_kb = _status_kb("VmHWM")
    print(
        json.dumps(
            {
                "engine": engine,
                "peak_mib": peak_kb / 1024,
                "loaded_mib": loaded_kb / 1024,
                "peak_above_loaded_mib": (peak_kb - loaded_kb) / 1024,
            }
        )
    )


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
