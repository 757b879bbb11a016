"""Compile on tiny models: artifact contents, activation cache, atomic replace, fingerprints."""

import sqlite3

import pytest
import torch
import yaml

from guard.check.engine import Guard
from guard.compiler import compile_policy
from guard.errors import ModelError
from guard.method import sav
from guard.models import load_model
from guard.models.features import features
from guard.policy import load_policy
from guard.store.database import Store
from tests.support.fixtures import TEXTS, make_text_model, write_policy


def test_compile_stores_a_complete_artifact(tiny_policy, db, llama):
    report = compile_policy(tiny_policy, db, loaded=llama)
    art = Store.open(db).load_artifact("tiny")
    L, H, D = llama.layout.num_layers, llama.layout.num_heads, llama.layout.head_dim
    assert report.computed == 8 and report.cached == 0
    assert art.version == load_policy(tiny_policy).version
    assert len(art.heads) == 4 and len(set(art.heads)) == 4
    assert art.head_accuracy.shape == (L, H) and art.centroids.shape == (2, 4, D)
    assert art.exemplar_vectors.shape == (8, 4, D)
    assert art.model_fingerprint == llama.fingerprint
    assert {"train_accuracy", "loo_accuracy"} <= set(art.metrics)


def test_artifact_matches_sav_on_independently_captured_activations(tiny_policy, db, llama):
    compile_policy(tiny_policy, db, loaded=llama)
    art = Store.open(db).load_artifact()
    policy = load_policy(tiny_policy)
    rendered = [llama.prepare(policy.render(e.prompt_fields())) for e in policy.exemplars]
    acts = features(llama, rendered, layers=range(llama.layout.num_layers), batch_size=1).z
    labels = torch.tensor([policy.label_names.index(e.label) for e in policy.exemplars])
    scores = sav.score_heads(acts, labels, 2, "loo")
    assert art.heads == sav.select_heads(scores, 4)
    torch.testing.assert_close(art.head_accuracy, scores.accuracy.float())
    selected = acts[:, [h[0] for h in art.heads], [h[1] for h in art.heads]]
    torch.testing.assert_close(art.centroids, sav.centroids(selected, labels, 2), rtol=1e-4, atol=1e-5)


def test_recompile_runs_only_new_exemplars(tmp_path, db, llama, llama_dir):
    path = write_policy(tmp_path, llama_dir, TEXTS)
    assert compile_policy(path, db, loaded=llama).computed == 8
    again = compile_policy(path, db, loaded=llama, force=True)  # unchanged: without force it would not run
    assert (again.computed, again.cached) == (0, 8)
    grown = {**TEXTS, "benign": TEXTS["benign"] + ["recommend a good book about birds"]}
    path = write_policy(tmp_path, llama_dir, grown)
    third = compile_policy(path, db, loaded=llama)
    assert (third.computed, third.cached) == (1, 8)
    assert Store.open(db).count_activations() == 9


