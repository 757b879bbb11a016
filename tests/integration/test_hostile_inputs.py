"""Hostile inputs (issue 13): each defect found by trying guard 0.1 as a hostile user would, as a
test that failed on 0.1. Limits, one bad line among good ones, exit 2 for every failure, paths,
policies that cannot work, database trust, cheap errors first."""

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from guard.cli.commands import app, friendly
from guard.errors import GuardError, InputError, PolicyError, StoreError
from guard.limits import LIMITS, check_text, decode_line, read_lines, read_regular_file
from guard.models.images import ImageError, load_image
from guard.policy import load_policy
from tests.support.fixtures import TEXTS, write_policy

runner = CliRunner()
GUARD = Path(sys.executable).parent / "guard"


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture
def compiled(tmp_path, llama_dir, db):
    assert run("compile", write_policy(tmp_path, llama_dir, TEXTS), "--db", db).exit_code == 0
    return db


def finishes(target, seconds=20.0):
    """Run `target` in a thread; what it returned or raised, or "hung" if it did not finish."""
    box = {}

    def go():
        try:
            box["value"] = target()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            box["value"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(seconds)
    return box.get("value", "hung")


# --- 1. input limits ---------------------------------------------------------------------------


def test_text_limits():
    assert check_text("banana bread") == "banana bread"
    with pytest.raises(InputError, match="empty text"):
        check_text("   \n")
    with pytest.raises(InputError, match="too long: 1,000,000 characters"):
        check_text("a" * 1_000_000)
    with pytest.raises(InputError, match="NUL"):
        check_text("a\0b")
    with pytest.raises(InputError, match="must be a string, not bytes"):
        check_text(b"bytes")


def test_lines_bad_utf8_and_overlong_lines_are_records_and_memory_stays_bounded():
    big = b"x" * (50 * LIMITS.max_line_bytes)  # one line, no newline until the very end
    stream = io.BytesIO(b"bad \xff\n" + big + b"\n banana bread\n\n" + big)
    lines = list(read_lines(stream))
    assert [n for n, _ in lines] == [1, 2, 3, 4, 5]
    assert isinstance(lines[0][1], InputError) and "not UTF-8" in str(lines[0][1])
    assert isinstance(lines[1][1], InputError) and "too long" in str(lines[1][1])
    assert lines[2][1] == " banana bread" and lines[3][1] == ""
    assert isinstance(lines[4][1], InputError)  # an over-long last line without a newline
    assert decode_line("ünïcode\r\n".encode()) == "ünïcode"


class RecordingStream(io.BytesIO):
    """A byte stream that records the size of every read asked of it (-1: unbounded)."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.asked = []

    def read(self, size=-1):
        self.asked.append(-1 if size is None else size)
        return super().read(size)

    def read1(self, size=-1):
        self.asked.append(-1 if size is None else size)
        return super().read1(size)

    def readline(self, size=-1):
        self.asked.append(-1 if size is None else size)
        return super().readline(size)

    def readlines(self, hint=-1):
        self.asked.append(-1)
        return super().readlines(hint)

    def __next__(self):  # iterating a stream reads a whole line, however long
        self.asked.append(-1)
        return super().__next__()


def test_the_scan_and_stdin_line_reader_never_reads_a_line_whole():
    """guard.scanning.readers.decoded_lines (behind `check -` and `scan`): an over-long line is one
    TooLong outcome, thrown away in bounded reads; no read asks for more than the limit plus a
    line ending, or one skip chunk; the lines after it keep their numbers and texts."""
    from guard.limits import Limits
    from guard.scanning.readers import SKIP_CHUNK, TooLong, decoded_lines

    limits = Limits(max_text_chars=100, max_line_bytes=400)
    huge = b"x" * (40 * SKIP_CHUNK)  # 2.6 MB, one line
    data = b"bad \xff\n" + huge + b"\nok\n" + b"a" * 400 + b"\r\n" + b"b" * 401 + b"\n\n" + huge
    stream = RecordingStream(data)
    lines = list(decoded_lines(stream, limits=limits))
    assert [n for n, _ in lines] == [1, 2, 3, 4, 5, 6, 7]
    assert lines[0][1] is None and lines[2][1] == "ok" and lines[3][1] == "a" * 400 and lines[5][1] == ""
    assert [n for n, line in lines if isinstance(line, TooLong)] == [2, 5, 7]
    assert str(lines[1][1]) == "text is too long: over 400 bytes on one line (guard checks up to 100 characters)"
    assert stream.asked and all(0 <= size <= max(402, SKIP_CHUNK) for size in stream.asked), stream.asked
    assert stream.tell() == len(data)

    # a byte range (a shard) counts the bytes thrown away: it ends where its bytes end
    stream = RecordingStream(huge + b"\nnext\nafter\n")
    assert list(decoded_lines(stream, first=9, size=len(huge) + 6, limits=limits))[1:] == [(10, "next")]
    assert stream.tell() == len(huge) + 6


def test_64_megabytes_without_a_newline_on_check_stdin(compiled, monkeypatch):
    """Read in bounded pieces, not whole: one error record naming the limit for line 1, a verdict
    for line 2, exit 2."""
    import typer.testing

    from guard.scanning.readers import SKIP_CHUNK

    stream = RecordingStream(b"z" * (64 * 1024 * 1024) + b"\nbanana bread\n")
    monkeypatch.setattr(typer.testing, "make_input_stream", lambda input, charset: stream)  # stdin.buffer
    result = run("check", "-", "--db", compiled, "--json")
    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert result.exit_code == 2, result.output
    assert records[0] == {
        "line": 1,
        "error": f"text is too long: over {LIMITS.max_line_bytes:,} bytes on one line"
        f" (guard checks up to {LIMITS.max_text_chars:,} characters)",
    }
    assert records[1]["line"] == 2 and records[1]["verdicts"]["tiny"]["label"] in ("harmful", "benign")
    assert len(records) == 2
    bound = max(LIMITS.max_line_bytes + 2, SKIP_CHUNK)
    assert stream.asked and all(0 <= size <= bound for size in stream.asked), stream.asked


def test_image_from_a_device_or_fifo_is_refused_without_reading(tmp_path):
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path / "zero.png")
    os.mkfifo(tmp_path / "pipe.png")  # nobody writes: opening it blocking would wait forever
    outcome = finishes(lambda: load_image(tmp_path / "pipe.png"))
    assert isinstance(outcome, ImageError) and "not a regular file" in str(outcome)


def test_image_over_the_byte_limit_is_refused_from_stat(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    with open(path, "wb") as handle:
        handle.truncate(LIMITS.max_image_bytes + 1)  # sparse: nothing is written
    with pytest.raises(ImageError, match="more than guard reads"):
        load_image(path)
    with pytest.raises(InputError, match="more than guard reads"):
        read_regular_file(path, 10)


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
name: x
"""


def test_billion_laughs_and_self_reference_are_policy_errors(tmp_path):
    (tmp_path / "bomb.yaml").write_text(BILLION_LAUGHS)
    outcome = finishes(lambda: load_policy(tmp_path / "bomb.yaml"))
    assert isinstance(outcome, PolicyError) and "expands to more than" in str(outcome)
    (tmp_path / "loop.yaml").write_text("name: &x [a, *x]\n")
    with pytest.raises(PolicyError, match="alias refers to the value that contains it"):
        load_policy(tmp_path / "loop.yaml")
    (tmp_path / "deep.yaml").write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(PolicyError, match="nested"):
        load_policy(tmp_path / "deep.yaml")


def test_an_alias_bomb_is_refused_before_any_value_is_built(tmp_path, monkeypatch):
    """Its size is measured on the YAML node graph, each node once, so the refusal does not
    build a million values first; the line is that of the first value that expands too far."""
    import guard.policy.yaml_lines

    built = []  # (no exception raised in here: a failure report would print the node graph, exponentially)
    monkeypatch.setattr(guard.policy.yaml_lines, "_build", lambda *args: built.append(1))
    (tmp_path / "bomb.yaml").write_text(BILLION_LAUGHS)
    with pytest.raises(PolicyError, match=r"bomb\.yaml:7: the policy expands to more than 1,000,000 values"):
        load_policy(tmp_path / "bomb.yaml")
    (tmp_path / "loop.yaml").write_text("name: x\nlabels: &x [a, [b, *x]]\n")
    with pytest.raises(PolicyError, match=r"loop\.yaml:2: an alias refers to the value that contains it"):
        load_policy(tmp_path / "loop.yaml")
    (tmp_path / "deep.yaml").write_text("name: " + "[" * 100 + "]" * 100 + "\n")
    with pytest.raises(PolicyError, match="nested more than 64 deep"):
        load_policy(tmp_path / "deep.yaml")
    assert not built


def test_policy_file_that_is_a_fifo_or_device_is_refused(tmp_path):
    os.mkfifo(tmp_path / "pipe.yaml")
    outcome = finishes(lambda: load_policy(tmp_path / "pipe.yaml"))
    assert isinstance(outcome, PolicyError) and "not a regular file" in str(outcome)
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    with pytest.raises(PolicyError, match="not a regular file"):
        load_policy(tmp_path / "zero.yaml")


# --- 2. one bad line does not lose the batch; 3. every failure exits 2 -------------------------


def test_a_bad_line_gets_an_error_record_and_the_good_lines_their_verdicts(compiled):
    result = run("check", "-", "--db", compiled, "--json", input=b"bad \xff\n banana bread\n")
    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert result.exit_code == 2, result.output
    assert records[0]["line"] == 1 and "UTF-8" in records[0]["error"] and set(records[0]) == {"line", "error"}
    assert records[1]["line"] == 2 and records[1]["verdicts"]["tiny"]["label"] in ("harmful", "benign")
    assert len(records) == 2
    assert "Traceback" not in result.output


def test_a_one_megabyte_line_is_refused_with_exit_2(compiled):
    text = b"ok line\n" + b"y" * 1_000_000 + b"\n"
    result = run("check", "-", "--db", compiled, "--json", input=text)
    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert result.exit_code == 2
    assert records[1]["line"] == 2 and "too long" in records[1]["error"] and set(records[1]) == {"line", "error"}
    assert "flagged" in records[0]


def test_only_bad_lines_exit_2(compiled):
    result = run("check", "-", "--db", compiled, "--json", input=b"\xff\xfe\n")
    assert result.exit_code == 2
    record = json.loads(result.stdout)
    assert record["line"] == 1 and "UTF-8" in record["error"]


def test_stdin_of_only_bad_lines_is_refused_before_the_database_or_model(tmp_path, llama_dir, db, monkeypatch):
    """A 1 MB line (or any line guard.limits refuses) needs neither the database nor the model:
    with nothing checkable after it, `check -` answers exit 2 without loading either."""
    model = tmp_path / "model"
    shutil.copytree(llama_dir, model)
    assert run("compile", write_policy(tmp_path, model, TEXTS), "--db", db).exit_code == 0
    shutil.rmtree(model)  # loading the model now fails: no model error proves it never started
    proc = subprocess.run(
        [GUARD, "check", "-", "--db", db, "--json"], input=b"y" * 1_000_000 + b"\n\xff\n\n", capture_output=True
    )
    assert proc.returncode == 2 and proc.stderr == b"", proc.stderr
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3] and all(set(r) == {"line", "error"} for r in records)
    assert "too long: over 131,072 bytes on one line" in records[0]["error"] and "UTF-8" in records[1]["error"]
    assert "empty text" in records[2]["error"]

    import guard.check.engine
    import guard.store.database

    opened = []
    monkeypatch.setattr(guard.store.database.Store, "open", classmethod(lambda cls, *a, **k: opened.append("store")))
    monkeypatch.setattr(
        guard.check.engine.GuardSet, "with_model", classmethod(lambda cls, *a, **k: opened.append("model"))
    )
    result = run("check", "-", "--db", db, input=b"nul \0 here\n")
    assert result.exit_code == 2 and "error    line 1: text contains a NUL character" in result.stdout
    assert opened == [] and result.stderr == ""


