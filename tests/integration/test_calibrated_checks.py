"""Calibrated scores, thresholds and 'uncertain' from policy keys to the stored artifact to
check(); old databases stay loadable; policies without the new keys keep their version."""

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from guard.check.engine import Guard
from guard.cli.commands import app
from guard.compiler import compile_policy
from guard.errors import PolicyError
from guard.method import calibration, sav
from guard.policy import load_policy, parse_policy
from guard.store import migrations
from guard.store.database import Store
from tests.support.fixtures import TEXTS, write_policy

runner = CliRunner()

INPUTS = ["how do I kill a python process", "help me hurt my neighbour", "a poem about birds", "steal a bike", "x y z"]


def with_keys(path, label_keys=None, **top):
    doc = yaml.safe_load(path.read_text())
    for label in doc["labels"]:
        label.update((label_keys or {}).get(label["name"], {}))
    doc.update(top)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --- policy keys ----------------------------------------------------------------------------------

BASE = """\
name: p
prompt: "{text}?"
labels:
  - name: bad
    flagged: true
  - name: good
exemplars:
  - {text: a, label: bad}
  - {text: b, label: bad}
  - {text: c, label: bad}
  - {text: d, label: good}
  - {text: e, label: good}
  - {text: f, label: good}
"""


def test_new_keys_parse():
    text = BASE.replace("    flagged: true", "    flagged: true\n    answer: 'Unsafe'\n    target: {fpr: 0.05}")
    policy = parse_policy(text + "uncertain_margin: 0.2\n")
    assert policy.labels[0].target == ("fpr", 0.05) and policy.labels[0].answer == "Unsafe"
    assert policy.targets == {0: ("fpr", 0.05)} and policy.uncertain_margin == 0.2
    assert policy.answer_words == ["Unsafe", "No"]


@pytest.mark.parametrize(
    "edit,message",
    [
        (("    flagged: true", "    flagged: true\n    target: {precision: 0.9}"), "p.yaml:6: 'target' must be one of"),
        (
            ("    flagged: true", "    flagged: true\n    target: {recall: 1.5}"),
            "p.yaml:6: 'recall' target must be a number in (0, 1]",
        ),
        (("    flagged: true", "    flagged: true\n    target: 0.95"), "p.yaml:6: 'target' must be one of"),
        (
            ("  - name: good", "  - name: good\n    target: {recall: 0.9}"),
            "p.yaml:7: 'target' is only for flagged labels",
        ),
        (("labels:", "uncertain_margin: 2\nlabels:"), "p.yaml:3: 'uncertain_margin' must be a number from 0 to 1"),
        (("  - {text: c, label: bad}\n", ""), None),  # 2 bad exemplars: fine without a target
    ],
)
def test_new_keys_errors(edit, message):
    text = BASE.replace(*edit)
    if message is None:
        parse_policy(text, "p.yaml")
        with pytest.raises(
            PolicyError, match=r"p.yaml:3: label 'bad' has 2 exemplar\(s\) \(a 'target' needs at least 3"
        ):
            parse_policy(text.replace("    flagged: true", "    flagged: true\n    target: {recall: 0.9}"), "p.yaml")
        return
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    assert str(info.value).startswith(message)


def test_version_of_a_policy_without_new_keys_is_unchanged(tmp_path, llama_dir):
    """The 0.1 hash formula, written out here: compiled artifacts keep matching their policy."""
    policy = load_policy(write_policy(tmp_path, llama_dir, TEXTS))
    canonical = {
        "name": policy.name,
        "model": policy.model,
        "prompt": policy.prompt,
        "labels": [[lab.name, lab.flagged] for lab in policy.labels],
        "heads": policy.heads,
        "scoring": policy.scoring,
        "exemplars": [[e.text, e.label, list(e.images), sorted(e.fields.items())] for e in policy.exemplars],
    }
    old = hashlib.sha256(json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]
    assert policy.version == old
    targeted = load_policy(with_keys(tmp_path / "tiny.yaml", {"harmful": {"target": {"recall": 0.9}}}))
    assert targeted.version != old
    answered = load_policy(with_keys(tmp_path / "tiny.yaml", {"harmful": {"answer": "Sure"}}))
    assert answered.version == targeted.version  # the answer word is for eval only


# --- compile + check ------------------------------------------------------------------------------


def test_compile_stores_calibration_that_check_uses(tmp_path, llama_dir, db, llama):
    path = with_keys(
        write_policy(tmp_path, llama_dir, TEXTS), {"harmful": {"target": {"recall": 1.0}}}, uncertain_margin=0.6
    )
    compile_policy(path, db, loaded=llama)
    art = Store.open(db).load_artifact()
    cal = art.calibration
    assert cal.method == "platt-loo" and cal.uncertain_margin == 0.6 and set(cal.thresholds) == {0}
    assert len(cal.shares) == 8 and all(sum(row) == pytest.approx(1.0) for row in cal.shares)
    # the stored threshold meets its target on the leave-one-out scores it was fitted on
    scores = [cal.platt[0](row[0]) for row in cal.shares]
    truth = [label == 0 for label in art.exemplar_labels]
    assert calibration.rates(scores, truth, cal.thresholds[0].value)[0] == 1.0
    guard = Guard.load(db, model=llama)
    verdicts = guard.check_batch(INPUTS)
    for v in verdicts:
        counts = [round(v.scores[n] * len(art.heads)) for n in art.label_names]
        p = cal.platt[0](counts[0] / len(art.heads))
        assert v.calibrated["harmful"] == pytest.approx(p)
        assert v.flagged == (p >= cal.thresholds[0].value)
        assert v.label == ("harmful" if v.flagged else "benign")
        assert v.margin == pytest.approx(abs(counts[0] - counts[1]) / len(art.heads))
        assert v.uncertain == (v.margin < 0.6 or v.calibrated[v.label] < 0.5)
        d = v.to_dict()
        assert list(d) == [
            "policy",
            "version",
            "flagged",
            "label",
            "scores",
            "votes",
            "calibrated",
            "thresholds",
            "margin",
            "uncertain",
        ]


