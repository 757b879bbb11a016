"""The response-harm policy's public data (issue 23): the shipped files agree with their manifest
and the data card, no request or answer is on both sides, and the policy reads them as pairs."""

import json
import re
from pathlib import Path

from guard.policy import load_policy

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "policies" / "response-harm"


def lines(side: str) -> dict[str, list[dict]]:
    return {
        p.stem: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
        for p in sorted((DATA / side).glob("*.jsonl"))
    }


def test_files_agree_with_the_manifest_and_the_card():
    manifest = json.loads((DATA / "MANIFEST.json").read_text(encoding="utf-8"))
    card = (ROOT / "policies" / "data" / "CARD.md").read_text(encoding="utf-8")
    rows = {
        m[1]: (int(m[2]), int(m[3]), m[4])
        for m in re.finditer(r"^\| `([a-z0-9-]+)` \|[^|]+\|[^|]+\| (\d+) / (\d+) \|.*\| (fit|eval) \|$", card, re.M)
    }
    for side in ("fit", "eval"):
        for source, items in lines(side).items():
            counts = (sum(r["label"] == "harmful" for r in items), sum(r["label"] == "safe" for r in items))
            assert manifest[source]["side"] == side
            assert (manifest[source]["harmful"], manifest[source]["safe"]) == counts
            assert rows[source] == (*counts, side), source
            assert all(r["source"] == source and r["prompt"].strip() and r["response"].strip() for r in items)
    assert set(manifest) == {s for side in ("fit", "eval") for s in lines(side)}


def test_no_request_or_answer_is_on_both_sides():
    def norm(text):
        return re.sub(r"\s+", " ", text.lower()).strip()

    fit = [r for items in lines("fit").values() for r in items]
    held = [r for items in lines("eval").values() for r in items]
    assert not {norm(r["response"]) for r in fit} & {norm(r["response"]) for r in held}
    assert not {norm(r["prompt"]) for r in fit} & {norm(r["prompt"]) for r in held}
    # GPTFuzz is split by question: the held-out file asks questions no fitted pair asks
    fitted_questions = {r["question"] for r in lines("fit")["gptfuzz"]}
    assert fitted_questions and not fitted_questions & {
        r["question"] for r in lines("eval")["gptfuzz-heldout-questions"]
    }


def test_the_shipped_policy_reads_them_as_request_answer_pairs():
    policy = load_policy(ROOT / "policies" / "response-harm.yaml")
    assert policy.field_order == ["prompt", "response"] and policy.escape == "xml"
    assert {e.label for e in policy.exemplars} == {"harmful", "safe"}
    rendered = policy.render(policy.exemplars[0].prompt_fields())
    assert policy.exemplars[0].fields["response"][:50] in rendered.replace("&amp;", "&") or "&lt;" in rendered
    assert not any(e.text for e in policy.exemplars)


def test_held_back_evaluation_sets_are_not_sources():
    """No pair comes from the held-back evaluation (tests/unit/test_policy_data.py names it)."""
    from tests.unit.test_policy_data import HELD_BACK

    manifest = json.loads((DATA / "MANIFEST.json").read_text(encoding="utf-8"))
    for source, entry in manifest.items():
        where = f"{source} {entry['repository']} {entry['path']}".lower()
        assert not any(name in where for name in HELD_BACK), source
