"""kill -9 at a random point of `guard compile`: afterwards the database opens, passes SQLite's
integrity check, and every stored version is whole (the one before, or the new one, never half
of it). Used by tests/test_crash.py (a few trials) and scripts/reliability.py (50 and more)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.concurrency import ROOT, torn_read, write_round


def compile_command(db: str, policy: Path) -> list[str]:
    return [sys.executable, "-m", "guard.cli", "compile", str(policy), "--db", db]


def environment() -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def full_compile_seconds(db: str, policy: Path) -> float:
    started = time.perf_counter()
    subprocess.run(compile_command(db, policy), env=environment(), capture_output=True, check=True, cwd=ROOT)
    return time.perf_counter() - started


def consistent(db: str, expected: dict[str, int], fresh: bool) -> str:
    """ "" if the database after a kill is whole; else what is wrong."""
    from guard.errors import StoreError
    from guard.store import Store

    if fresh and not Path(db).exists():
        return ""
    if sqlite3.connect(db).execute("pragma integrity_check").fetchone()[0] != "ok":
        return "integrity check failed"
    try:
        store = Store.open(db, create=fresh)  # a fresh database killed mid-creation may hold no table yet
        versions = store.versions() if store.policy_names() else []
        for v in versions:
            problem = torn_read(store.load_artifact(f"{v['policy']}@{v['revision']}"), expected.get(v["version"]))
            if problem:
                return problem
        current = [v for v in versions if v["current"]]
        if versions and (len(current) != 1 or current[0]["revision"] != versions[0]["revision"]):
            return "the newest complete version is not the current one"
        store.engine.dispose()
    except StoreError as exc:
        return f"cannot open: {exc}"
    return ""


def trials(workdir: Path, model: str, count: int, seed: int = 0) -> list[dict]:
    """`count` kill -9 trials; every third on a new database, the others on one with versions."""
    from guard.policy import load_policy

    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    policies = [write_round(workdir, model, 0, shots) for shots in (4, 3)]
    expected = {load_policy(p).version: 2 * shots for p, shots in zip(policies, (4, 3))}
    shared = str(workdir / "shared.db")
    span = full_compile_seconds(shared, policies[0])
    results = []
    for trial in range(count):
        fresh = trial % 3 == 0
        db = str(workdir / f"fresh-{trial}.db") if fresh else shared
        if not fresh:  # make the model run again, so the kill can land in the forward passes too
            with sqlite3.connect(db) as con:
                con.execute("delete from activations")
        delay = rng.uniform(0, span)
        proc = subprocess.Popen(
            compile_command(db, policies[trial % 2]),
            env=environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        time.sleep(delay)
        finished = proc.poll() is not None
        if not finished:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        results.append(
            {
                "trial": trial,
                "fresh": fresh,
                "delay": round(delay, 2),
                "finished_first": finished,
                "problem": consistent(db, expected, fresh),
            }
        )
    return results
