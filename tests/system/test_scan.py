"""`guard scan` and `guard.scan`: one record per item in order, error records, streaming,
resume after SIGKILL, Parquet in and out, images, and the `check -` stdin fix."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guard.cli.commands import app
from guard.errors import GuardError
from guard.scanning.writers import read_records
from tests.support.fixtures import TEXTS, write_policy

runner = CliRunner()
GUARD = Path(sys.executable).parent / "guard"


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def scan_db(tmp_path_factory, llama_dir):
    """'tiny' (harmful flagged) and 'never' (nothing flagged), same prompt, one database."""
    tmp = tmp_path_factory.mktemp("scan-db")
    db = str(tmp / "guard.db")
    for name, flagged in (("tiny", ("harmful",)), ("never", ())):
        result = run("compile", write_policy(tmp, llama_dir, TEXTS, flagged=flagged, name=name), "--db", db)
        assert result.exit_code == 0, result.output
    return db


@pytest.fixture(scope="module")
def guards(scan_db):
    from guard import GuardSet

    return GuardSet.load(scan_db, ["tiny", "never"], device="cpu")


WORDS = ["bread", "weapon", "poem", "steal", "sea", "hurt", "France", "car", "python", "threat"]


def corpus_line(i: int) -> str:
    """Line i of a corpus with ids, where some lines are blank, broken, lack text or are too long."""
    if i % 97 == 5:
        return ""
    if i % 89 == 7:
        return '{"id": "broken", "text": '
    if i % 151 == 11:
        return json.dumps({"id": f"item-{i}", "body": "no text field"})
    if i == 13:
        return json.dumps({"id": f"item-{i}", "text": "word " * 600})  # past the tiny model's 512 positions
    text = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(1 + i % 23))
    return json.dumps({"id": f"item-{i}", "text": text})


def expected_error(i: int) -> str | None:
    line = corpus_line(i)
    if not line:
        return f"line {i + 1}: empty text: nothing to check"
    if line.startswith('{"id": "broken"'):
        return f"line {i + 1}: not valid JSON (Expecting value)"
    if "body" in line:
        return f"line {i + 1}: no 'text' (the text field)"
    if i == 13:
        return "too long"
    return None


def write_corpus(path: Path, n: int) -> Path:
    path.write_text("".join(corpus_line(i) + "\n" for i in range(n)))
    return path


def test_two_thousand_items_in_order_with_error_records(tmp_path, scan_db, guards):
    corpus = write_corpus(tmp_path / "posts.jsonl", 2000)
    out = tmp_path / "results.jsonl"
    result = run("scan", corpus, "--out", out, "--db", scan_db, "-p", "tiny", "-p", "never", "--id-field", "id",
                 "--batch-size", "64", "--json")  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    records = list(read_records(str(out)))
    assert len(records) == 2000
    errors = 0
    for i, record in enumerate(records):
        reason = expected_error(i)
        line = corpus_line(i)
        if reason is None:
            assert record["id"] == f"item-{i}" and set(record) == {"id", "flagged", "verdicts"}
            assert list(record["verdicts"]) == ["tiny", "never"] and "votes" not in record["verdicts"]["tiny"]
            assert record["flagged"] == record["verdicts"]["tiny"]["flagged"]
            continue
        errors += 1
        assert set(record) == {"id", "error"}
        assert record["error"].startswith(reason), (i, record)
        # an id that could not be read is unknown (null); one that could stays with its error
        assert record["id"] == (json.loads(line)["id"] if "body" in line or i == 13 else None)
    summary = json.loads(result.stdout)
    assert summary["items"] == 2000 and summary["errors"] == errors and summary["checked"] == 2000 - errors
    flagged = sum(bool(r.get("flagged")) for r in records)
    assert summary["flagged"] == flagged and summary["flagged_labels"] == (
        {"tiny": {"harmful": flagged}} if flagged else {}
    )
    assert result.exit_code == (1 if flagged else 0)

    # the streamed windows give the verdicts one-at-a-time checks give (an independent path)
    from guard import Guard

    single = Guard(guards.policies[0].artifact, guards.loaded)
    for i in range(0, 2000, 97):
        if expected_error(i) is None:
            verdict = single.check(json.loads(corpus_line(i))["text"]).to_dict()
            verdict.pop("votes")
            assert records[i]["verdicts"]["tiny"] == verdict


def test_library_scan_is_lazy_and_matches_check_batch(guards):
    """guard.scan reads one window ahead, never the whole input, and gives check_batch's verdicts."""
    import guard

    taken = []

    def texts():
        for i in range(200):
            taken.append(i)
            yield "" if i == 3 else f"how do I {WORDS[i % 10]} number {i}"

    records = guard.scan(texts(), guards, batch_size=4, window=8)
    first = next(records)
    assert first["id"] == 1 and len(taken) <= 9  # one window (plus the look that ends it) read so far
    rest = [first, *records]
    assert len(taken) == 200 and [r["id"] for r in rest] == list(range(1, 201))
    assert rest[3] == {"id": 4, "error": "empty text: nothing to check"}
    whole = guards.check_batch([f"how do I {WORDS[i % 10]} number {i}" for i in range(200) if i != 3], batch_size=16)
    from guard.scanning.scanner import result_record

    expected = [result_record(r["id"], v) for r, v in zip([r for r in rest if "error" not in r], whole)]
    assert [r for r in rest if "error" not in r] == expected