def test_interrupted_compile_keeps_the_previous_artifact(tmp_path, db, llama, llama_dir, monkeypatch):
    compile_policy(write_policy(tmp_path, llama_dir, TEXTS), db, loaded=llama)
    before = Store.open(db).load_artifact("tiny")
    grown = {label: items + [f"another {label} example number {i}" for i in range(3)] for label, items in TEXTS.items()}
    path = write_policy(tmp_path, llama_dir, grown)

    import guard.store.database

    calls = []
    original = guard.store.database.Store.put_activations

    def put_then_interrupt(self, *args):
        original(self, *args)
        calls.append(1)
        raise KeyboardInterrupt  # after the first batch was cached

    monkeypatch.setattr(guard.store.database.Store, "put_activations", put_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        compile_policy(path, db, loaded=llama, batch_size=2)
    monkeypatch.undo()
    after = Store.open(db).load_artifact("tiny")
    assert after.version == before.version
    assert after.heads == before.heads and torch.equal(after.centroids, before.centroids)
    # the batch computed before the interruption is kept: resuming runs only the rest
    resumed = compile_policy(path, db, loaded=llama, batch_size=2)
    assert resumed.computed == 4 and calls == [1]


def test_failed_save_leaves_database_unchanged(tiny_policy, db, llama, monkeypatch):
    compile_policy(tiny_policy, db, loaded=llama)
    monkeypatch.setattr(
        "guard.store.database.HeadRow.__init__", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full"))
    )
    with pytest.raises(RuntimeError):
        compile_policy(tiny_policy, db, loaded=llama, force=True)  # unchanged would not save
    monkeypatch.undo()
    assert Store.open(db).policy_names() == ["tiny"]
    assert len(Store.open(db).load_artifact("tiny").heads) == 4


def test_several_policies_in_one_database(tmp_path, db, llama, llama_dir):
    compile_policy(write_policy(tmp_path, llama_dir, TEXTS, name="one"), db, loaded=llama)
    compile_policy(write_policy(tmp_path, llama_dir, TEXTS, name="two", heads=2), db, loaded=llama)
    store = Store.open(db)
    assert store.policy_names() == ["one", "two"]
    assert len(store.load_artifact("two").heads) == 2
    with pytest.raises(Exception, match="holds 2 policies"):
        store.load_artifact()


def test_fingerprint_mismatch_is_refused(tmp_path, tiny_policy, db, llama, llama_dir):
    compile_policy(tiny_policy, db, loaded=llama)
    other = make_text_model(tmp_path / "other", "llama", seed=1)
    with pytest.raises(ModelError, match="compiled on a different model"):
        Guard.load(db, model=str(other), device="cpu")
    # editing the weights in place is caught as well
    changed = tmp_path / "changed"
    make_text_model(changed, "llama", seed=0)
    assert load_model(str(changed)).fingerprint == llama.fingerprint
    make_text_model(changed, "llama", seed=2)
    with pytest.raises(ModelError, match="compiled on a different model"):
        Guard.load(db, model=str(changed), device="cpu")


def test_in_sample_scoring_is_stored(tmp_path, db, llama, llama_dir):
    path = write_policy(tmp_path, llama_dir, TEXTS, scoring="in_sample")
    compile_policy(path, db, loaded=llama)
    assert Store.open(db).load_artifact().scoring == "in_sample"
    assert yaml.safe_load(Store.open(db).load_artifact().policy_text)["scoring"] == "in_sample"


def test_vectors_are_little_endian_float32_blobs(tiny_policy, db, llama):
    compile_policy(tiny_policy, db, loaded=llama)
    con = sqlite3.connect(db)
    blob, layer, head = con.execute("select centroids, layer, head from heads where rank = 0").fetchone()
    assert len(blob) == 2 * llama.layout.head_dim * 4
    art = Store.open(db).load_artifact()
    assert torch.frombuffer(bytearray(blob), dtype=torch.float32).tolist() == art.centroids[:, 0].flatten().tolist()


def test_a_weighted_exemplar_compiles_as_the_weighted_fit_of_its_activations(tmp_path, db, llama, llama_dir):
    """`weight:` reaches the stored artifact: its heads and bank are the weighted fit of the cached
    activations, calibration is cross-fitted, the metrics count the weighted exemplars, the version
    changes with the weight, and compiling the same weighted policy again runs nothing."""
    from guard.method.fit import Fit

    path = write_policy(tmp_path, llama_dir, TEXTS)
    doc = yaml.safe_load(path.read_text())
    doc["exemplars"][5]["weight"] = 20  # "explain how to kill a python process that hangs": benign
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    report = compile_policy(path, db, loaded=llama)
    art = report.artifact
    assert art.metrics["weighted_exemplars"] == 1 and art.metrics["calibration_method"] == "platt-cv10"
    policy = load_policy(path)
    acts = features(llama, [llama.prepare(policy.render({"text": e.text}), []) for e in policy.exemplars]).z
    labels = torch.tensor([policy.label_names.index(e.label) for e in policy.exemplars])
    weights = torch.ones(len(labels), dtype=torch.float64)
    weights[5] = 20
    expected = Fit.of(policy)(acts, labels, weights=weights)
    plain = Fit.of(policy)(acts, labels, heads=expected.heads)
    assert not torch.allclose(expected.bank, plain.bank, atol=1e-3)  # the weight moves the centroids
    assert art.heads == expected.heads
    assert torch.allclose(art.centroids, expected.bank.float(), atol=1e-5)
    assert compile_policy(path, db, loaded=llama).unchanged
    unweighted = compile_policy(write_policy(tmp_path, llama_dir, TEXTS), db, loaded=llama).artifact
    assert unweighted.version != art.version and "weighted_exemplars" not in unweighted.metrics
