"""Whole documents through the command line (issue 23): `guard check --file` and `guard scan`
records longer than one check, on the tiny model; each verdict is the library's document verdict
and names its window; a document over GUARD_MAX_DOCUMENT_CHARS is one line and exit 2."""

import csv
import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from guard import GuardSet
from guard.cli.commands import app
from guard.limits import LIMITS
from guard.scanning.writers import read_records
from tests.integration.test_documents import SENTENCES
from tests.support.fixtures import TEXTS, write_policy

runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def doc_db(tmp_path_factory, llama_dir):
    tmp = tmp_path_factory.mktemp("documents-cli")
    db = str(tmp / "guard.db")
    result = run("compile", write_policy(tmp, llama_dir, TEXTS), "--db", db)
    assert result.exit_code == 0, result.output
    return db


@pytest.fixture(scope="module")
def document():
    """140,000 characters (over a JSONL record's old 131,072 bytes), the tiny corpus's sentences
    in a fixed cycle so its windows repeat (guard.check.documents checks each distinct one once)."""
    text = (" ".join(SENTENCES) + " ") * (140_000 // len(" ".join(SENTENCES)) + 1)
    assert len(text) > LIMITS.max_text_chars
    return text.strip()


@pytest.fixture(scope="module")
def expected(doc_db, document):
    return GuardSet.load(doc_db, device="cpu").check(document)["tiny"]


def test_check_file_is_the_library_document_verdict(tmp_path, doc_db, document, expected):
    path = tmp_path / "post.txt"
    path.write_text(document)
    result = run("check", "--file", path, "--db", doc_db, "--json")
    assert result.exit_code == (1 if expected.flagged else 0), result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["file"] == str(path)
    window = record["verdicts"]["tiny"]["window"]
    assert window == expected.window and window["document"]
    assert document[window["start"] : window["end"]] == window["text"]
    human = run("check", "--file", path, "--db", doc_db, "--explain")
    where = f"window {window['index']}/{window['of']} chars {window['start']}-{window['end']}"
    assert where in human.stdout
    assert f"window {window['index']}, characters {window['start']:,}-{window['end']:,}:" in human.stdout


def test_check_file_refusals_are_one_line(tmp_path, doc_db):
    missing = run("check", "--file", tmp_path / "nope.txt", "--db", doc_db)
    assert missing.exit_code == 2 and "no such file" in missing.output
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text \xff more")
    result = run("check", "--file", bad, "--db", doc_db)
    assert result.exit_code == 2 and "not UTF-8" in result.output
    big = tmp_path / "big.txt"
    big.write_text("A calm sentence. " * 4_000)  # 68,000 characters, over the limit set below
    env = {**os.environ, "GUARD_MAX_DOCUMENT_CHARS": "50000"}
    proc = subprocess.run(
        [sys.executable, "-m", "guard.cli", "check", "--file", str(big), "--db", doc_db],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "GUARD_MAX_DOCUMENT_CHARS" in lines[0] and "68,000" in lines[0]


def test_scan_takes_a_document_per_record(tmp_path, doc_db, document, expected):
    assert len(json.dumps({"text": document}).encode()) > 131_072  # refused as one record before issue 23
    jsonl = tmp_path / "posts.jsonl"
    jsonl.write_text(json.dumps({"id": "long", "text": document}) + "\n" + json.dumps({"id": "short", "text": "hi"}))
    table = tmp_path / "posts.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["id", "text"], ["long", document], ["short", "hi"]])
    for source in (jsonl, table):
        out = tmp_path / f"{source.suffix[1:]}.out.jsonl"
        result = run("scan", source, "--out", out, "--db", doc_db, "--id-field", "id", "--quiet")
        assert result.exit_code in (0, 1), result.output
        records = list(read_records(str(out)))
        assert [r["id"] for r in records] == ["long", "short"] and "error" not in records[0]
        assert records[0]["verdicts"]["tiny"]["window"] == expected.window
        assert records[0]["flagged"] == expected.flagged