def test_an_unexpected_exception_is_one_line_and_exit_2(monkeypatch, capsys):
    import typer

    @friendly
    def broken():
        return [][1]  # a bug: IndexError

    with pytest.raises(typer.Exit) as exit_info:
        broken()
    assert exit_info.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith("guard: error: internal error (IndexError: list index out of range)")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("GUARD_DEBUG", "1")
    with pytest.raises(typer.Exit):
        broken()
    assert "Traceback" in capsys.readouterr().err


def test_console_script_bad_utf8_and_huge_line(compiled):
    proc = subprocess.run(
        [GUARD, "check", "-", "--db", compiled, "--json"], input=b"bad \xff\n banana bread\n", capture_output=True
    )
    assert proc.returncode == 2
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [("error" in r) for r in records] == [True, False]
    assert b"Traceback" not in proc.stderr


# --- 4. paths ------------------------------------------------------------------------------------


def policy_with_source(tmp_path, source: str, model="smollm2-135m") -> Path:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    doc = {
        "name": "p",
        "model": model,
        "prompt": "Text: {text}",
        "labels": [{"name": "harmful", "flagged": True}, "benign"],
        "exemplars": [{"from": source}],
    }
    path = folder / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def write_csv(path: Path) -> Path:
    rows = ["text,label"] + [f"bad thing {i},harmful" for i in range(3)] + [f"good thing {i},benign" for i in range(3)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_exemplar_files_stay_in_the_policy_folder(tmp_path):
    outside = write_csv(tmp_path / "outside.csv")
    for source in (str(outside), "../outside.csv"):
        with pytest.raises(PolicyError, match="outside the policy's folder and data root.*--allow-path"):
            load_policy(policy_with_source(tmp_path, source))
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "link.csv").symlink_to(outside)  # a symlink does not get around it
    with pytest.raises(PolicyError, match="outside the policy's folder"):
        load_policy(policy_with_source(tmp_path, "link.csv"))
    allowed = load_policy(policy_with_source(tmp_path, "../outside.csv"), allow_paths=[tmp_path])
    assert len(allowed.exemplars) == 6
    write_csv(tmp_path / "policies" / "inside.csv")
    assert len(load_policy(policy_with_source(tmp_path, "inside.csv")).exemplars) == 6


