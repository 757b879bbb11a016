"""Several processes on one database: compilers recompiling their own policies while checkers
check every policy, all at once. Used by tests/system/test_concurrency.py (a few rounds) and by
scripts/reliability.py (more, for docs/RELIABILITY.md).

Worker: `python -m tests.support.concurrency compile|check DB WORKDIR INDEX ROUNDS`, prints one JSON
line {"role", "operations", "errors": [...]}. A checker counts a torn read when a loaded policy
does not match what its compiler wrote for that version (exemplar count, heads, calibration).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHOTS = (4, 3, 2)  # exemplars per label of each round's compile: each round is a new version


def policy_texts(index: int, shots: int) -> dict[str, list[str]]:
    from tests.support.fixtures import TEXTS

    # each compiler's policy differs from the others' by one extra exemplar word
    return {label: [f"{t} {'x' * index}" for t in items[:shots]] for label, items in TEXTS.items()}


def write_round(workdir: Path, model: str, index: int, shots: int) -> Path:
    from tests.support.fixtures import write_policy

    folder = workdir / f"c{index}"
    folder.mkdir(parents=True, exist_ok=True)
    return write_policy(folder, model, policy_texts(index, shots), name=f"p{index}", heads=4)


def expected_versions(workdir: Path, model: str, compilers: int) -> dict[str, int]:
    """version hash -> exemplar count, for every policy version the compilers will write."""
    from guard.policy import load_policy

    found = {}
    for index in range(compilers):
        for shots in SHOTS:
            found[load_policy(write_round(workdir / "expect", model, index, shots)).version] = 2 * shots
    return found


def compiler(db: str, workdir: Path, model: str, index: int, rounds: int) -> dict:
    from guard.compiler import compile_policy
    from guard.models import load_model

    loaded = load_model(model, device="cpu")
    ops, errors = 0, []
    for r in range(rounds):
        try:
            compile_policy(write_round(workdir, model, index, SHOTS[r % len(SHOTS)]), db, loaded=loaded)
            ops += 1
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(f"{type(exc).__name__}: {exc}")
    return {"role": "compile", "operations": ops, "errors": errors}


def checker(db: str, workdir: Path, model: str, index: int, rounds: int) -> dict:
    from guard.check.engine import GuardSet
    from guard.models import load_model
    from guard.store.database import Store

    expected = json.loads((workdir / "expected.json").read_text())
    loaded = load_model(model, device="cpu")
    ops, errors, torn = 0, [], 0
    deadline = time.monotonic() + 300
    while ops < rounds and time.monotonic() < deadline:
        try:
            store = Store.open(db)
            names = store.policy_names()
            if not names:
                time.sleep(0.05)
                continue
            artifacts = [store.load_artifact(name) for name in names]
            for art in artifacts:
                problem = torn_read(art, expected.get(art.version))
                if problem:
                    torn += 1
                    errors.append(f"torn read of {art.name} revision {art.revision}: {problem}")
            results = GuardSet.with_model(artifacts, loaded).check_batch(["bake some bread", "hurt someone"])
            ops += len(results) * len(artifacts)
            store.engine.dispose()
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(f"{type(exc).__name__}: {exc}")
            ops += 1
    return {"role": "check", "operations": ops, "errors": errors, "torn_reads": torn}


def torn_read(art, exemplars: int | None) -> str:
    """Why a loaded policy is not exactly one version its compiler wrote ("" if it is)."""
    if exemplars is None:
        return f"version {art.version} was never compiled"
    if art.exemplar_vectors.shape[0] != exemplars or len(art.exemplar_texts) != exemplars:
        return f"{art.exemplar_vectors.shape[0]} exemplar vectors, {exemplars} written"
    if len(art.heads) != 4 or art.centroids.shape[1] != 4:
        return f"{len(art.heads)} heads, 4 written"
    if art.calibration is not None and len(art.calibration.shares) != exemplars:
        return f"calibration of {len(art.calibration.shares)} exemplars, {exemplars} written"
    return ""


def run(db: str, workdir: Path, model: str, compilers: int = 4, checkers: int = 8, rounds: int = 3) -> dict:
    """Start all workers at once; their summed figures."""
    from guard.store.database import Store

    Store.open(db, create=True).engine.dispose()  # as an operator would: the database exists first
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "expected.json").write_text(json.dumps(expected_versions(workdir, model, compilers)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["OMP_NUM_THREADS"] = "1"  # twelve processes on a couple of cores
    jobs = [("compile", i) for i in range(compilers)] + [("check", i) for i in range(checkers)]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.support.concurrency", role, db, str(workdir), model, str(i), str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for role, i in jobs
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            reports.append({"role": "crashed", "operations": 0, "errors": err.strip().splitlines()[-1:]})
        else:
            reports.append(json.loads(out.strip().splitlines()[-1]))
    return {
        "processes": len(procs),
        "compilers": compilers,
        "checkers": checkers,
        "compiles": sum(r["operations"] for r in reports if r["role"] == "compile"),
        "checks": sum(r["operations"] for r in reports if r["role"] == "check"),
        "errors": [e for r in reports for e in r["errors"]],
        "torn_reads": sum(r.get("torn_reads", 0) for r in reports),
        "seconds": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    role, db, workdir, model, index, rounds = sys.argv[1:7]
    worker = compiler if role == "compile" else checker
    print(json.dumps(worker(db, Path(workdir), model, int(index), int(rounds))))
