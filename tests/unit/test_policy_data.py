"""The text-harm policy's public data (issue 20): scripts/build_policy_data.py's `build` stage
rebuilds the shipped fit/ and eval/ files byte for byte from policies/data/sources/, the split is
by whole source, and no text is on both sides."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "policies" / "text-harm"
SOURCES = ROOT / "policies" / "data" / "sources"
# the held-back evaluation (and JailbreakBench, which holds HarmBench items), as names in a source's place
HELD_BACK = ("harmbench", "xstest", "do-not-answer", "donotanswer", "moderation-api", "garak", "jailbreakbench")


def load_script():
    spec = importlib.util.spec_from_file_location("build_policy_data", ROOT / "scripts" / "build_policy_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shipped(side: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((POLICY / side).glob("*.jsonl"))}


def rows(side: str) -> list[dict]:
    out = []
    for p in sorted((POLICY / side).glob("*.jsonl")):
        out += [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
    return out


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    out = tmp_path_factory.mktemp("policy-data")
    load_script().build(out)
    return out


@pytest.mark.parametrize("side", ["fit", "eval"])
def test_build_reproduces_the_shipped_files_byte_for_byte(rebuilt, side):
    built = {p.name: p.read_bytes() for p in sorted((rebuilt / side).glob("*.jsonl"))}
    assert sorted(built) == sorted(shipped(side))
    for name, data in built.items():
        assert data == shipped(side)[name], f"{side}/{name} differs from a rebuild"


def test_no_text_is_in_both_fit_and_eval():
    norm = load_script().norm
    fit = {norm(r["text"]) for r in rows("fit")}
    assert not [r["text"] for r in rows("eval") if norm(r["text"]) in fit]


def test_split_is_by_whole_source_and_one_file_per_source():
    script = load_script()
    assert not set(script.FIT) & set(script.EVAL)
    for side in ("fit", "eval"):
        for p in (POLICY / side).glob("*.jsonl"):
            sources = {json.loads(line)["source"] for line in p.read_text(encoding="utf-8").splitlines()}
            assert sources == {p.stem}, p


def test_rows_are_well_formed():
    texts = []
    for side in ("fit", "eval"):
        for r in rows(side):
            assert r["label"] in ("harmful", "benign")
            assert r["text"].strip() and len(r["text"]) <= 1000
            assert r["register"]
            texts.append(r["text"])
    norm = load_script().norm
    assert len({norm(t) for t in texts}) == len(texts)


def test_every_source_file_is_in_the_manifest_with_a_licence():
    manifest = json.loads((SOURCES / "MANIFEST.json").read_text(encoding="utf-8"))
    files = {p.stem for p in SOURCES.glob("*.jsonl")}
    assert files == set(manifest)
    for sid, entry in manifest.items():
        assert entry["licence"] and len(entry["commit"]) == 40, sid


def test_held_back_evaluation_sets_are_not_sources():
    """HarmBench, XSTest, Do-Not-Answer, OpenAI's moderation set and garak's data are the held-back
    evaluation: no source may come from them."""
    manifest = json.loads((SOURCES / "MANIFEST.json").read_text(encoding="utf-8"))
    for sid, entry in manifest.items():
        where = f"{sid} {entry['repository']} {entry['path']}".lower()
        assert not any(b in where for b in HELD_BACK), sid


def test_card_counts_match_the_files():
    """policies/data/CARD.md's per-file table says what the files hold."""
    card = (ROOT / "policies" / "data" / "CARD.md").read_text(encoding="utf-8")
    table = {
        m[1]: (int(m[2]), int(m[3]))
        for m in re.finditer(r"^\| `((?:fit|eval)/[^`]+\.jsonl)` \| (\d+) \| (\d+) \|", card, re.M)
    }
    files = {}
    for side in ("fit", "eval"):
        for p in sorted((POLICY / side).glob("*.jsonl")):
            labels = [json.loads(line)["label"] for line in p.read_text(encoding="utf-8").splitlines()]
            files[f"{side}/{p.name}"] = (labels.count("harmful"), labels.count("benign"))
    assert table == files
