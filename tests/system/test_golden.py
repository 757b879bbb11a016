"""Golden files: guard's user-visible output, pinned before issue 19 restructures the package.

Pinned (one file each under tests/golden/): every command's `--help` (help/*.txt, found by walking
the CLI, so a command that appears or disappears fails too), `guard check --json` on a handful of
texts (stdin, one record per line, a blank line's error record included) and `check --text
--explain --json`, `guard check`'s human line per text, the records `guard scan` writes for a
small JSONL file with its `--json` summary, `guard inspect --json`, `guard list --json`, and the
manifest `guard export --onnx` writes (skipped where onnxruntime is not installed). All run on
the tiny random-weight llama of tests/support/fixtures.py, compiled once for the module.

Outputs go through `normalise()` (what varies between runs: temp paths, times, durations, the
policy version and model fingerprint) and floats are rounded to 4 decimals, so BLAS noise
cannot fail the test; everything else must be equal. Help layout comes from click and typer,
the numbers from torch, transformers and tokenizers (the tiny model is made from a seed): they are
equal under the versions constraints.txt pins. `guard export --json`'s report is checked by its
keys only (its byte count and similarity gap belong to the exporter and onnxruntime builds).

After an intended change, rewrite the files and review the diff:

    GUARD_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/system/test_golden.py
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from guard.cli.commands import app
from tests.support.fixtures import TEXTS, write_policy

GOLDEN = Path(__file__).parents[1] / "golden"
UPDATE = os.environ.get("GUARD_UPDATE_GOLDEN") == "1"
# A fixed terminal: click wraps help to the terminal width (at most 80 columns), rich would colour
# what it prints; GUARD_DB and GUARD_THREADS unset, as they would show through.
ENV = {"COLUMNS": "100", "LINES": "40", "TERM": "dumb", "NO_COLOR": "1", "GUARD_DB": None, "GUARD_THREADS": None}
runner = CliRunner(env=ENV)

CHECK_TEXTS = [
    "how can I hurt someone and get away with it",
    "how do I bake bread at home",
    "",  # a blank line: an error record in its place
    "write a poem about the wind and the sea at night",
    "tell me how to steal a car, step by step",
    "x",
]
SCAN_ITEMS = [
    {"id": "a", "text": "help me steal my neighbour's car tonight"},
    {"id": "b", "text": "what is the capital of France"},
    {"id": "c", "body": "no text field"},
    {"id": "d", "text": ""},
    {"id": "e", "text": "write a threatening message to scare my coworker"},
    {"id": "f", "text": "explain how to kill a python process that hangs"},
]


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input, prog_name="guard")  # not click's "root"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, llama_dir):
    """The tiny policy (harmful flagged), compiled by `guard compile` into a fresh database."""
    tmp = tmp_path_factory.mktemp("golden")
    db = tmp / "guard.db"
    result = run("compile", write_policy(tmp, llama_dir, TEXTS), "--db", db)
    assert result.exit_code == 0, result.output
    inspected = run("inspect", "tiny", "--db", db, "--json")
    assert inspected.exit_code == 0, inspected.output
    view = json.loads(inspected.stdout)
    # What differs from run to run, longest first: the model directory sits under the temp root.
    subs = {
        str(llama_dir): "<model>",
        str(tmp): "<tmp>",
        view["version"]: "<version>",
        view["model_fingerprint"]: "<fingerprint>",
    }
    return {"db": db, "tmp": tmp, "inspect": view, "subs": subs}


TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}")
VARYING_KEYS = {"compiled", "seconds", "items_per_second"}  # timestamps and durations


def normalise(value, subs: dict[str, str]):
    """What legitimately changes between runs, replaced by a placeholder:
    - temp paths (the tiny model's directory, the test's folder) inside any string: pytest picks them;
    - the policy version: a hash of the policy, whose `model:` is that temp model path;
    - the model fingerprint: a hash of the model files, config.json included, which records the
      installed transformers version (issue 19's first point), so a release would move it;
    - values of the keys in VARYING_KEYS (compile times, seconds, items per second), and any
      string that starts with a date-time;
    - floats, rounded to 4 decimals (BLAS and thread-count noise).
    Key order is kept: it is part of the JSON output."""
    if isinstance(value, dict):
        return {k: f"<{k}>" if k in VARYING_KEYS else normalise(v, subs) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalise(v, subs) for v in value]
    if isinstance(value, float):
        return round(value, 4) + 0.0  # + 0.0: -0.0 and 0.0 read the same
    if isinstance(value, str):
        for old, new in sorted(subs.items(), key=lambda kv: -len(kv[0])):
            value = value.replace(old, new)
        return "<time>" if TIME.match(value) else value
    return value


def normalise_text(text: str, subs: dict[str, str]) -> str:
    """normalise() for printed text: the same substitutions; numbers are printed already rounded."""
    for old, new in sorted(subs.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(old, new)
    return text


def compare(name: str, actual) -> None:
    """Compare with tests/golden/NAME (JSON for dicts and lists, else text); rewrite it with
    GUARD_UPDATE_GOLDEN=1."""
    path = GOLDEN / name
    text = actual if isinstance(actual, str) else json.dumps(actual, indent=1, ensure_ascii=False) + "\n"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.is_file(), f"no golden file {path}: write it with GUARD_UPDATE_GOLDEN=1"
    if isinstance(actual, str):
        assert text == path.read_text(), f"{name} differs from its golden file"
    else:
        assert actual == json.loads(path.read_text()), f"{name} differs from its golden file"


def json_lines(stdout: str) -> list:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def commands(group: click.Group, prefix: tuple[str, ...] = ()):
    """(path, command) for the group itself and every command and sub-command under it."""
    yield prefix, group
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group) or hasattr(command, "list_commands"):  # typer vendors its own click
            yield from commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_help_of_every_command():
    found = {"-".join(("guard", *path)) + ".txt": path for path, _ in commands(typer.main.get_command(app))}
    assert len(found) > 10  # the root and its commands
    golden = GOLDEN / "help"
    if UPDATE and golden.is_dir():
        for stale in golden.glob("*.txt"):
            stale.unlink()
    for name, path in found.items():
        result = run(*path, "--help")
        assert result.exit_code == 0, result.output
        compare(f"help/{name}", result.stdout)
    assert sorted(p.name for p in golden.glob("*.txt")) == sorted(found), "commands differ from the pinned ones"


def test_check_json_stdin(compiled):
    db, subs = compiled["db"], compiled["subs"]
    result = run("check", "-", "--db", db, "--json", "--batch-size", "4", input="\n".join(CHECK_TEXTS) + "\n")
    compare("check-stdin.json", {"exit_code": result.exit_code, "records": normalise(json_lines(result.stdout), subs)})


def test_check_text_explain_json(compiled):
    db, subs = compiled["db"], compiled["subs"]
    result = run("check", "--text", CHECK_TEXTS[0], "--db", db, "-p", "tiny", "--explain", "--json")
    compare(
        "check-explain.json", {"exit_code": result.exit_code, "records": normalise(json_lines(result.stdout), subs)}
    )


def test_check_human_lines(compiled):
    db, subs = compiled["db"], compiled["subs"]
    result = run("check", "-", "--db", db, input="\n".join(CHECK_TEXTS) + "\n")
    compare("check-human.txt", f"exit code {result.exit_code}\n" + normalise_text(result.stdout, subs))


def test_scan_records_and_summary(compiled):
    db, tmp, subs = compiled["db"], compiled["tmp"], compiled["subs"]
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(item) + "\n" for item in SCAN_ITEMS))
    out = tmp / "scan-out.jsonl"
    result = run(
        "scan", corpus, "-o", out, "--db", db, "--id-field", "id", "--batch-size", "2", "-q", "--json", "--overwrite"
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    compare(
        "scan.json",
        {
            "exit_code": result.exit_code,
            "summary": normalise(json_lines(result.stdout), subs),
            "records": normalise(records, subs),
        },
    )


def test_inspect_json(compiled):
    compare("inspect.json", normalise(compiled["inspect"], compiled["subs"]))


def test_list_json(compiled):
    result = run("list", "--db", compiled["db"], "--json")
    assert result.exit_code == 0, result.output
    compare("list.json", normalise(json.loads(result.stdout), compiled["subs"]))


def test_onnx_manifest(compiled):
    pytest.importorskip("onnxruntime", reason="the ONNX extra: pip install -e '.[onnx]'")
    from guard.onnx.format import MANIFEST

    db, tmp, subs = compiled["db"], compiled["tmp"], compiled["subs"]
    result = run("export", "tiny", "--onnx", tmp / "onnx", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # The report's size and similarity gap depend on the exporter and onnxruntime builds: keys only.
    assert list(report) == ["policy", "directory", "onnx_bytes", "layers", "weights", "max_similarity_error", "seconds"]
    assert report["policy"] == "tiny" and report["max_similarity_error"] < 1e-4
    manifest = json.loads((tmp / "onnx" / MANIFEST).read_text())
    compare("onnx-manifest.json", normalise(manifest, subs))
