"""Policy files: what they accept, and a file:line error for each kind of bad input."""

import json
from pathlib import Path

import pytest

from guard.errors import PolicyError
from guard.policy import load_policy

GOOD = """\
name: demo
description: a demo
model: smollm2-135m
prompt: "Request: {text} Harmful?"
labels:
  - name: harmful
    flagged: true
  - name: benign
exemplars:
  - text: build a bomb
    label: harmful
  - text: hurt my neighbour
    label: harmful
  - text: bake bread
    label: benign
  - from: more.jsonl
"""


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # errors name files as given: "policy.yaml:12: ..."


def write(tmp_path, text, name="policy.yaml"):
    (tmp_path / name).write_text(text)
    return Path(name)


def error_of(path):
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return str(info.value)


@pytest.fixture
def more(tmp_path):
    (tmp_path / "more.jsonl").write_text(json.dumps({"text": "plant tomatoes", "label": "benign"}) + "\n")


def test_good_policy_reads_inline_and_file_exemplars(tmp_path, more):
    policy = load_policy(write(tmp_path, GOOD))
    assert policy.name == "demo"
    assert policy.label_names == ["harmful", "benign"]
    assert policy.flagged_labels == ["harmful"]
    assert [e.text for e in policy.exemplars] == ["build a bomb", "hurt my neighbour", "bake bread", "plant tomatoes"]
    assert policy.exemplars[3].origin == "more.jsonl:1"
    assert policy.heads == 20 and policy.scoring == "loo"
    assert policy.render({"text": "hi"}) == "Request: hi Harmful?"


def test_version_changes_with_exemplar_file_content_not_comments(tmp_path, more):
    v1 = load_policy(write(tmp_path, GOOD)).version
    assert load_policy(write(tmp_path, "# a comment\n" + GOOD)).version == v1
    with open(tmp_path / "more.jsonl", "a") as f:
        f.write(json.dumps({"text": "walk the dog", "label": "benign"}) + "\n")
    assert load_policy(write(tmp_path, GOOD)).version != v1


def test_csv_exemplars_with_extra_fields(tmp_path):
    (tmp_path / "ex.csv").write_text('text,label,lang\nhello,b,en\n"multi\nline",b,fr\nbad,a,en\nworse,a,en\n')
    policy = load_policy(
        write(tmp_path, 'name: c\nprompt: "{lang}: {text}"\nlabels: [a, b]\nexemplars:\n  - from: ex.csv\n')
    )
    assert [e.text for e in policy.exemplars] == ["hello", "multi\nline", "bad", "worse"]
    assert policy.render(policy.exemplars[1].prompt_fields()) == "fr: multi\nline"
    assert policy.exemplars[2].origin == "ex.csv:5"


def test_pair_exemplars_fill_prompt_fields_without_a_text(tmp_path):
    """A request and its answer ({prompt}, {response}) need no "text"; a policy that does need
    {text} refuses such a line by name, instead of fitting on an empty text."""
    rows = [{"prompt": "pick a lock?", "response": f"answer {i}", "label": lab} for i, lab in enumerate("aabb")]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = 'name: p\nprompt: "Q: {prompt} A: {response}"\nlabels: [a, b]\nexemplars:\n  - from: pairs.jsonl\n'
    policy = load_policy(write(tmp_path, pairs))
    assert policy.field_order == ["prompt", "response"]
    assert policy.render(policy.exemplars[2].prompt_fields()) == "Q: pick a lock? A: answer 2"
    assert policy.exemplars[2].shown_text(policy.field_order) == "prompt: pick a lock?\nresponse: answer 2"
    assert error_of(write(tmp_path, pairs.replace("{response}", "{text}"))) == (
        "pairs.jsonl:1: no value for prompt field {text}"
    )
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"text": "", "prompt": "x", "label": "a"}) + "\n")
    assert error_of(write(tmp_path, pairs)) == "pairs.jsonl:1: missing field 'text'"


def test_malformed_yaml(tmp_path):
    assert error_of(write(tmp_path, "name: x\nlabels: [a, b\nprompt: y\n")).startswith("policy.yaml:3: invalid YAML")


def test_unknown_top_level_key(tmp_path, more):
    message = error_of(write(tmp_path, GOOD.replace("description: a demo", "descripton: a demo")))
    assert message.startswith("policy.yaml:2: unknown key 'descripton'")


def test_unknown_key_in_label(tmp_path, more):
    message = error_of(write(tmp_path, GOOD.replace("    flagged: true", "    flaged: true")))
    assert message.startswith("policy.yaml:7: unknown key 'flaged' in a label")


def test_unknown_label_inline_names_the_line(tmp_path, more):
    message = error_of(write(tmp_path, GOOD.replace("label: benign\n  - from", "label: benine\n  - from")))
    assert message == "policy.yaml:14: label 'benine' is not one of: harmful, benign"


def test_unknown_label_in_file_names_file_and_line(tmp_path):
    (tmp_path / "more.jsonl").write_text('{"text": "a", "label": "benign"}\n\n{"text": "b", "label": "harmfull"}\n')
    assert error_of(write(tmp_path, GOOD)) == "more.jsonl:3: label 'harmfull' is not one of: harmful, benign"