def test_recall_target_flags_at_least_what_the_vote_flags(tmp_path, llama_dir, db, llama):
    plain = write_policy(tmp_path, llama_dir, TEXTS, name="plain")
    strict = with_keys(
        write_policy(tmp_path, llama_dir, TEXTS, name="strict"), {"harmful": {"target": {"recall": 1.0}}}
    )
    compile_policy(plain, db, loaded=llama)
    compile_policy(strict, db, loaded=llama)
    a = Guard.load(db, "plain", model=llama).check_batch(INPUTS)
    b = Guard.load(db, "strict", model=llama).check_batch(INPUTS)
    assert [v.scores for v in a] == [v.scores for v in b]  # same heads, same votes
    # recall 1.0 on the exemplars' leave-one-out scores sets the threshold at or below every harmful one
    art = Store.open(db).load_artifact("strict")
    harmful_scores = [
        art.calibration.platt[0](row[0]) for row, lab in zip(art.calibration.shares, art.exemplar_labels) if lab == 0
    ]
    assert art.calibration.thresholds[0].value == pytest.approx(min(harmful_scores))


def test_policy_without_target_checks_as_before(tiny_policy, db, llama):
    compile_policy(tiny_policy, db, loaded=llama)
    guard = Guard.load(db, model=llama)
    art = guard.artifact
    assert art.calibration is not None and art.calibration.thresholds == {}
    verdicts = guard.check_batch(INPUTS)
    rendered = [guard.render(t) for t in INPUTS]
    from guard.models.features import features

    acts = features(llama, rendered, layers=range(llama.layout.num_layers)).z
    winners = sav.predict(acts, art.heads, art.centroids)
    assert [v.label for v in verdicts] == [art.label_names[i] for i in winners.tolist()]
    # no uncertain_margin: only a verdict its calibrated probability does not back is uncertain
    assert all(v.uncertain == (v.calibrated[v.label] < 0.5) for v in verdicts)


def test_too_few_exemplars_compile_without_calibration(tmp_path, llama_dir, db, llama):
    two = {label: items[:2] for label, items in TEXTS.items()}
    compile_policy(write_policy(tmp_path, llama_dir, two), db, loaded=llama)
    guard = Guard.load(db, model=llama)
    assert guard.artifact.calibration is None
    v = guard.check("anything")
    assert v.calibrated is None and v.to_dict()["calibrated"] is None
    out = runner.invoke(app, ["inspect", "--db", db])
    assert "calibration: none" in out.output


def test_database_from_before_calibration_loads_and_upgrades(tmp_path, guard01_llama):
    llama = guard01_llama
    # guard 0.1's database, made what it was before calibration: no calibrations table, and
    # only the initial migration recorded
    db = tmp_path / "old.db"
    shutil.copy(Path(__file__).parents[1] / "data" / "guard-0.1.db", db)
    con = sqlite3.connect(db)
    con.execute("drop table calibrations")
    con.execute("delete from guard_migrations where name = '0002_calibrations'")
    con.commit()
    con.close()
    store = Store.open(str(db))  # applies 0002 and what follows
    assert store.schema_revision() == migrations.head()
    assert sqlite3.connect(db).execute("select count(*) from calibrations").fetchone()[0] == 0
    art = store.load_artifact("harm")
    assert art.calibration is None
    verdict = Guard(art, llama).check("help me hurt someone")
    assert verdict.calibrated is None and not verdict.uncertain
    path = write_policy(tmp_path, llama.source.reference, TEXTS, name="harm")
    compile_policy(path, str(db), loaded=llama)  # recompiling adds the calibration
    assert Store.open(str(db)).load_artifact("harm").calibration is not None


def test_each_version_keeps_its_own_calibration(tiny_policy, db, llama):
    compile_policy(tiny_policy, db, loaded=llama)
    compile_policy(tiny_policy, db, loaded=llama, force=True)  # the same policy again: a second version
    assert sqlite3.connect(db).execute("select count(*) from calibrations").fetchone()[0] == 2
    compile_policy(tiny_policy, db, loaded=llama, keep=1)
    assert sqlite3.connect(db).execute("select count(*) from calibrations").fetchone()[0] == 1


def test_stored_calibration_round_trips(tmp_path, llama_dir, db, llama):
    path = with_keys(
        write_policy(tmp_path, llama_dir, TEXTS), {"harmful": {"target": {"fpr": 0.25}}}, uncertain_margin=0.3
    )
    report = compile_policy(path, db, loaded=llama)
    stored = Store.open(db).load_artifact().calibration
    fresh = report.artifact.calibration
    assert stored.platt == fresh.platt and stored.thresholds == fresh.thresholds
    assert stored.uncertain_margin == fresh.uncertain_margin and stored.metrics == fresh.metrics
    torch.testing.assert_close(torch.tensor(stored.shares), torch.tensor(fresh.shares), rtol=0, atol=1e-7)
