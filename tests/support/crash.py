"""kill -9 at a random point of `guard compile`: afterwards the database opens, passes SQLite's
integrity check, and every stored version is whole (the one before, or the new one, never half
of it). Used by tests/system/test_crash.py (a few trials) and scripts/reliability.py (50 and more)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.support.concurrency import ROOT, torn_read, write_round

PHASES = (
    "starting",  # Python, imports, reading the policy
    "loading the model",
    "opening the database",  # creating it and its tables, for a new one
    "forward passes",  # with the activation cache written as it goes
    "fitting",
    "writing the version",  # the transaction that stores the compiled version
    "exiting",
)


def compile_command(db: str, policy: Path, phases: Path | None = None) -> list[str]:
    """`guard compile`; with `phases`, run through this module, which appends the name of each
    phase to that file as it begins (so a trial knows where its kill landed)."""
    if phases is None:
        return [sys.executable, "-m", "guard.cli", "compile", str(policy), "--db", db, "--force"]
    # --force: a trial that compiles the policy the shared database already holds still writes a version
    return [sys.executable, "-m", "tests.support.crash", str(phases), "compile", str(policy), "--db", db, "--force"]


def _compile_marking_phases(phases: str, argv: list[str]) -> None:
    """`guard compile` (guard.cli.commands), with guard.compiler's steps wrapped to record each phase
    with one unbuffered write (it survives a SIGKILL that comes after it)."""
    import guard.compiler
    from guard.cli import commands as cli

    fd = os.open(phases, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def mark(phase: str) -> None:
        os.write(fd, f"{phase}\t{time.monotonic()}\n".encode())  # one clock for all processes (Linux)

    def marked(phase: str, function, after: str | None = None):
        def wrapper(*args, **kwargs):
            mark(phase)
            result = function(*args, **kwargs)
            if after:
                mark(after)
            return result

        return wrapper

    mark("starting")
    guard.compiler.load_model = marked("loading the model", guard.compiler.load_model)
    guard.compiler.features = marked("forward passes", guard.compiler.features)
    guard.compiler.fit = marked("fitting", guard.compiler.fit)
    store_class = guard.compiler.Store

    class Store(store_class):
        @classmethod
        def open(cls, *args, **kwargs):
            mark("opening the database")
            return store_class.open.__func__(cls, *args, **kwargs)

        def save_artifact(self, *args, **kwargs):
            return marked("writing the version", super().save_artifact, after="exiting")(*args, **kwargs)

    guard.compiler.Store = Store
    sys.argv = ["guard", *argv]
    cli.main()


def environment() -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def full_compile_seconds(db: str, policy: Path, phases: Path | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(compile_command(db, policy, phases), env=environment(), capture_output=True, check=True, cwd=ROOT)
    return time.perf_counter() - started


def read_phases(phases: Path) -> list[tuple[str, float]]:
    """(phase, time.monotonic() when it began) as the compile wrote them."""
    lines = phases.read_text().split("\n")[:-1] if phases.exists() else []
    return [(name, float(at)) for name, at in (line.split("\t") for line in lines)]


def wait_for_phase(phases: Path, phase: str, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if phase in (name for name, _ in read_phases(phases)):
            return
        time.sleep(0.002)


def last_phase(phases: Path) -> str:
    found = read_phases(phases)
    return found[-1][0] if found else "starting"  # killed before the bootstrap wrote its first line


def consistent(db: str, expected: dict[str, int], fresh: bool) -> str:
    """ "" if the database after a kill is whole; else what is wrong."""
    from guard.errors import StoreError
    from guard.store.database import Store

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
    """`count` kill -9 trials; every third on a new database, the others on one with versions.
    Each result says in which phase of the compile (PHASES) its kill landed."""
    from guard.policy import load_policy

    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    policies = [write_round(workdir, model, 0, shots) for shots in (4, 3)]
    expected = {load_policy(p).version: 2 * shots for p, shots in zip(policies, (4, 3))}
    shared = str(workdir / "shared.db")
    span = full_compile_seconds(shared, policies[0], workdir / "phases-full")
    # Imports and the model load take most of a compile of the tiny model, and their length varies
    # by more than the rest takes: a quarter of the kills come at a random point of the whole
    # compile, the others at one from the start of a later phase to the end of the version's
    # transaction (from opening the database, from the forward passes, from that transaction).
    began = dict(read_phases(workdir / "phases-full"))
    aims = ("opening the database", "forward passes", "writing the version")
    windows = {None: span, **{aim: 1.2 * (began["exiting"] - began[aim]) for aim in aims}}
    results = []
    for trial in range(count):
        fresh = trial % 3 == 0
        db = str(workdir / f"fresh-{trial}.db") if fresh else shared
        if not fresh:  # make the model run again, so the kill can land in the forward passes too
            with sqlite3.connect(db) as con:
                con.execute("delete from activations")
        aim = rng.choice(list(windows))
        wait = rng.uniform(0, windows[aim])
        phases = workdir / f"phases-{trial}"
        spawned = time.monotonic()
        proc = subprocess.Popen(
            compile_command(db, policies[trial % 2], phases),
            env=environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        if aim:
            wait_for_phase(phases, aim, proc)
        time.sleep(wait)
        delay = time.monotonic() - spawned
        finished = proc.poll() is not None
        if not finished:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        results.append(
            {
                "trial": trial,
                "fresh": fresh,
                "delay": round(delay, 2),
                "from": aim or "start",
                "finished_first": finished,
                "phase": "finished" if finished else last_phase(phases),
                "problem": consistent(db, expected, fresh),
            }
        )
    return results


if __name__ == "__main__":  # python -m tests.support.crash PHASES_FILE compile POLICY --db DB
    _compile_marking_phases(sys.argv[1], sys.argv[2:])
