"""Version history: recompiling keeps earlier versions; list --versions, check NAME@VERSION,
rollback, --keep; the compile dtype is recorded and a check in another dtype is warned about."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from guard.cli.commands import app
from guard.store.database import Store
from tests.support.fixtures import TEXTS, write_policy

runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture
def three_versions(tmp_path, llama_dir, db):
    """Policy 'tiny' compiled three times with different exemplars: revisions 1, 2, 3."""
    path = write_policy(tmp_path, llama_dir, TEXTS)
    hashes = []
    for n in (4, 3, 2):
        doc = yaml.safe_load(path.read_text())
        doc["exemplars"] = [{"text": t, "label": lab} for lab, items in TEXTS.items() for t in items[:n]]
        path.write_text(yaml.safe_dump(doc))
        result = run("compile", path, "--db", db, "--json")
        assert result.exit_code == 0, result.output
        hashes.append(json.loads(result.stdout.strip().splitlines()[-1])["version"])
    return db, hashes


def test_recompiling_keeps_every_version(three_versions):
    db, hashes = three_versions
    listed = json.loads(run("list", "--db", db, "--versions", "--json").stdout)
    assert [(v["revision"], v["version"], v["current"]) for v in listed] == [
        (3, hashes[2], True),
        (2, hashes[1], False),
        (1, hashes[0], False),
    ]
    assert all(v["dtype"] == "float32" and v["device"] == "cpu" for v in listed)
    assert json.loads(run("list", "--db", db, "--json").stdout)[0]["version"] == hashes[2]
    human = run("list", "--db", db, "--versions")
    assert human.exit_code == 0 and "tiny" in human.output and "float32" in human.output


def test_check_an_older_version_by_revision_or_hash(three_versions):
    db, hashes = three_versions
    for spec, want in (("tiny", hashes[2]), ("tiny@1", hashes[0]), (f"tiny@{hashes[1][:6]}", hashes[1])):
        result = run("check", "--text", "bake bread", "--db", db, "-p", spec, "--json")
        assert result.exit_code in (0, 1), result.output
        assert json.loads(result.stdout)["verdicts"]["tiny"]["version"] == want
    # no revision 4..9 exists; the digit must not start a hash either (a hash prefix is a version too)
    absent = next(d for d in "987654" if not any(h.startswith(d) for h in hashes))
    missing = run("check", "--text", "bake bread", "--db", db, "-p", f"tiny@{absent}")
    assert missing.exit_code == 2 and f"has no version '{absent}'" in missing.stderr


def test_rollback_and_roll_forward(three_versions):
    db, hashes = three_versions
    back = run("rollback", "tiny", "1", "--db", db)
    assert back.exit_code == 0 and "revision 1" in back.output
    assert Store.open(db).load_artifact("tiny").version == hashes[0]
    check = run("check", "--text", "bake bread", "--db", db, "--json")
    assert json.loads(check.stdout)["verdicts"]["tiny"]["version"] == hashes[0]
    assert run("rollback", "tiny", hashes[2], "--db", db).exit_code == 0
    assert Store.open(db).load_artifact().revision == 3
    assert run("rollback", "nope", "1", "--db", db).exit_code == 2


def test_keep_prunes_old_versions_but_never_the_current_one(three_versions, tmp_path, llama_dir):
    db, hashes = three_versions
    assert run("rollback", "tiny", "1", "--db", db).exit_code == 0
    store = Store.open(db)
    assert store.prune("tiny", 1) == 1  # revision 3 is newest, 1 is current: 2 goes
    assert [v["revision"] for v in store.versions("tiny")] == [3, 1]
    path = write_policy(tmp_path, llama_dir, TEXTS)  # revision 1's content: --force, or it would be unchanged
    assert run("compile", path, "--db", db, "--keep", "1", "--force").exit_code == 0
    assert [(v["revision"], v["current"]) for v in store.versions("tiny")] == [(4, True)]
    assert store.count_activations() > 0  # the activation cache is not part of a version


def test_checking_in_another_dtype_warns(tmp_path, llama_dir, db):
    assert run("compile", write_policy(tmp_path, llama_dir, TEXTS), "--db", db).exit_code == 0
    same = run("check", "--text", "bake bread", "--db", db)
    assert "warning" not in same.stderr
    other = run("check", "--text", "bake bread", "--db", db, "--dtype", "bfloat16")
    assert other.exit_code in (0, 1), other.output
    assert "compiled in float32 and is checked in bfloat16" in other.stderr


def revisions(db: str) -> list[tuple[int, bool]]:
    return [(v["revision"], v["current"]) for v in Store.open(db).versions("tiny")]


def test_recompiling_an_unchanged_policy_adds_nothing(tmp_path, llama_dir, db):
    path = write_policy(tmp_path, llama_dir, TEXTS)
    first = run("compile", path, "--db", db, "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["unchanged"] is False
    again = run("compile", path, "--db", db, "--json")
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert report["unchanged"] is True and report["revision"] == 1 and report["computed"] == 0
    assert report["version"] == json.loads(first.stdout)["version"]
    # a comment and the order of keys are not the policy's content: still unchanged, said in words
    doc = yaml.safe_load(path.read_text())
    path.write_text("# edited comment\n" + yaml.safe_dump(dict(reversed(doc.items()))))
    human = run("compile", path, "--db", db)
    assert human.exit_code == 0, human.output
    assert "'tiny' is unchanged" in human.stdout and "no revision added" in human.stdout
    assert revisions(db) == [(1, True)]
    # --force compiles anyway; an edited exemplar is new content
    assert run("compile", path, "--db", db, "--force").exit_code == 0
    assert revisions(db) == [(2, True), (1, False)]
    doc["exemplars"] = doc["exemplars"][1:]
    path.write_text(yaml.safe_dump(doc))
    assert run("compile", path, "--db", db).exit_code == 0
    assert revisions(db) == [(3, True), (2, False), (1, False)]


def test_same_policy_on_other_weights_or_dtype_is_a_new_revision(tmp_path, db):
    """The version hash names the model by its reference; a recompile is a no-op only when the
    weights (fingerprint) and the dtype are the ones the current revision was compiled with."""
    from tests.support.fixtures import make_text_model

    model = make_text_model(tmp_path / "model", seed=1)
    path = write_policy(tmp_path, model, TEXTS)
    assert run("compile", path, "--db", db).exit_code == 0
    assert run("compile", path, "--db", db, "--dtype", "bfloat16").exit_code == 0
    assert revisions(db) == [(2, True), (1, False)]
    assert run("compile", path, "--db", db, "--dtype", "bfloat16").exit_code == 0
    assert revisions(db) == [(2, True), (1, False)]
    make_text_model(tmp_path / "model", seed=2)  # other weights under the same path
    result = run("compile", path, "--db", db, "--dtype", "bfloat16", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["unchanged"] is False
    assert revisions(db) == [(3, True), (2, False), (1, False)]
    listed = {v["revision"]: v for v in Store.open(db).versions("tiny")}
    assert listed[3]["version"] == listed[1]["version"]  # same content hash, other weights


def test_unchanged_after_rollback_compares_with_the_current_revision(three_versions, tmp_path):
    """After a rollback the current revision is the old one: compiling the newest policy again
    adds it as a new revision (checks would otherwise keep using the old one)."""
    db, hashes = three_versions
    path = tmp_path / "tiny.yaml"  # holds the third version's exemplars
    assert run("rollback", "tiny", "1", "--db", db).exit_code == 0
    result = run("compile", path, "--db", db, "--json")
    assert json.loads(result.stdout)["unchanged"] is False
    assert Store.open(db).load_artifact("tiny").version == hashes[2]
    assert [r for r, current in revisions(db) if current] == [4]
