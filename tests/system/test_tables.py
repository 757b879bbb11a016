"""Tables for people fit the terminal they are printed on, and are never cut when piped: on a
pseudo-terminal of 60 and of 200 columns, and through a pipe, `guard list` shows every cell whole."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guard.cli.commands import app
from tests.support.fixtures import TEXTS, write_policy

GUARD = Path(sys.executable).parent / "guard"
NAME = "a-policy-whose-name-is-long-enough-to-push-the-row-past-eighty-columns"
runner = CliRunner()


@pytest.fixture(scope="module")
def wide_db(tmp_path_factory, llama_dir):
    tmp = tmp_path_factory.mktemp("tables")
    db = str(tmp / "guard.db")
    result = runner.invoke(app, ["compile", str(write_policy(tmp, llama_dir, TEXTS, name=NAME)), "--db", db])
    assert result.exit_code == 0, result.output
    return db, str(llama_dir)


def on_terminal(args: list[str], columns: int) -> str:
    """What `guard ARGS` prints on a pseudo-terminal `columns` wide (colour off, COLUMNS unset)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")} | {"NO_COLOR": "1", "TERM": "xterm"}
    proc = subprocess.Popen([str(GUARD), *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=120) == 0
    text = b"".join(chunks).decode().replace("\r\n", "\n")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # any escape codes rich still writes


def columns(table: str) -> list[str]:
    """Each column of a one-row table's body, its wrapped pieces joined again (cells fold inside
    words, so the pieces of a cell join without a separator)."""
    body = [line for line in table.splitlines() if line.startswith("│")]
    pieces = [[cell.strip() for cell in line.strip("│").split("│")] for line in body]
    return ["".join(column) for column in zip(*pieces)]


def test_piped_rows_are_whole(wide_db):
    db, model = wide_db
    piped = subprocess.run(
        [str(GUARD), "list", "--db", db], capture_output=True, text=True, env=os.environ | {"COLUMNS": "80"}
    )
    assert piped.returncode == 0, piped.stderr
    row = next(line for line in piped.stdout.splitlines() if NAME in line)
    assert model in row and len(row) > 120  # one line, nothing cut at 80 columns (nor at COLUMNS)
    assert "…" not in piped.stdout


def test_wide_terminal_uses_its_width_and_narrow_one_wraps(wide_db):
    db, model = wide_db
    wide = on_terminal(["list", "--db", db], 300)
    row = next(line for line in wide.splitlines() if NAME in line)
    assert model in row and 120 < len(row) <= 300  # past 80 columns: the terminal's own width
    narrow = on_terminal(["list", "--db", db], 60)
    lines = [line for line in narrow.splitlines() if line.strip()]
    assert max(len(line) for line in lines) <= 60 and "…" not in narrow
    assert NAME not in narrow and model not in narrow  # wrapped, and not cut: each cell is all there
    policy, version, labels, model_cell, *_ = columns(narrow)
    assert (policy, model_cell, labels) == (NAME, model, "harmful*,benign")


def test_versions_and_inspect_tables_are_whole_when_not_a_terminal(wide_db):
    db, _ = wide_db
    versions = runner.invoke(app, ["list", "--versions", "--db", db])  # CliRunner's stdout is no terminal
    assert versions.exit_code == 0, versions.output
    assert any(NAME in line and "float32" in line and "cpu" in line for line in versions.stdout.splitlines())
    inspect = runner.invoke(app, ["inspect", NAME, "--db", db])
    assert inspect.exit_code == 0 and NAME in inspect.stdout and "…" not in inspect.stdout