def test_check_stdin_one_record_per_line_in_order(scan_db):
    lines = ["first text", "", "   ", "second text", "third one"]
    result = run("check", "-", "--db", scan_db, "-p", "never", "--json", "--batch-size", "2",
                 input="\n".join(lines) + "\n")  # fmt: skip
    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5]
    assert records[1] == {"line": 2, "error": "empty text: nothing to check"} and "error" in records[2]
    assert all(r["flagged"] is False for i, r in enumerate(records) if i not in (1, 2))
    assert result.exit_code == 2  # an input error, after every other line got its record
    clean = run("check", "-", "--db", scan_db, "-p", "tiny", "--json", input="hurt someone\nbake bread\n")
    assert clean.exit_code == (1 if any(json.loads(x)["flagged"] for x in clean.stdout.splitlines()) else 0)


def test_check_stdin_bad_utf8_is_one_error_line(scan_db):
    data = b"good line\n\xff\xfe broken\nanother good line\n"
    proc = subprocess.run(
        [GUARD, "check", "-", "--db", scan_db, "-p", "never", "--json"], input=data, capture_output=True, timeout=120
    )
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3]
    assert records[1] == {"line": 2, "error": "not valid UTF-8"} and records[2]["flagged"] is False
    assert proc.returncode == 2


def scan_args(corpus, out, db, *extra):
    return ["scan", str(corpus), "--out", str(out), "--db", db, "-p", "tiny", "--id-field", "id", *extra]


def test_resume_after_sigkill_gives_the_uninterrupted_output(tmp_path, scan_db):
    corpus = write_corpus(tmp_path / "posts.jsonl", 240)
    whole = tmp_path / "whole.jsonl"
    assert run(*scan_args(corpus, whole, scan_db, "--batch-size", "8")).exit_code in (0, 1)

    out = tmp_path / "killed.jsonl"
    proc = subprocess.Popen([GUARD, *scan_args(corpus, out, scan_db, "--batch-size", "8", "--window", "8")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 24:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the scan finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    written = out.read_bytes().count(b"\n")
    assert 24 <= written < 240
    with open(out, "ab") as f:
        f.write(b'{"id": "item-99", "flag')  # a torn last line, as a kill mid-write leaves

    refused = run(*scan_args(corpus, out, scan_db))
    assert refused.exit_code == 2 and "--resume" in refused.stderr
    resumed = run(*scan_args(corpus, out, scan_db, "--resume", "--json"))
    assert resumed.exit_code in (0, 1), resumed.output
    summary = json.loads(resumed.stdout)
    assert summary["resumed"] == written and summary["items"] == 240  # each id checked once
    assert out.read_bytes() == whole.read_bytes()


def test_resume_refuses_other_inputs(tmp_path, scan_db):
    corpus = write_corpus(tmp_path / "posts.jsonl", 30)
    out = tmp_path / "r.jsonl"
    assert run(*scan_args(corpus, out, scan_db)).exit_code in (0, 1)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"id": f"other-{i}", "text": "hi"}) + "\n" for i in range(40)))
    result = run(*scan_args(other, out, scan_db, "--resume"))
    assert result.exit_code == 2 and "not the same inputs" in result.stderr


