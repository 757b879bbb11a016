"""The figures of docs/RELIABILITY.md: every bad input class with its exit code, message and time;
kill -9 trials during compile; concurrent writers and readers on SQLite and PostgreSQL.

    .venv/bin/python scripts/reliability.py [--kills 50] [--out reliability.json]

Uses the tiny random-weight llama of tests/support/fixtures.py (no downloads). A PostgreSQL server is
started the way the tests start one (tests/support/postgres.py) when its binaries exist.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.integration.test_hostile_inputs import BILLION_LAUGHS  # noqa: E402
from tests.support import concurrency, crash  # noqa: E402
from tests.support.fixtures import TEXTS, make_text_model, write_policy  # noqa: E402

GUARD = [sys.executable, "-m", "guard.cli"]


def guard(*args, stdin: bytes | None = None) -> dict:
    started = time.perf_counter()
    proc = subprocess.run([*GUARD, *map(str, args)], input=stdin, capture_output=True, cwd=ROOT, timeout=600)
    errors = [line for line in proc.stderr.decode(errors="replace").splitlines() if line.startswith("guard: error")]
    return {
        "exit": proc.returncode,
        "message": errors[0] if errors else (proc.stdout.decode(errors="replace").splitlines() or [""])[0][:160],
        "seconds": round(time.perf_counter() - started, 2),
        "traceback": b"Traceback" in proc.stderr,
    }


def hostile(work: Path, model: Path) -> list[dict]:
    db = work / "g.db"
    assert guard("compile", write_policy(work, model, TEXTS), "--db", db)["exit"] == 0
    rows = []

    def case(name, *args, stdin=None):
        rows.append({"input": name, **guard(*args, stdin=stdin)})

    case("1 MB line on `check -`", "check", "-", "--db", db, "--json", stdin=b"y" * 1_000_000 + b"\n")
    case("invalid UTF-8 line among good ones", "check", "-", "--db", db, "--json", stdin=b"bad \xff\n banana bread\n")
    case("64 MB of stdin without a newline", "check", "-", "--db", db, stdin=b"z" * (64 * 1024 * 1024))
    case("empty text", "check", "--text", "  ", "--db", db)
    # a NUL cannot be passed in an argument (the OS refuses it), so it comes as a line of stdin
    case("NUL in a line of `check -`", "check", "-", "--db", db, "--json", stdin=b"a\0b\n")
    (work / "bomb.yaml").write_text(BILLION_LAUGHS)
    case("billion-laughs policy", "compile", work / "bomb.yaml", "--db", work / "b.db")
    (work / "loop.yaml").write_text("name: &x [a, *x]\n")
    case("self-referencing alias", "compile", work / "loop.yaml", "--db", work / "b.db")
    (work / "deep.yaml").write_text("name: " + "[" * 50000 + "]" * 50000 + "\n")
    case("50,000 nested lists", "compile", work / "deep.yaml", "--db", work / "b.db")
    (work / "zero.png").symlink_to("/dev/zero")
    case("image symlinked to /dev/zero", "check", work / "zero.png", "--db", db)
    os.mkfifo(work / "pipe.png")
    case("image that is a FIFO", "check", work / "pipe.png", "--db", db)
    os.mkfifo(work / "pipe.yaml")
    case("policy file that is a FIFO", "compile", work / "pipe.yaml", "--db", work / "b.db")
    sub = work / "p"
    sub.mkdir()
    outside = work / "outside.csv"
    outside.write_text("text,label\n" + "".join(f"t{i},{'harmful' if i % 2 else 'benign'}\n" for i in range(6)))
    for name, source in (
        ("absolute `from:`", str(outside)),
        ("`from: ../outside.csv`", "../outside.csv"),
        ("`from:` symlink to /dev/zero", "zero.csv"),
    ):
        if source == "zero.csv":
            (sub / "zero.csv").symlink_to("/dev/zero")
        doc = {
            "name": "x",
            "model": str(model),
            "prompt": "T: {text}",
            "labels": [{"name": "harmful", "flagged": True}, "benign"],
            "exemplars": [{"from": source}],
        }
        path = sub / f"{len(rows)}.yaml"
        path.write_text(json.dumps(doc))
        case(name, "compile", path, "--db", work / "b.db")
    nofield = write_policy(work, model, TEXTS, name="nofield")
    nofield.write_text(nofield.read_text().replace("{text}", "it"))
    case("prompt without {text}", "compile", nofield, "--db", work / "b.db")
    case(
        "failed compile (model missing): no database left",
        "compile",
        write_policy(work, work / "none", TEXTS, name="m"),
        "--db",
        work / "left.db",
    )
    rows[-1]["message"] += f" (database file left: {(work / 'left.db').exists()})"
    image = work / "red.png"
    from PIL import Image

    Image.new("RGB", (8, 8), (255, 0, 0)).save(image)
    case("image on a text-model policy", "check", image, "--prompt", "hi", "--db", db)
    for name, sql, target in (
        ("database from a newer guard", "update guard_schema set version_num='9999'", "newer.db"),
        ("renamed column", "alter table heads rename column centroids to c2", "renamed.db"),
        ("truncated stored vectors", "update heads set centroids = substr(centroids, 1, 9)", "trunc.db"),
        ("NaN stored vectors", "update heads set centroids = zeroblob(length(centroids))", "nan.db"),
    ):
        shutil.copy(db, work / target)
        con = sqlite3.connect(work / target)
        if name.startswith("NaN"):
            import numpy as np

            blob = con.execute("select centroids from heads where rank=0").fetchone()[0]
            values = np.frombuffer(blob, dtype="<f4").copy()
            values[0] = np.nan
            con.execute("update heads set centroids=? where rank=0", (values.tobytes(),))
        else:
            con.execute(sql)
        con.commit()
        con.close()
        case(name, "check", "--text", "hello", "--db", work / target)
    case("read-only SQLite URI (works)", "list", "--db", f"sqlite:///file:{db}?mode=ro&uri=true", "--json")
    case("not a database", "list", "--db", outside)
    case("missing database", "check", "--text", "x", "--db", work / "missing.db")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--out", default="reliability.json")
    parser.add_argument("--skip", nargs="*", default=[], help="parts to skip: hostile kills sqlite postgres")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="guard-reliability-"))
    model = make_text_model(work / "tiny-llama", "llama")
    report: dict = {}
    try:
        if "hostile" not in args.skip:
            (work / "hostile").mkdir()
            report["hostile"] = hostile(work / "hostile", model)
        if "kills" not in args.skip:
            results = crash.trials(work / "kills", str(model), args.kills, seed=13)
            report["kills"] = {
                "trials": len(results),
                "killed_mid_compile": sum(not r["finished_first"] for r in results),
                "on_new_database": sum(r["fresh"] for r in results),
                "phases_hit": {
                    p: n for p in (*crash.PHASES, "finished") if (n := [r["phase"] for r in results].count(p))
                },
                "aimed_from": {
                    a: [r["from"] for r in results].count(a) for a in dict.fromkeys(r["from"] for r in results)
                },
                "inconsistent": [r for r in results if r["problem"]],
            }
        if "sqlite" not in args.skip:
            report["sqlite"] = concurrency.run(str(work / "shared.db"), work / "conc-sqlite", str(model))
        if "postgres" not in args.skip:
            from tests.support.postgres import PostgresServer, server_bin

            if server_bin():
                server = PostgresServer(server_bin()).start()
                try:
                    report["postgres"] = concurrency.run(server.new_database(), work / "conc-pg", str(model))
                finally:
                    server.stop()
    finally:
        Path(args.out).write_text(json.dumps(report, indent=1))
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
