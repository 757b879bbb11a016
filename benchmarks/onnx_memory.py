"""Peak memory of checking with one engine (torch or onnxruntime), measured in a fresh process.

Unlike benchmarks/memory.py (memory above an already-loaded model), this measures the whole
process: what a user pays to check N texts with each engine, loading included, because the point
of the ONNX engine is not to load the torch model. Reported: the process's peak resident set
(VmHWM), the resident set after loading, and the peak above it while checking.
Run as `python -m benchmarks.onnx_memory ENGINE DB_OR_EXPORT COUNT`.
"""

from __future__ import annotations

import json
import sys

from benchmarks.memory import run_fresh, status_kb


def measure(engine: str, where: str, count: int) -> dict:
    return run_fresh("benchmarks.onnx_memory", engine, where, count)


def _main(engine: str, where: str, count: int) -> None:
    import transformers

    from benchmarks.texts import heldout_texts

    transformers.logging.set_verbosity_error()
    if engine == "torch":
        from guard.check.engine import Guard

        checker = Guard.load(where, device="cpu")
    elif engine == "onnx":
        from guard.onnx.engine import OnnxGuard

        checker = OnnxGuard.load(where)
    else:
        raise SystemExit(f"unknown engine {engine}")
    checker.check("hello")  # warm-up: thread pools and kernels are not the checking's memory
    loaded_kb = status_kb("VmRSS")
    checker.check_batch(heldout_texts()[:count], batch_size=16)
    peak_kb = status_kb("VmHWM")
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