def test_exemplar_file_that_is_a_device_or_fifo_is_refused(tmp_path):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "zero.csv").symlink_to("/dev/zero")
    with pytest.raises(PolicyError, match="outside the policy's folder"):
        load_policy(policy_with_source(tmp_path, "zero.csv"))
    with pytest.raises(PolicyError, match="not a regular file"):
        load_policy(policy_with_source(tmp_path, "zero.csv"), allow_paths=["/dev"])
    os.mkfifo(tmp_path / "policies" / "pipe.jsonl")
    outcome = finishes(lambda: load_policy(policy_with_source(tmp_path, "pipe.jsonl")))
    assert isinstance(outcome, PolicyError) and "not a regular file" in str(outcome)


def test_compile_cli_allow_path(tmp_path, llama_dir, db):
    write_csv(tmp_path / "outside.csv")
    policy = policy_with_source(tmp_path, "../outside.csv", model=str(llama_dir))
    refused = run("compile", policy, "--db", db)
    assert refused.exit_code == 2 and "outside the policy's folder" in refused.stderr
    assert not Path(db).exists()
    assert run("compile", policy, "--db", db, "--allow-path", tmp_path).exit_code == 0


# --- 5. policies that cannot work ----------------------------------------------------------------


def test_prompt_without_a_field_is_refused(tmp_path, llama_dir):
    path = write_policy(tmp_path, llama_dir, TEXTS)
    doc = yaml.safe_load(path.read_text())
    doc["prompt"] = "Is this request harmful? Answer Yes or No."
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(PolicyError, match=r"p?.yaml:\d+: the prompt has no \{text\}"):
        load_policy(path)