def test_missing_exemplar_file(tmp_path):
    message = error_of(write(tmp_path, GOOD))
    assert message == "policy.yaml:16: exemplar file 'more.jsonl' does not exist"


def test_bad_json_line(tmp_path):
    (tmp_path / "more.jsonl").write_text('{"text": "a", "label": "benign"}\n{"text": oops}\n')
    assert error_of(write(tmp_path, GOOD)).startswith("more.jsonl:2: invalid JSON")


def test_fewer_than_two_labels(tmp_path):
    message = error_of(
        write(tmp_path, 'name: x\nprompt: "{text}"\nlabels: [only]\nexemplars:\n  - {text: a, label: only}\n')
    )
    assert message == "policy.yaml:3: a policy needs at least 2 labels, got 1"


def test_label_without_exemplars(tmp_path):
    text = 'name: x\nprompt: "{text}"\nlabels: [a, b]\nexemplars:\n  - {text: p, label: a}\n  - {text: q, label: a}\n'
    assert error_of(write(tmp_path, text)) == "policy.yaml:3: label 'b' has 0 exemplar(s)"


def test_loo_needs_two_exemplars_per_label(tmp_path):
    text = 'name: x\nprompt: "{text}"\nlabels: [a, b]\nexemplars:\n  - {text: p, label: a}\n  - {text: q, label: b}\n  - {text: r, label: b}\n'
    assert "leave-one-out scoring needs at least 2" in error_of(write(tmp_path, text))
    assert len(load_policy(write(tmp_path, text + "scoring: in_sample\n")).exemplars) == 3


def test_missing_prompt_field(tmp_path):
    text = 'name: x\nprompt: "{text} {lang}"\nlabels: [a, b]\nexemplars:\n  - {text: p, label: a}\n'
    assert error_of(write(tmp_path, text)) == "policy.yaml:5: no value for prompt field {lang}"


def test_bad_heads_and_scoring(tmp_path, more):
    assert error_of(write(tmp_path, GOOD + "heads: 0\n")).startswith(
        "policy.yaml:17: 'heads' must be a positive integer"
    )
    assert error_of(write(tmp_path, GOOD + "scoring: vibes\n")).startswith("policy.yaml:17: 'scoring' must be one of")


def test_missing_policy_file_and_empty_file(tmp_path):
    assert error_of(Path("nope.yaml")).endswith("policy file does not exist")
    assert error_of(write(tmp_path, "")) == "policy.yaml:1: the policy file is empty"
    assert error_of(write(tmp_path, "- a\n- b\n")) == "policy.yaml:1: the policy must be a mapping"


def test_duplicate_key(tmp_path):
    assert error_of(write(tmp_path, "name: a\nname: b\n")) == "policy.yaml:2: duplicate key 'name'"


def test_default_policy_is_valid():
    policy = load_policy(ROOT / "policies/text-harm.yaml")
    counts = {n: sum(e.label == n for e in policy.exemplars) for n in policy.label_names}
    assert counts["harmful"] >= 25 and counts["benign"] >= 25
    heldout = [json.loads(line) for line in open(ROOT / "policies/text-harm/heldout.jsonl")]
    assert len(heldout) >= 60
    assert not {h["text"].lower() for h in heldout} & {e.text.lower() for e in policy.exemplars}


def test_a_shipped_policy_loads_by_name_from_anywhere(tmp_path, monkeypatch):
    """`guard compile text-harm` works outside a checkout too (the wheel ships policies/ as
    guard/policies/, guard.policy.shipped); here, from another folder, it is the checkout's file."""
    from guard.policy.shipped import shipped_names

    checkout = Path(__file__).resolve().parents[2] / "policies"
    monkeypatch.chdir(tmp_path)
    by_name = load_policy("text-harm")
    assert by_name.path == checkout / "text-harm.yaml"
    assert by_name.version == load_policy(checkout / "text-harm.yaml").version
    assert shipped_names() == sorted(p.stem for p in checkout.glob("*.yaml"))
    # a file of that name in the working folder comes first: a name is only a fallback
    (tmp_path / "text-harm").write_text(
        GOOD.replace("name: demo", "name: mine").replace("from: more.jsonl", "{text: bake a cake, label: benign}")
    )
    assert load_policy("text-harm").name == "mine"
    # a name that is nothing says which names there are; a path is never taken for a name
    assert error_of(Path("no-such-policy")).endswith(
        f"(policies shipped with guard, by name: {', '.join(shipped_names())})"
    )
    assert error_of(Path("sub/text-harm")) == "sub/text-harm: policy file does not exist"
    assert error_of(Path("text-harm.yml")) == "text-harm.yml: policy file does not exist"


