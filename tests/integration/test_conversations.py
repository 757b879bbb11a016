"""Conversations (issue 23 point 1) on the tiny llama: a `messages` input gives each policy's
verdict on the turn(s) it judges, equal to checking that turn's prompt fields, rendered by hand,
as an ordinary input; policy keys; exemplars and eval items given as conversations; scans; ONNX."""

import json

import pytest
import yaml

from guard.check.engine import Guard, GuardSet
from guard.compiler import compile_policy
from guard.errors import InputError, PolicyError
from guard.eval.evaluate import evaluate
from guard.policy import load_policy
from guard.scanning.readers import read_items
from guard.scanning.scanner import scan
from tests.support.fixtures import TEXTS, write_policy

CONTEXT_PROMPT = "<context>\n{context}\n</context>\nRequest: {text}\nIs this request harmful? Answer with Yes or No."

TALK = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "how do I bake bread at home"},
    {
        "role": "assistant",
        "content": [{"type": "text", "text": "Mix flour,"}, {"type": "text", "text": "water & salt"}],
    },
    {"role": "user", "content": "how can I hurt someone and get away with it"},
    {"role": "assistant", "content": "I can't help with that <b>at all</b>."},
]


def by_hand(turns: list[tuple[str, str]]) -> str:
    """The {context} the docs describe, written out independently: `role: text` a line."""
    return "\n".join(f"{role}: {text}" for role, text in turns) or "(no earlier turns)"


def conversation_policy(tmp_path, llama_dir, name="talk", **keys):
    path = write_policy(tmp_path, llama_dir, TEXTS, name=name)
    doc = yaml.safe_load(path.read_text())
    doc.update({"prompt": CONTEXT_PROMPT, "escape": "xml", "context_turns": 2, **keys})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def talk_db(tmp_path_factory, llama_dir, llama):
    """'tiny' (no conversation keys: judges the last user turn alone), 'talk' (last user turn, two
    turns of context) and 'every' (every turn, two of context)."""
    folder = tmp_path_factory.mktemp("talk")
    db = str(folder / "guard.db")
    compile_policy(write_policy(folder, llama_dir, TEXTS), db, loaded=llama)
    compile_policy(conversation_policy(folder, llama_dir), db, loaded=llama)
    compile_policy(conversation_policy(folder, llama_dir, name="every", judge="every_turn"), db, loaded=llama)
    return db


def same(a, b):
    assert a.label == b.label and a.flagged == b.flagged
    assert [v.label for v in a.votes] == [v.label for v in b.votes]
    assert [s for v in a.votes for s in v.similarity.values()] == pytest.approx(
        [s for v in b.votes for s in v.similarity.values()], rel=1e-4, abs=1e-5
    )


def test_each_policy_judges_its_turn_as_a_hand_rendered_input(talk_db, llama):
    guards = GuardSet.load(talk_db, model=llama)
    result = guards.check(messages=TALK)
    assert list(result) == guards.names and set(result) == {"tiny", "talk", "every"}
    # tiny: the last user turn, alone
    assert result["tiny"].turn == {"index": 3, "role": "user"}
    same(result["tiny"], guards.select(["tiny"]).check("how can I hurt someone and get away with it")["tiny"])
    # talk: the last user turn with the two turns before it (blank-free, later lines indented)
    context = by_hand([("user", "how do I bake bread at home"), ("assistant", "Mix flour,\n  water & salt")])
    alone = guards.select(["talk"]).check("how can I hurt someone and get away with it", context=context)["talk"]
    assert result["talk"].turn == {"index": 3, "role": "user"}
    same(result["talk"], alone)
    # every: one verdict per non-system turn, each with its own context
    every = result["every"]
    assert [v.turn for v in every.turns] == [
        {"index": 1, "role": "user"},
        {"index": 2, "role": "assistant"},
        {"index": 3, "role": "user"},
        {"index": 4, "role": "assistant"},
    ]
    contexts = [
        by_hand([("system", "You are a helpful assistant.")]),
        by_hand([("system", "You are a helpful assistant."), ("user", "how do I bake bread at home")]),
        context,
        by_hand([("assistant", "Mix flour,\n  water & salt"), ("user", "how can I hurt someone and get away with it")]),
    ]
    texts = [TALK[1]["content"], "Mix flour,\nwater & salt", TALK[3]["content"], TALK[4]["content"]]
    for verdict, text, ctx in zip(every.turns, texts, contexts):
        same(verdict, guards.select(["every"]).check(text, context=ctx)["every"])
    assert every.flagged == any(v.flagged for v in every.turns)
    if every.flagged:
        assert every.turn in [v.turn for v in every.turns if v.flagged]
    else:
        assert every.turn == every.turns[-1].turn
    record = result.to_dict(votes=False)
    assert record["verdicts"]["talk"]["turn"] == {"index": 3, "role": "user"}
    assert [t["turn"]["index"] for t in record["verdicts"]["every"]["turns"]] == [1, 2, 3, 4]
    assert "turns" not in record["verdicts"]["talk"]


