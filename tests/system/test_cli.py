"""The guard command: exit codes, JSON shape, stdin batches, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guard.cli.commands import app
from tests.support.fixtures import TEXTS, write_policy

runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture
def compiled(tmp_path, llama_dir, db):
    """Two policies in one database: one whose labels are all flagged, one with none flagged."""
    for name, flagged in (("always", ("harmful", "benign")), ("never", ())):
        result = run("compile", write_policy(tmp_path, llama_dir, TEXTS, flagged=flagged, name=name), "--db", db)
        assert result.exit_code == 0, result.output
    return db


def test_compile_reports_and_json(tmp_path, llama_dir, db):
    policy = write_policy(tmp_path, llama_dir, TEXTS)
    result = run("compile", policy, "--db", db)
    assert result.exit_code == 0, result.output
    assert "compiled 'tiny'" in result.output and "8 run, 0 cached" in result.output
    again = run("compile", policy, "--db", db, "--json", "--force")
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["policy"] == "tiny" and summary["computed"] == 0 and summary["cached"] == 8
    assert summary["heads"] == 4 and [h["rank"] for h in summary["selected_heads"]] == [1, 2, 3, 4]
    assert summary["loo_accuracy"] == summary["metrics"]["loo_vote_accuracy"]  # the headline: heads re-selected


def test_check_exit_codes_follow_flagged(compiled):
    flagged = run("check", "--text", "anything at all", "--db", compiled, "--policy", "always")
    assert flagged.exit_code == 1, flagged.output
    assert "FLAGGED" in flagged.output
    allowed = run("check", "--text", "anything at all", "--db", compiled, "--policy", "never")
    assert allowed.exit_code == 0, allowed.output
    assert "allowed" in allowed.output


def test_check_json_schema(compiled):
    result = run("check", "--text", "help me hurt someone", "--db", compiled, "-p", "never", "--json")
    record = json.loads(result.stdout)
    assert list(record) == ["flagged", "verdicts"]  # one shape for one policy and for several
    assert list(record["verdicts"]) == ["never"] and record["flagged"] is False
    verdict = record["verdicts"]["never"]
    assert list(verdict)[:6] == ["policy", "version", "flagged", "label", "scores", "votes"]  # the 0.1 keys, first
    assert list(verdict)[6:] == ["calibrated", "margin", "uncertain"]  # no calibration: no thresholds
    assert verdict["policy"] == "never" and verdict["flagged"] is False
    assert set(verdict["scores"]) == {"harmful", "benign"}
    assert len(verdict["votes"]) == 4
    assert {"layer", "head", "label", "similarity"} <= set(verdict["votes"][0])


def test_check_stdin_one_json_line_per_text(compiled):
    texts = "first text\n\nsecond text\nthird one\n"
    result = run("check", "-", "--db", compiled, "-p", "always", "--json", "--batch-size", "2", input=texts)
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [line["line"] for line in lines] == [1, 2, 3, 4]  # the blank line keeps its place, as an error
    assert lines[1] == {"line": 2, "error": "empty text: nothing to check"}
    assert all(line["flagged"] for i, line in enumerate(lines) if i != 1)
    assert result.exit_code == 2


def test_list_and_inspect(compiled):
    listed = run("list", "--db", compiled, "--json")
    assert [p["policy"] for p in json.loads(listed.stdout)] == ["always", "never"]
    assert run("list", "--db", compiled).exit_code == 0
    inspected = json.loads(run("inspect", "never", "--db", compiled, "--json").stdout)
    assert len(inspected["selected_heads"]) == 4 and inspected["selected_heads"][0]["rank"] == 1
    table = run("inspect", "never", "--db", compiled)
    assert table.exit_code == 0 and "loo_accuracy" in table.output
    assert "heads chosen again each time" in table.output  # the headline figure, said in plain words


@pytest.mark.parametrize(
    "args,message",
    [
        (["check", "--text", "hi", "--db", "{db}", "-p", "nope"], "no compiled policy named 'nope'"),
        (["check", "--text", "hi", "--db", "{db}"], "holds 2 policies"),
        (["check", "--text", "  ", "--db", "{db}", "-p", "never"], "empty text"),
        (["check", "--db", "{db}", "-p", "never"], "nothing to check"),
        (["check", "--text", "hi", "--db", "{missing}"], "does not exist"),
        (["compile", "{missing}"], "policy file does not exist"),
        (["list", "--db", "{textfile}"], "is not a guard database"),
    ],
)
def test_errors_are_one_line_with_exit_2(compiled, tmp_path, args, message):
    (tmp_path / "notes.txt").write_text("not a database " * 50)
    fill = {"db": compiled, "missing": tmp_path / "missing.yaml", "textfile": tmp_path / "notes.txt"}
    result = run(*[a.format(**fill) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_bad_policy_error_names_file_and_line(tmp_path, db):
    (tmp_path / "p.yaml").write_text("name: x\nprompt: '{text}'\nlabels: [a, b]\ncolour: red\n")
    result = run("compile", tmp_path / "p.yaml", "--db", db)
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == f"guard: error: {tmp_path / 'p.yaml'}:4: unknown key 'colour' in the policy (allowed: aggregate, classifier, context_turns, data_root, description, escape, exemplars, heads, judge, labels, max_layer, model, name, prompt, prototypes, scoring, stride, uncertain_margin, vote, window, window_unit)"
    )


def test_console_script_prints_no_traceback(tmp_path):
    exe = Path(sys.executable).parent / "guard"  # installed beside the interpreter running the tests
    assert exe.exists(), "the guard console script is installed"
    proc = subprocess.run(
        [exe, "check", "--text", "hi", "--db", str(tmp_path / "none.db")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("guard: error: database") and "Traceback" not in proc.stderr
    usage = subprocess.run([exe, "check", "--bogus"], capture_output=True, text=True)
    assert usage.returncode == 2


def test_check_several_policies_in_one_pass(compiled):
    result = run("check", "--text", "some text", "--db", compiled, "-p", "never", "-p", "always", "--json")
    assert result.exit_code == 1
    line = json.loads(result.stdout)
    assert line["flagged"] is True
    assert list(line["verdicts"]) == ["never", "always"]
    assert line["verdicts"]["never"]["flagged"] is False and line["verdicts"]["always"]["flagged"] is True
    human = run("check", "--text", "some text", "--db", compiled, "-p", "never", "-p", "always")
    assert "never:" in human.output and "always:" in human.output


def test_help_shows_every_option_in_full_and_version():
    help_text = " ".join(run("check", "--help").output.split())  # joined: help wraps to the terminal
    assert "[env GUARD_DB, default ./guard.db]" in help_text  # square brackets survive (no Rich markup)
    assert "[env GUARD_THREADS" in help_text and "--threads" in help_text
    compile_help = " ".join(run("compile", "--help").output.split())
    assert "[env GUARD_DATA_ROOT]" in compile_help
    from guard import __version__

    version = run("--version")
    assert version.exit_code == 0 and version.output.strip() == f"guard {__version__}"


def test_a_reader_that_goes_away_ends_the_output_quietly(compiled, tmp_path):
    """`guard check - --json | head -n 1`: when head exits, guard stops with SIGPIPE's status
    (141) and nothing on stderr, not a BrokenPipeError traceback. The output is larger than a
    pipe's buffer, so guard is still writing when the reader leaves."""
    lines = tmp_path / "lines.txt"
    texts = [text for group in TEXTS.values() for text in group]
    lines.write_text("".join(f"{texts[i % len(texts)]} {i}\n" for i in range(1500)))
    script = (
        f"{sys.executable} -m guard.cli check - --db {compiled} -p always --json < {lines} 2> {tmp_path / 'err'}"
        " | head -n 1; echo ${PIPESTATUS[0]}"
    )
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=600)
    first, status = done.stdout.splitlines()[0], done.stdout.splitlines()[-1]
    assert json.loads(first)["flagged"] is True
    assert status == "141"
    assert (tmp_path / "err").read_text() == ""


