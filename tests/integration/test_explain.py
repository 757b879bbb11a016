"""check --explain: head votes with margins and the closest exemplars, against brute force."""

import json

import pytest
import torch
from typer.testing import CliRunner

from guard.check.engine import Guard
from guard.check.explain import explain, nearest_exemplars
from guard.cli.commands import app
from guard.compiler import compile_policy
from tests.support.fixtures import TEXTS

runner = CliRunner()


@pytest.fixture
def guard(tiny_policy, db, llama):
    compile_policy(tiny_policy, db, loaded=llama)
    return Guard.load(db, model=llama)


def test_nearest_exemplars_match_brute_force(guard):
    art = guard.artifact
    verdict = guard.check("tell me how to hurt my neighbour")
    heads = nearest_exemplars(art, verdict.vectors, [v.label for v in verdict.votes], top_heads=3, per_head=4)
    assert [(h.layer, h.head) for h in heads] == art.heads[:3]
    for h in heads:
        sims = [
            float(torch.nn.functional.cosine_similarity(verdict.vectors[h.rank - 1], e, dim=0))
            for e in art.exemplar_vectors[:, h.rank - 1]  # ranks are numbered from 1
        ]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:4]
        assert [n.index for n in h.neighbours] == order
        for n in h.neighbours:
            assert n.similarity == pytest.approx(sims[n.index], abs=1e-6)
            assert n.text == art.exemplar_texts[n.index]
            assert n.label == art.label_names[art.exemplar_labels[n.index]]


def test_an_exemplar_is_its_own_closest_example(guard):
    text = TEXTS["harmful"][1]
    verdict = guard.check(text)
    for h in nearest_exemplars(
        guard.artifact, verdict.vectors, [v.label for v in verdict.votes], top_heads=4, per_head=1
    ):
        assert h.neighbours[0].text == text
        assert h.neighbours[0].similarity == pytest.approx(1.0, abs=1e-4)


def test_explanation_votes_and_margins(guard):
    verdict = guard.check("write a poem about a storm")
    why = explain(guard.artifact, verdict)
    assert [(v["layer"], v["head"]) for v in why["votes"]] == guard.artifact.heads
    for v in why["votes"]:
        other = max(s for label, s in v["similarities"].items() if label != v["label"])
        assert v["margin"] == pytest.approx(v["similarities"][v["label"]] - other, abs=1e-5)
        assert v["margin"] >= 0  # a head votes for its most similar centroid
    assert len(why["nearest_exemplars"]) == 3 and len(why["nearest_exemplars"][0]["exemplars"]) == 3


def test_cli_explain_json_and_text(guard, db):
    result = runner.invoke(app, ["check", "--text", "how do I hurt people", "--db", db, "--json", "--explain"])
    verdict = json.loads(result.stdout)["verdicts"]["tiny"]
    assert list(verdict)[:6] == ["policy", "version", "flagged", "label", "scores", "votes"]
    assert [v["rank"] for v in verdict["explanation"]["votes"]] == list(range(1, len(verdict["votes"]) + 1))
    assert {"votes", "nearest_exemplars"} == set(verdict["explanation"])
    plain = runner.invoke(app, ["check", "--text", "how do I hurt people", "--db", db, "--json"])
    assert "explanation" not in json.loads(plain.stdout)["verdicts"]["tiny"]
    text = runner.invoke(app, ["check", "--text", "how do I hurt people", "--db", db, "--explain"])
    assert "closest exemplars at layer" in text.output
    assert text.output.count("\n") >= 1 + 1 + len(guard.artifact.heads) + 3 * 4
