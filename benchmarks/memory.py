"""Peak memory of one procedure, measured in a fresh process.

Linux keeps a process's peak resident set (VmHWM); writing 5 to /proc/self/clear_refs resets it.
So: load the model, reset the peak, run the procedure, read the peak: the memory the procedure
needed on top of the loaded model. Run as `python -m benchmarks.memory PROCEDURE`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def status_kb(field: str) -> int:
    """A field of /proc/self/status (VmRSS, VmHWM...) in kB."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def run_fresh(module: str, *args) -> dict:
    """Run `python -m module ARGS...` in a fresh process; its last stdout line is a JSON result."""
    out = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        # A fixed mmap threshold makes glibc return big freed blocks at once, so the resident set
        # follows live memory instead of what the allocator keeps cached.
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(procedure: str, db: str, count: int) -> dict:
    """Run `procedure` in a subprocess; returns MiB above the loaded model's resident memory."""
    return run_fresh("benchmarks.memory", procedure, db, count)


def _main(procedure: str, db: str, count: int) -> None:
    import json as _json

    import transformers

    from benchmarks import procedures
    from benchmarks.texts import heldout_texts
    from guard.check.engine import Guard

    transformers.logging.set_verbosity_error()
    guard = Guard.load(db, device="cpu")
    loaded = guard.loaded
    model_mib = sum(p.numel() * p.element_size() for p in loaded.model.parameters()) / 2**20

    def run(texts: list[str]) -> None:
        rendered = [guard.render(t) for t in texts]
        if procedure == "reference_compile":
            procedures.reference_activations(loaded, rendered)
        elif procedure == "guard_compile":
            procedures.guard_activations(loaded, rendered, batch_size=8)
        elif procedure == "reference_check":
            procedures.reference_predict(loaded, guard.artifact, rendered)
        elif procedure == "guard_check":
            guard.check_batch(texts, batch_size=8)
        elif procedure == "plain_forward":
            procedures.plain_forward(loaded, rendered)
        else:
            raise SystemExit(f"unknown procedure {procedure}")

    # Warm up on one short input: library initialisation (thread pools, kernels) is not the
    # procedure's memory. Freed blocks go back to the OS (see MALLOC_MMAP_THRESHOLD_ above).
    run(["hello"])
    open("/proc/self/clear_refs", "w").write("5")
    before = status_kb("VmRSS")
    run(heldout_texts()[:count])
    peak = status_kb("VmHWM")
    print(_json.dumps({"procedure": procedure, "peak_extra_mib": (peak - before) / 1024, "model_mib": model_mib}))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