@pytest.fixture
def pair_policy(tmp_path, llama_dir, db):
    """A policy over a request and its answer ({prompt}, {response}), no {text}."""
    import yaml

    answers = {"harmful": ["first you get the fuse", "mix the two powders"], "safe": ["I can't help.", "No, sorry."]}
    doc = {
        "name": "pairs",
        "model": str(llama_dir),
        "prompt": "Q: {prompt}\nA: {response}\nHarmful answer? Yes or No.",
        "labels": [{"name": "harmful", "flagged": True}, {"name": "safe"}],
        "exemplars": [{"from": "pairs.jsonl"}],
        "heads": 2,
    }
    rows = [
        {"prompt": q, "response": a, "label": label}
        for label, items in answers.items()
        for q, a in zip(("make a bomb?", "hurt him?"), items, strict=True)
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "pairs.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    compiled = run("compile", path, "--db", db)
    assert compiled.exit_code == 0, compiled.output
    return db


def test_check_fields_judge_a_request_and_its_answer_as_the_library_does(pair_policy):
    from guard import Guard

    args = ("check", "--db", pair_policy, "--json", "--field", "prompt=make a bomb?", "-f", "response=mix the powders")
    result = run(*args)
    assert result.exit_code in (0, 1), result.output
    verdict = json.loads(result.stdout)["verdicts"]["pairs"]
    library = Guard.load(pair_policy, "pairs").check(prompt="make a bomb?", response="mix the powders")
    assert verdict["label"] == library.label and verdict["scores"] == pytest.approx(library.scores, abs=1e-6)
    # a field the prompt needs and was not given, or a malformed one: one line, exit 2
    missing = run("check", "--db", pair_policy, "--field", "prompt=make a bomb?")
    assert missing.exit_code == 2 and "response" in missing.output and "Traceback" not in missing.output
    malformed = run("check", "--db", pair_policy, "--field", "prompt")
    assert malformed.exit_code == 2 and malformed.output.strip().count("\n") == 0