def test_exit_codes_and_default_ids_for_text_and_csv(tmp_path, scan_db):
    texts = tmp_path / "posts.txt"
    texts.write_text("one\n\ntwo\nthree\n")
    out = tmp_path / "t.jsonl"
    result = run("scan", texts, "--out", out, "--db", scan_db, "-p", "never", "--quiet")
    assert result.exit_code == 0, result.output
    records = list(read_records(str(out)))
    assert [r["id"] for r in records] == [1, 2, 3, 4] and records[1]["error"] == "empty text: nothing to check"
    assert "4 items" in result.stdout and "1 errors" in result.stdout

    table = tmp_path / "posts.csv"
    table.write_text('post,body\na,"line one\nline two"\nb,\nc,hello\n')
    out = tmp_path / "c.jsonl"
    result = run(
        "scan", table, "--out", out, "--db", scan_db, "-p", "never", "--id-field", "post", "--text-field", "body"
    )
    assert result.exit_code == 0, result.output
    records = list(read_records(str(out)))
    assert [r["id"] for r in records] == ["a", "b", "c"] and records[1]["error"] == "empty text: nothing to check"
    always = tmp_path / "always.jsonl"  # 'tiny' flags something in this corpus, or the exit is 0
    flagged = run("scan", table, "--out", always, "--db", scan_db, "-p", "tiny", "--text-field", "body")
    any_flagged = any(r.get("flagged") for r in read_records(str(always)))
    assert flagged.exit_code == (1 if any_flagged else 0)


def test_parquet_in_and_out(tmp_path, scan_db):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 300
    texts = ["" if i % 50 == 4 else f"please {WORDS[i % 10]} {WORDS[(i * 3) % 10]} {i}" for i in range(n)]
    ids = [1000 + i for i in range(n)]
    pq.write_table(pa.table({"post_id": ids, "content": texts, "other": list(range(n))}), tmp_path / "in.parquet",
                   row_group_size=64)  # fmt: skip
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"post_id": i, "content": t}) + "\n" for i, t in zip(ids, texts))
    )
    common = ["--db", scan_db, "-p", "tiny", "-p", "never", "--id-field", "post_id", "--text-field", "content"]
    assert run("scan", tmp_path / "in.parquet", "--out", tmp_path / "out.parquet", *common).exit_code in (0, 1)
    assert run("scan", tmp_path / "in.jsonl", "--out", tmp_path / "out.jsonl", *common).exit_code in (0, 1)
    assert not (tmp_path / "out.parquet.partial.jsonl").exists()
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("id").type == pa.int64() and table.num_rows == n
    from_parquet = list(read_records(str(tmp_path / "out.parquet")))
    assert from_parquet == list(read_records(str(tmp_path / "out.jsonl")))
    assert from_parquet[4] == {"id": 1004, "error": "empty text: nothing to check"}

    explained = tmp_path / "explained.parquet"
    assert run("scan", tmp_path / "in.parquet", "--out", explained, *common, "--explain").exit_code in (0, 1)
    first = next(read_records(str(explained)))
    assert len(first["verdicts"]["tiny"]["votes"]) == 4 and first["verdicts"]["tiny"]["votes"][0]["label"] in TEXTS