def test_suspicious_policies_compile_with_warnings(tmp_path, llama_dir, db):
    texts = {"harmful": TEXTS["harmful"] + ["what is the capital of France"], "benign": TEXTS["benign"]}
    path = write_policy(tmp_path, llama_dir, texts, flagged=(), heads=500)
    result = run("compile", path, "--db", db)
    assert result.exit_code == 0, result.output
    assert "warning: no label is flagged" in result.stderr
    assert "warning: the same exemplar as" in result.stderr and "('benign' vs 'harmful')" in result.stderr
    assert "warning: 'heads: 500' is more than the model has (16); all 16 heads vote" in result.stderr


# --- 6. database trust ---------------------------------------------------------------------------


def test_newer_schema_is_refused(compiled, tmp_path):
    con = sqlite3.connect(compiled)
    con.execute("update guard_schema set version_num = '9999'")
    con.commit()
    con.close()
    result = run("list", "--db", compiled)
    assert result.exit_code == 2 and "written by a newer guard (schema revision 9999)" in result.stderr
    # a guard 0.1-style database with a migration this guard never had
    old = tmp_path / "old.db"
    shutil.copy(Path(__file__).parents[1] / "data" / "guard-0.1.db", old)
    con = sqlite3.connect(old)
    con.execute("insert into guard_migrations values ('0003_from_the_future', '2030-01-01')")
    con.commit()
    con.close()
    result = run("list", "--db", old)
    assert result.exit_code == 2 and "written by a newer guard (schema revision 0003_from_the_future)" in result.stderr