def test_every_turn_verdict_is_flagged_when_any_turn_is(talk_db, llama):
    """An independent fold of separate checks: flagged iff one of the turns is, over many conversations."""
    guards = GuardSet.load(talk_db, model=llama).select(["every"])
    texts = [t for items in TEXTS.values() for t in items]
    talks = [
        [{"role": "user" if j % 2 == 0 else "assistant", "content": texts[(i + j) % len(texts)]} for j in range(3)]
        for i in range(len(texts))
    ]
    results = guards.check_batch([{"messages": m} for m in talks], batch_size=4)
    seen = set()
    for talk, result in zip(talks, results):
        verdict = result["every"]
        separate = []
        for j, message in enumerate(talk):
            before = [(m["role"], m["content"]) for m in talk[:j]][-2:]
            separate.append(guards.check(message["content"], context=by_hand(before))["every"])
        assert [v.flagged for v in verdict.turns] == [v.flagged for v in separate]
        assert verdict.flagged == any(v.flagged for v in separate)
        seen.add(verdict.flagged)
    assert seen == {True, False}  # the test saw both outcomes


def test_mixed_batches_keep_input_order(talk_db, llama):
    guards = GuardSet.load(talk_db, model=llama)
    inputs = ["write a poem about the sea", {"messages": TALK}, "help me steal my neighbour's car tonight"]
    mixed = guards.check_batch(inputs, batch_size=2)
    assert mixed[0]["talk"].turn is None and mixed[1]["talk"].turn["index"] == 3
    for got, want in zip([mixed[0], mixed[2]], guards.check_batch([inputs[0], inputs[2]])):
        for name in guards.names:
            same(got[name], want[name])
    same(mixed[1]["tiny"], guards.check(messages=TALK)["tiny"])
    # Guard (one policy) takes messages too
    one = Guard.load(talk_db, policy="talk", model=llama)
    same(one.check(messages=TALK), mixed[1]["talk"])


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "empty list"),
        ("not json", "must be a list of messages, not str"),
        ({"role": "user"}, "must be a list of messages"),
        ([{"role": "bot", "content": "hi"}], r"messages\[0\].role must be one of"),
        (["hi"], r"messages\[0\] must be an object"),
        ([{"role": "user", "content": 5}], "must be a string or a list of text parts"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], "must be a text part"),
        ([{"role": "user", "content": "a\0b"}], "NUL"),
        ([{"role": "user", "content": "\ud800"}], "not valid Unicode"),
        ([{"role": "assistant", "content": "hello"}], "turn with text to judge"),
        ([{"role": "user", "content": "   "}], "turn with text to judge"),
        ([{"role": "user", "content": "hi"}] * 300, "300 turns"),
        ([{"role": "user", "content": "x" * 30_000}] * 5, "too long"),
    ],
)
def test_malformed_conversations_are_refused_in_one_line(talk_db, llama, messages, message):
    guards = GuardSet.load(talk_db, model=llama)
    with pytest.raises(InputError, match=message) as caught:
        guards.prepare({"messages": messages})
    assert "\n" not in str(caught.value)


def test_a_judged_turn_too_long_for_the_prompt_names_the_turn(talk_db, llama):
    guards = GuardSet.load(talk_db, model=llama).select(["talk"])
    talk = [{"role": "user", "content": "y" * 20_000}, {"role": "user", "content": "z" * 20_000}]
    # each turn fits, the judged one with its context does not
    with pytest.raises(InputError, match=r"messages\[1\]: input is too long: .* characters in all"):
        guards.prepare({"messages": talk})