def test_usage_errors_are_one_line(tmp_path, scan_db):
    texts = tmp_path / "posts.txt"
    texts.write_text("one\n")
    cases = [
        (["scan", texts, "--out", tmp_path / "x.csv", "--db", scan_db], "results go to .jsonl or .parquet"),
        (["scan", tmp_path / "missing.jsonl", "--out", tmp_path / "x.jsonl", "--db", scan_db], "no such file"),
        (["scan", texts, "--out", tmp_path / "x.jsonl", "--db", scan_db, "--format", "xml"], "unknown input format"),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1


def test_image_folder_and_manifest(tmp_path, vlm_dirs, colour_data, db):
    import yaml

    doc = {
        "name": "colours",
        "model": str(vlm_dirs("llava")),
        "prompt": "What colour is this image?",
        "data_root": colour_data.name,
        "labels": [{"name": "red", "flagged": True}, {"name": "blue"}],
        "exemplars": [{"from": "train", "format": "folder"}],
        "heads": 4,
    }
    (tmp_path / "colours.yaml").write_text(yaml.safe_dump(doc))
    assert run("compile", tmp_path / "colours.yaml", "--db", db, "--data-root", colour_data.parent).exit_code == 0
    folder = tmp_path / "imgs"
    folder.mkdir()
    for path in sorted((colour_data / "heldout" / "red").glob("*.png"))[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "zz-broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "imgs.jsonl"
    result = run("scan", folder, "--out", out, "--db", db, "--json")
    assert result.exit_code in (0, 1), result.output
    records = list(read_records(str(out)))
    assert [r["id"] for r in records] == sorted(p.name for p in folder.iterdir())
    assert records[-1]["error"].startswith(str(folder / "zz-broken.png")) and "flagged" in records[0]

    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"m{i}", "file": r["id"]}) + "\n" for i, r in enumerate(records)))
    out2 = tmp_path / "manifest-out.jsonl"
    args = [
        "scan",
        manifest,
        "--out",
        out2,
        "--db",
        db,
        "--id-field",
        "id",
        "--image-field",
        "file",
        "--images",
        folder,
    ]
    assert run(*args).exit_code in (0, 1)
    again = list(read_records(str(out2)))
    assert [r.get("verdicts") for r in again] == [r.get("verdicts") for r in records]
    assert [r["id"] for r in again] == ["m0", "m1", "m2", "m3"] and "error" in again[3]


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_sigterm_keeps_what_was_written(tmp_path, scan_db):
    corpus = write_corpus(tmp_path / "posts.jsonl", 200)
    out = tmp_path / "t.jsonl"
    proc = subprocess.Popen([GUARD, *scan_args(corpus, out, scan_db, "--batch-size", "8", "--window", "8")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not (out.exists() and out.stat().st_size):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"--resume" in err
    assert out.read_bytes().endswith(b"\n")  # only whole records


def test_shards_read_the_same_items_as_whole_files(tmp_path, colour_data):
    """Ray's shards (line ranges, Parquet row groups, folder slices) give exactly the items, ids
    and numbering of reading each input whole; several inputs get 'PATH:N' ids."""
    import dataclasses

    import pyarrow as pa
    import pyarrow.parquet as pq

    import guard.scanning.readers as scan_input
    from guard.scanning.readers import Columns, count_items, plan, read_items, read_shard

    corpus = write_corpus(tmp_path / "posts.jsonl", 300)
    (tmp_path / "tail.txt").write_bytes(b"one\n\xff bad\nthree")  # no newline at the end
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(130)]}), tmp_path / "t.parquet", row_group_size=40)
    folder = colour_data / "heldout"
    inputs = [str(corpus), str(tmp_path / "tail.txt"), str(tmp_path / "t.parquet"), str(folder)]
    columns = Columns(prompt="what colour?")
    whole = [dataclasses.asdict(item) for item in read_items(inputs, columns)]
    scan_input.IMAGES_PER_SHARD, saved = 3, scan_input.IMAGES_PER_SHARD
    try:
        shards = plan(inputs, shard_bytes=700)
    finally:
        scan_input.IMAGES_PER_SHARD = saved
    assert len({s.path for s in shards}) == 4 and len(shards) > 12
    assert [dataclasses.asdict(item) for s in shards for item in read_shard(s, columns)] == whole
    assert len(whole) == 300 + 3 + 130 + 20 == count_items(inputs)
    assert whole[301]["id"] == f"{tmp_path / 'tail.txt'}:2" and whole[301]["error"] == "not valid UTF-8"
    assert whole[302]["fields"] == {"text": "three"} and whole[303]["id"] == f"{tmp_path / 't.parquet'}:1"
    assert whole[-1]["id"] == f"{folder}:red/" + sorted(p.name for p in (folder / "red").iterdir())[-1]


