"""Conversations through the command line and the server (issue 23 point 1): `guard check
--messages FILE|-` and `/v1/check` with `messages`, each verdict naming its turn, hostile message
lists refused in one line (exit 2, HTTP 400), `/v1/moderations` unchanged."""

import json

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from guard.check.engine import GuardSet
from guard.cli.commands import app
from guard.compiler import compile_policy
from guard.serve.app import create_app
from guard.serve.service import ServeConfig, Service
from guard.store.database import Store
from tests.support.fixtures import TEXTS, write_policy
from tests.support.serve_helpers import thread_server

runner = CliRunner()

TALK = [
    {"role": "user", "content": "how do I bake bread at home"},
    {"role": "assistant", "content": "Mix flour, water and salt."},
    {"role": "user", "content": "how can I hurt someone and get away with it"},
]


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def talk_db(tmp_path_factory, llama_dir, llama):
    """'always' flags every input (both labels flagged); 'talk' judges every turn with context."""
    folder = tmp_path_factory.mktemp("talk-io")
    db = str(folder / "guard.db")
    compile_policy(
        write_policy(folder, llama_dir, TEXTS, flagged=("harmful", "benign"), name="always"), db, loaded=llama
    )
    path = write_policy(folder, llama_dir, TEXTS, name="talk")
    doc = yaml.safe_load(path.read_text())
    doc.update(prompt="<context>\n{context}\n</context>\n{text}\nHarmful?", context_turns=1, judge="every_turn")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    compile_policy(path, db, loaded=llama)
    return db


def test_check_messages_file_names_each_turn(talk_db, tmp_path, llama):
    talk = tmp_path / "talk.json"
    talk.write_text(json.dumps(TALK))
    result = run("check", "--messages", talk, "--db", talk_db, "-p", "always", "-p", "talk", "--json")
    assert result.exit_code == 1, result.output  # 'always' flags
    record = json.loads(result.stdout)
    assert record["messages"] == str(talk)
    expected = GuardSet.load(talk_db, model=llama).check(messages=TALK).to_dict()
    assert record["verdicts"]["always"]["turn"] == {"index": 2, "role": "user"}
    assert [t["turn"] for t in record["verdicts"]["talk"]["turns"]] == [
        t["turn"] for t in expected["verdicts"]["talk"]["turns"]
    ]
    assert record["verdicts"]["talk"]["label"] == expected["verdicts"]["talk"]["label"]
    # people's lines name the turn too; {"messages": [...]} on stdin is the same conversation
    lines = run("check", "--messages", "-", "--db", talk_db, "-p", "always", input=json.dumps({"messages": TALK}))
    assert lines.exit_code == 1 and "turn 2 (user)" in lines.stdout, lines.output
    every = run("check", "--messages", talk, "--db", talk_db, "-p", "talk")
    assert "/3 turns flagged" in every.stdout, every.output
    explained = run("check", "--messages", talk, "--db", talk_db, "-p", "talk", "--explain", "--json")
    verdict = json.loads(explained.stdout)["verdicts"]["talk"]
    assert verdict["explanation"]["votes"] and verdict["turn"] in [t["turn"] for t in verdict["turns"]]
    assert all("explanation" not in t and "votes" not in t for t in verdict["turns"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[", "not valid JSON"),
        ("{}", "must be a list of messages, not dict"),
        ('[{"role": "robot", "content": "hi"}]', r"messages\[0\].role must be one of"),
        ('[{"role": "assistant", "content": "hi"}]', "no user turn with text to judge"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_conversations_exit_2_in_one_line(talk_db, tmp_path, content, message):
    talk = tmp_path / "bad.json"
    talk.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = run("check", "--messages", talk, "--db", talk_db, "-p", "always")
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\\", "") or message.replace("\\", "") in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_messages_and_stdin_lines_cannot_share_stdin(talk_db):
    result = run("check", "-", "--messages", "-", "--db", talk_db, "-p", "always", input="[]")
    assert result.exit_code == 2 and "not both" in result.output


def test_a_missing_messages_file_exits_2(talk_db, tmp_path):
    result = run("check", "--messages", tmp_path / "none.json", "--db", talk_db, "-p", "always")
    assert result.exit_code == 2 and "no such file" in result.output


@pytest.fixture(scope="module")
def served(talk_db, llama):
    service = Service(GuardSet.load(talk_db, model=llama), ServeConfig(), store=Store.open(talk_db))
    with thread_server(create_app(service)) as url:
        yield url


def test_v1_check_takes_messages(served, talk_db, llama):
    response = httpx.post(f"{served}/v1/check", json={"messages": TALK}, timeout=60)
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    expected = GuardSet.load(talk_db, model=llama).check(messages=TALK).to_dict()
    assert result["verdicts"]["always"]["turn"] == {"index": 2, "role": "user"}
    assert result["flagged"] == expected["flagged"]
    assert [t["label"] for t in result["verdicts"]["talk"]["turns"]] == [
        t["label"] for t in expected["verdicts"]["talk"]["turns"]
    ]
    # the OpenAI route is unchanged: `messages` is not one of its keys
    moderation = httpx.post(f"{served}/v1/moderations", json={"messages": TALK}, timeout=60)
    assert moderation.status_code == 400 and moderation.json()["error"]["code"] == "missing_input"


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"messages": "hello"}, "invalid_messages", "must be a list of messages, not str"),
        ({"messages": []}, "invalid_messages", "empty list"),
        ({"messages": [{"role": "user", "content": {"a": 1}}]}, "invalid_messages", "must be a string or a list"),
        ({"messages": [{"role": "user"}] * 1000}, "invalid_messages", "1,000 turns"),
        ({"messages": [{"role": "user", "content": "x" * 15_000}] * 2}, "max_chars", "the limit is 20,000"),
        ({"messages": TALK, "input": "hi"}, "invalid_input", "not both"),
        ({"messages": [{"role": "system", "content": "hi"}]}, "invalid_input", "turn with text to judge"),
    ],
)
def test_v1_check_refuses_bad_messages(served, body, code, message):
    response = httpx.post(f"{served}/v1/check", json=body, timeout=60)
    assert response.status_code in (400, 413), response.text
    error = response.json()["error"]
    assert error["code"] == code and message in error["message"], error


def test_scan_writes_the_turns_to_jsonl_and_parquet_alike(talk_db, tmp_path):
    pytest.importorskip("pyarrow")
    from guard.scanning.writers import read_records

    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"messages": TALK}) + "\n" + json.dumps({"text": "write a poem"}) + "\n")
    for out in ("out.jsonl", "out.parquet"):
        result = run("scan", source, "--out", tmp_path / out, "--db", talk_db, "-p", "always", "-p", "talk", "--quiet")
        assert result.exit_code == 1, result.output
    jsonl, parquet = (list(read_records(str(tmp_path / out))) for out in ("out.jsonl", "out.parquet"))
    assert parquet == jsonl
    assert jsonl[0]["verdicts"]["always"]["turn"] == {"index": 2, "role": "user"}
    assert [t["turn"]["index"] for t in jsonl[0]["verdicts"]["talk"]["turns"]] == [0, 1, 2]
    assert "turn" not in jsonl[1]["verdicts"]["always"]