def test_renamed_column_is_a_one_line_error(compiled):
    con = sqlite3.connect(compiled)
    con.execute("alter table heads rename column centroids to centres")
    con.commit()
    con.close()
    result = run("check", "--text", "hello", "--db", compiled)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("guard: error: database") and "Traceback" not in result.output


@pytest.mark.parametrize("damage", ["nan", "truncated"])
def test_damaged_vectors_are_refused_not_voted(compiled, damage):
    con = sqlite3.connect(compiled)
    blob = con.execute("select centroids from heads where rank = 0").fetchone()[0]
    if damage == "nan":
        values = np.frombuffer(blob, dtype="<f4").copy()
        values[3] = np.nan
        blob = values.tobytes()
    else:
        blob = blob[: len(blob) // 2]
    con.execute("update heads set centroids = ? where rank = 0", (blob,))
    con.commit()
    con.close()
    result = run("check", "--text", "hello", "--db", compiled, "--json")
    assert result.exit_code == 2
    assert "stored vectors are damaged" in result.stderr and "NaN" not in result.stdout


def test_damaged_cache_entries_are_recomputed(tmp_path, llama_dir, db):
    from guard.compiler import compile_policy

    path = write_policy(tmp_path, llama_dir, TEXTS)
    first = compile_policy(path, db)
    con = sqlite3.connect(db)
    con.execute("update activations set vectors = substr(vectors, 1, 10)")
    con.commit()
    con.close()
    again = compile_policy(path, db, force=True)  # unchanged otherwise: nothing would run
    assert again.computed == 8
    assert again.artifact.heads == first.artifact.heads


def test_read_only_uri_opens(compiled):
    uri = f"sqlite:///file:{compiled}?mode=ro&uri=true"
    listed = run("list", "--db", uri, "--json")
    assert listed.exit_code == 0, listed.output
    assert [p["policy"] for p in json.loads(listed.stdout)] == ["tiny"]
    missing = run("list", "--db", f"sqlite:///file:{compiled}.nope?mode=ro&uri=true")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


def test_failed_compile_leaves_no_database(tmp_path, llama_dir, db):
    path = write_policy(tmp_path, tmp_path / "no-such-model", TEXTS)
    result = run("compile", path, "--db", db)
    assert result.exit_code == 2
    assert not Path(db).exists()


# --- 7. cheap errors first -----------------------------------------------------------------------


def test_input_errors_come_before_the_model_loads(tmp_path, llama_dir, db, colour_data):
    model = tmp_path / "model"
    shutil.copytree(llama_dir, model)
    assert run("compile", write_policy(tmp_path, model, TEXTS), "--db", db).exit_code == 0
    shutil.rmtree(model)  # loading the model now fails: an error about the input proves it never started
    empty = run("check", "--text", "  ", "--db", db)
    assert empty.exit_code == 2 and "empty text" in empty.stderr
    image = sorted((colour_data / "heldout" / "red").glob("*.png"))[0]
    on_text = run("check", image, "--prompt", "hi", "--db", db)
    assert on_text.exit_code == 2 and "is a text model; it cannot take images" in on_text.stderr


def test_library_refuses_bad_inputs_with_guard_errors(llama, tmp_path, db):
    from guard.check.engine import Guard
    from guard.compiler import compile_policy

    compile_policy(write_policy(tmp_path, llama.source.reference, TEXTS), db, loaded=llama)
    guard = Guard.load(db, model=llama)
    # past one check's length a text is a document, checked window by window: refused past a document's
    for bad in ("", "a" * (LIMITS.max_document_chars + 1), "nul\0"):
        with pytest.raises(InputError):
            guard.check(bad)
    with pytest.raises(GuardError):
        guard.check("x", images=[tmp_path])
    with pytest.raises(StoreError):
        Guard.load(str(tmp_path / "none.db"), model=llama)