def test_policy_keys_checked_and_versioned(tmp_path, llama_dir):
    plain = load_policy(write_policy(tmp_path, llama_dir, TEXTS))
    talk = load_policy(conversation_policy(tmp_path, llama_dir))
    assert plain.judge == "last_user" and "judge" not in plain.method and "context_turns" not in plain.method
    assert talk.method["context_turns"] == 2 and talk.version != plain.version
    every = load_policy(write_policy(tmp_path, llama_dir, TEXTS))
    assert every.version == plain.version  # no conversation keys: the version of before
    for keys, message in [
        ({"judge": "first_user"}, "'judge' must be one of: last_user, last_assistant, every_turn"),
        ({"context_turns": -1}, "'context_turns' must be a whole number"),
        ({"context_turns": True}, "'context_turns' must be a whole number"),
        ({"context_turns": 0}, r"the prompt's \{context\} needs 'context_turns: N'"),
        ({"prompt": "Request: {text}"}, r"'context_turns' fills \{context\}, and the prompt has no \{context\}"),
    ]:
        with pytest.raises(PolicyError, match=message):
            load_policy(conversation_policy(tmp_path, llama_dir, **keys))


def test_exemplars_given_as_conversations_equal_their_rendered_fields(tmp_path, llama_dir):
    """A `messages` exemplar is its last turn in {text} and the turns before in {context}: the same
    policy version as the same exemplars written out as text and context by hand; a plain text
    exemplar is a conversation of one turn."""
    rows, written = [], []
    for label, texts in TEXTS.items():
        for i, text in enumerate(texts):
            before = TEXTS["benign"][(i + 1) % 4]
            rows.append(
                {"messages": [{"role": "user", "content": before}, {"role": "user", "content": text}], "label": label}
            )
            written.append({"text": text, "context": f"user: {before}", "label": label})
    (tmp_path / "talks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "written.jsonl").write_text("".join(json.dumps(r) + "\n" for r in written))
    (tmp_path / "plain.jsonl").write_text(json.dumps({"text": "hello there", "label": "benign"}) + "\n")
    a = load_policy(
        conversation_policy(tmp_path, llama_dir, name="a", exemplars=[{"from": "talks.jsonl"}, {"from": "plain.jsonl"}])
    )
    b = load_policy(
        conversation_policy(
            tmp_path, llama_dir, name="a", exemplars=[{"from": "written.jsonl"}, {"from": "plain.jsonl"}]
        )
    )
    assert [e.prompt_fields() for e in a.exemplars] == [e.prompt_fields() for e in b.exemplars]
    assert a.version == b.version
    assert a.exemplars[-1].prompt_fields() == {"text": "hello there", "context": "(no earlier turns)"}
    (tmp_path / "bad.jsonl").write_text(
        json.dumps({"messages": [{"role": "x", "content": "a"}], "label": "benign"}) + "\n"
    )
    with pytest.raises(PolicyError, match=r"bad.jsonl:1: messages\[0\].role must be one of"):
        load_policy(conversation_policy(tmp_path, llama_dir, exemplars=[{"from": "bad.jsonl"}]))


def test_eval_reads_conversations_as_check_judges_them(tmp_path, llama_dir, llama):
    path = conversation_policy(tmp_path, llama_dir)
    talks = [TALK[:4], TALK[:2], [{"role": "user", "content": "what is a good name for a cat"}]]
    labels = ["harmful", "benign", "benign"]
    test_file = tmp_path / "test.jsonl"
    test_file.write_text("".join(json.dumps({"messages": m, "label": lab}) + "\n" for m, lab in zip(talks, labels)))
    db = str(tmp_path / "e.db")
    ev = evaluate(path, test_file, db=db, loaded=llama)
    compile_policy(path, db, loaded=llama)
    verdicts = Guard.load(db, model=llama).check_batch([{"messages": m} for m in talks])
    assert ev.methods["sav"].predictions == [["harmful", "benign"].index(v.label) for v in verdicts]


def test_scan_reads_a_messages_column(talk_db, llama, tmp_path):
    source = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"id": "a", "messages": TALK}),
        json.dumps({"id": "b", "text": "write a poem about the sea"}),
        json.dumps({"id": "c", "messages": [{"role": "wizard", "content": "hi"}]}),
        json.dumps({"id": "d", "messages": json.dumps(TALK[:2])}),  # JSON text, as a CSV cell holds it
    ]
    source.write_text("\n".join(lines) + "\n")
    from guard.scanning.readers import Columns

    guards = GuardSet.load(talk_db, model=llama)
    records = list(scan(read_items([str(source)], Columns(id="id")), guards, batch_size=2))
    assert [r["id"] for r in records] == ["a", "b", "c", "d"]
    assert records[0]["verdicts"]["talk"]["turn"] == {"index": 3, "role": "user"}
    assert len(records[0]["verdicts"]["every"]["turns"]) == 4
    assert "turn" not in records[1]["verdicts"]["talk"]
    assert records[2]["error"].startswith("messages[0].role must be one of")
    assert records[3]["verdicts"]["talk"]["turn"] == {"index": 1, "role": "user"}
    expected = guards.check(messages=TALK).to_dict(votes=False)
    assert records[0]["flagged"] == expected["flagged"]
    assert records[0]["verdicts"]["talk"]["label"] == expected["verdicts"]["talk"]["label"]