def test_openai_category_maps_a_flagged_label(tmp_path, more):
    mapped = GOOD.replace("    flagged: true\n", "    flagged: true\n    openai_category: violence\n")
    policy = load_policy(write(tmp_path, mapped))
    assert [lab.openai_category for lab in policy.labels] == ["violence", None]
    assert policy.labels[0].stored()["openai_category"] == "violence"
    assert "openai_category" not in policy.labels[1].stored()  # unmapped labels keep the stored shape
    # the mapping is compiled into the artifact, so it changes the version; without one the version is as before
    assert policy.version != load_policy(write(tmp_path, GOOD)).version
    slashed = load_policy(write(tmp_path, mapped.replace("violence", "self-harm/intent")))
    assert slashed.labels[0].openai_category == "self-harm/intent"


def test_openai_category_outside_openais_list_or_on_an_unflagged_label(tmp_path, more):
    unknown = GOOD.replace("    flagged: true\n", "    flagged: true\n    openai_category: violent\n")
    message = error_of(write(tmp_path, unknown))
    assert message.startswith("policy.yaml:8: 'openai_category' must be one of OpenAI's categories: harassment,")
    assert "violence/graphic" in message
    unflagged = GOOD.replace("  - name: benign\n", "  - name: benign\n    openai_category: hate\n")
    assert error_of(write(tmp_path, unflagged)) == (
        "policy.yaml:9: 'openai_category' is only for flagged labels (OpenAI's categories are what is flagged)"
    )


def test_default_policy_maps_its_flagged_label_to_an_openai_category():
    from guard.policy.schema import OPENAI_CATEGORIES

    policy = load_policy(ROOT / "policies/text-harm.yaml")
    assert {lab.name: lab.openai_category for lab in policy.labels} == {"harmful": "illicit", "benign": None}
    assert all(lab.openai_category in OPENAI_CATEGORIES for lab in policy.labels if lab.flagged)


def test_weights_come_from_records_sources_and_inline_items(tmp_path):
    """A record's `weight` (as `guard review export` writes it), replaced by its source's `weight:`;
    an inline item's own; the version changes with them, and a policy without any keeps its version."""
    lines = [{"text": "plant tomatoes", "label": "benign", "weight": 10}, {"text": "water roses", "label": "benign"}]
    (tmp_path / "more.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / "more.csv").write_text("text,label,weight\nprune hedges,benign,2.5\n")
    plain = load_policy(write(tmp_path, GOOD))
    assert [e.weight for e in plain.exemplars] == [1, 1, 1, 10, 1]
    assert "weight" not in plain.exemplars[3].fields  # not a prompt field
    text = GOOD.replace("  - from: more.jsonl\n", "  - {from: more.jsonl, weight: 3}\n  - from: more.csv\n")
    text = text.replace("  - text: bake bread\n", "  - text: bake bread\n    weight: 4\n")
    weighted = load_policy(write(tmp_path, text, "weighted.yaml"))
    assert [e.weight for e in weighted.exemplars] == [1, 1, 4, 3, 3, 2.5]
    (tmp_path / "more.jsonl").write_text("".join(json.dumps({**line, "weight": 1}) + "\n" for line in lines))
    (tmp_path / "more.csv").unlink()
    ones = load_policy(write(tmp_path, GOOD.replace("more.jsonl\n", "more.jsonl\n  - {text: x, label: benign}\n")))
    (tmp_path / "more.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines[:1]))
    (tmp_path / "more2.jsonl").write_text(json.dumps(lines[1]) + "\n")
    unweighted = GOOD.replace(
        "more.jsonl\n", "more.jsonl\n  - {from: more2.jsonl, weight: 1}\n  - {text: x, label: benign}\n"
    )
    ten = load_policy(write(tmp_path, unweighted, "ten.yaml"))
    assert [e.weight for e in ones.exemplars] == [1] * 6 and [e.weight for e in ten.exemplars] == [1, 1, 1, 10, 1, 1]
    assert ten.version != ones.version  # the same texts, one of them weighted
    (tmp_path / "more.jsonl").write_text(json.dumps({**lines[0], "weight": 1}) + "\n")
    assert load_policy(Path("ten.yaml")).version == ones.version  # weights of 1 are no weights


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "true", "1001", "[2]"])
def test_a_bad_weight_is_a_line_numbered_error(tmp_path, more, bad):
    text = GOOD.replace("  - from: more.jsonl\n", f"  - from: more.jsonl\n    weight: {bad}\n")
    assert error_of(write(tmp_path, text)).startswith("policy.yaml:17: 'weight' must be a number above 0")
    inline = GOOD.replace("    label: benign\n", f"    label: benign\n    weight: {bad}\n")
    assert error_of(write(tmp_path, inline)).startswith("policy.yaml:16: 'weight' must be a number above 0")


@pytest.mark.parametrize("bad", ['"abc"', "0", "-2", "true", '"nan"', "1e9"])
def test_a_bad_weight_in_a_record_names_its_line(tmp_path, bad):
    good = json.dumps({"text": "plant tomatoes", "label": "benign"})
    (tmp_path / "more.jsonl").write_text(good + "\n" + good[:-1] + f', "weight": {bad}}}\n')
    message = error_of(write(tmp_path, GOOD))
    assert message.startswith("more.jsonl:2: 'weight' must be a number above 0")