def test_shards_around_an_over_long_line(tmp_path):
    """A line over the limit is one error item wherever the byte-offset shards cut: its bytes are
    thrown away in bounded reads and still counted, so the lines after it keep their numbers."""
    import dataclasses

    from guard.limits import LIMITS, line_too_long
    from guard.scanning.readers import plan, read_items, read_shard

    path = tmp_path / "long.txt"
    lines = [f"line {i}" for i in range(1, 40)]
    lines[20] = "y" * (3 * LIMITS.max_line_bytes)  # line 21
    path.write_text("\n".join(lines) + "\n" + "z" * (2 * LIMITS.max_line_bytes))  # line 40, no newline
    whole = [dataclasses.asdict(item) for item in read_items([str(path)])]
    assert [item["id"] for item in whole] == list(range(1, 41))
    assert whole[20] == {"id": 21, "fields": {}, "error": line_too_long()} and whole[39]["error"] == line_too_long()
    assert whole[21]["fields"] == {"text": "line 22"} and whole[38]["fields"] == {"text": "line 39"}
    for shard_bytes in (50, 1000, LIMITS.max_line_bytes // 2):
        shards = plan([str(path)], shard_bytes=shard_bytes)
        assert len(shards) >= 2 and sum(s.count for s in shards) == 40
        assert [dataclasses.asdict(item) for s in shards for item in read_shard(s)] == whole


def test_manifest_image_paths_stay_under_the_data_root(tmp_path, scan_db):
    """Issue 18: absolute, ../ and symlinked image paths in a manifest that lead out of the data
    root are refused with the same words as a missing file, so records say nothing of what exists
    elsewhere; --data-root widens the root."""
    from guard.scanning.readers import Columns, read_items

    (tmp_path / "outside.png").write_bytes(b"outside the root")
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "inside.png").write_bytes(b"not really a png")
    (folder / "link.png").symlink_to(tmp_path / "outside.png")
    names = ["inside.png", "../outside.png", str(tmp_path / "outside.png"), "link.png", "missing.png", "/etc/passwd"]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"m{i}", "file": n}) + "\n" for i, n in enumerate(names)))

    def errors(**options):
        columns = Columns(id="id", image="file", prompt="what is this", images=str(folder), **options)
        return {item.id: item.error for item in read_items([str(manifest)], columns)}

    found = errors()
    assert found["m0"] is None  # inside the root: read (and judged) later
    for i, name in list(enumerate(names))[1:]:
        assert found[f"m{i}"] == f"line {i + 1}: image '{name}' is not a file under the data root", name
    wider = errors(data_root=str(tmp_path))
    assert wider["m1"] is None and wider["m2"] is None and wider["m3"] is None  # now inside the root
    assert wider["m4"] == found["m4"] and wider["m5"] == found["m5"]

    out = tmp_path / "out.jsonl"
    args = ["scan", manifest, "--out", out, "--db", scan_db, "-p", "tiny", "--id-field", "id", "--image-field", "file"]
    result = run(*args, "--images", folder, "--prompt", "what is this")
    assert result.exit_code in (0, 1, 2), result.output
    records = {r["id"]: r for r in read_records(str(out))}
    assert records["m5"]["error"] == "line 6: image '/etc/passwd' is not a file under the data root"
    assert "not a file under the data root" not in records["m0"].get("error", "")


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_a_scan_from_python_stops_on_sigterm_and_resumes_as_the_cli_does(tmp_path, scan_db, monkeypatch):
    """guard.scanning.run.run: SIGTERM mid-scan keeps the whole records written (ScanInterrupted,
    a KeyboardInterrupt), and resume=True finishes the file as an uninterrupted `guard scan` writes it."""
    import guard.scanning.run as scan_run
    from guard.scanning.readers import Columns

    corpus = write_corpus(tmp_path / "posts.jsonl", 60)
    whole = tmp_path / "whole.jsonl"
    assert run(*scan_args(corpus, whole, scan_db, "--batch-size", "4", "--window", "8")).exit_code in (0, 1)

    out = tmp_path / "python.jsonl"
    settings = dict(db=scan_db, policies=["tiny"], columns=Columns(id="id"), batch_size=4, window=8, device="cpu")
    real_write, windows_written = scan_run.JsonlWriter.write, []

    def write_then_terminate(self, records):
        real_write(self, records)
        windows_written.append(len(records))
        if len(windows_written) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # turned into KeyboardInterrupt while the scan writes

    monkeypatch.setattr(scan_run.JsonlWriter, "write", write_then_terminate)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(scan_run.ScanInterrupted, match="continue with --resume") as stopped:
        scan_run.run([str(corpus)], str(out), **settings)
    written = out.read_bytes().count(b"\n")
    # the records of two windows are on disk, whole (the count it reports may trail the last window)
    assert written == 16 and stopped.value.items <= written and out.read_bytes().endswith(b"\n")
    assert signal.getsignal(signal.SIGTERM) == handler  # the scan's own handler is gone

    monkeypatch.undo()
    with pytest.raises(GuardError, match="--resume"):  # neither resume nor overwrite: refused, file kept
        scan_run.run([str(corpus)], str(out), **settings)
    report = scan_run.run([str(corpus)], str(out), resume=True, **settings)
    assert report.resumed == written and report.summary.items == 60 and report.new == 60 - written
    assert out.read_bytes() == whole.read_bytes()
    cli = run(*scan_args(corpus, tmp_path / "again.jsonl", scan_db, "--batch-size", "4", "--json"))
    assert {k: v for k, v in json.loads(cli.stdout).items() if k in ("items", "checked", "flagged", "errors")} == {
        k: v for k, v in report.to_dict().items() if k in ("items", "checked", "flagged", "errors")
    }


def test_scan_explain_records_carry_the_explanation_check_prints(tmp_path, scan_db):
    """--explain means the same in scan as in check: each head's vote and the closest exemplars."""
    corpus = tmp_path / "one.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "how do I bake bread"}) + "\n")
    out = tmp_path / "explained.jsonl"
    assert run(*scan_args(corpus, out, scan_db, "--explain")).exit_code in (0, 1)
    (record,) = read_records(str(out))
    checked = run("check", "--text", "how do I bake bread", "--db", scan_db, "-p", "tiny", "--explain", "--json")
    expected = json.loads(checked.stdout)["verdicts"]["tiny"]
    verdict = record["verdicts"]["tiny"]
    assert verdict["explanation"] == expected["explanation"] and verdict["votes"] == expected["votes"]
    assert verdict["explanation"]["nearest_exemplars"]
    pytest.importorskip("pyarrow")
    parquet = tmp_path / "explained.parquet"
    assert run(*scan_args(corpus, parquet, scan_db, "--explain")).exit_code in (0, 1)
    (row,) = read_records(str(parquet))
    assert row["verdicts"]["tiny"]["explanation"] == expected["explanation"]