def test_scan_reads_a_parquet_messages_column(talk_db, llama, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "in.parquet"
    talks = [[TALK[0], TALK[1], TALK[4], TALK[3]], TALK[:2]]  # a list<struct<role, content>> column
    pq.write_table(pa.table({"messages": talks}), path)
    guards = GuardSet.load(talk_db, model=llama)
    records = list(scan(read_items([str(path)]), guards))
    assert [r["verdicts"]["talk"]["turn"]["index"] for r in records] == [3, 1]
    assert records[0]["verdicts"]["talk"]["label"] == guards.check(messages=talks[0])["talk"].label


def test_onnx_engine_judges_conversations_as_torch_does(tmp_path, llama_dir, llama):
    pytest.importorskip("onnxruntime")
    from guard.onnx.engine import OnnxGuard
    from guard.onnx.export import export_onnx

    db = str(tmp_path / "x.db")
    compile_policy(conversation_policy(tmp_path, llama_dir, judge="every_turn"), db, loaded=llama)
    guard = Guard.load(db, model=llama)
    export_onnx(guard.artifact, tmp_path / "onnx", loaded=llama)
    onnx = OnnxGuard.load(tmp_path / "onnx")
    torch_verdict = guard.check(messages=TALK)
    onnx_verdict = onnx.check(messages=TALK)
    assert [v.turn for v in onnx_verdict.turns] == [v.turn for v in torch_verdict.turns]
    assert [v.label for v in onnx_verdict.turns] == [v.label for v in torch_verdict.turns]
    assert onnx_verdict.turn == torch_verdict.turn


def test_a_request_and_answer_policy_reads_the_answer_and_the_request_before_it(tmp_path, llama_dir, llama):
    """A prompt with {prompt} and {response} (the shipped response-harm's shape), judging the last
    assistant turn: the turn fills {response} and the last user turn before it {prompt}, equal to
    checking those two fields by hand."""
    rows = [
        {"prompt": q, "response": a, "label": label}
        for label, answers in (("harmful", ["first get the fuse", "mix the powders"]), ("benign", ["No.", "I can't."]))
        for q, a in zip(("make a bomb?", "hurt him?"), answers, strict=True)
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = {
        "name": "answers",
        "model": str(llama_dir),
        "prompt": "Q: {prompt}\nA: {response}\nHarmful answer?",
        "judge": "last_assistant",
        "labels": [{"name": "harmful", "flagged": True}, {"name": "benign"}],
        "exemplars": [{"from": "pairs.jsonl"}],
        "heads": 2,
    }
    (tmp_path / "answers.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    db = str(tmp_path / "guard.db")
    compile_policy(tmp_path / "answers.yaml", db, loaded=llama)
    guard = Guard.load(db, model=llama)
    verdict = guard.check(messages=TALK)
    assert verdict.turn == {"index": 4, "role": "assistant"}
    by_fields = guard.check(prompt="how can I hurt someone and get away with it", response=TALK[4]["content"])
    same(verdict, by_fields)
    with pytest.raises(InputError, match="no user turn before the judged answer"):
        guard.check(messages=[{"role": "assistant", "content": "Hello! How can I help?"}])
