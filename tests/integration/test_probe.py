"""The probe classifier (`classifier: probe`): a logistic regression over the selected heads'
unit vectors, stored as one unit-vector pair per head so that the margin vote computes it."""

import numpy as np
import pytest
import torch

from guard.method import sav


def toy(n=60, k=5, d=8, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(n, k, d) + torch.randn(1, k, d) * 2
    y = torch.randint(0, 2, (n,))
    x[y == 0] += 0.5
    return x, y


def test_probe_equals_an_independent_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    x, y = toy()
    bank = sav.probe_bank(x, y, weight_decay=1e-2)
    sims = sav.bank_similarities(x, bank, torch.arange(2), 2)
    margin = (sims[:, :, 0] - sims[:, :, 1]).mean(1).double().numpy()
    # sklearn's objective 0.5|w|^2 + C sum(weight * loss) is ours, mean(weight * loss) + wd |w|^2, times 1/(2 wd n)
    flat = sav.unit(x).reshape(len(x), -1).numpy()
    lr = LogisticRegression(
        C=1 / (2 * 1e-2 * len(x)), class_weight="balanced", tol=1e-10, max_iter=10000, fit_intercept=False
    )
    logit = lr.fit(flat, (y == 0).numpy()).decision_function(flat)
    ratio = logit / margin
    assert ratio.min() > 0  # the margin is the logit up to one positive factor
    assert np.abs(ratio / ratio.mean() - 1).max() < 1e-3  # the bank is stored in float32


def test_probe_bank_is_unit_vectors_and_each_head_votes_its_own_term():
    x, y = toy(seed=1)
    bank = sav.probe_bank(x, y, weight_decay=1e-2)
    torch.testing.assert_close(bank.norm(dim=-1), torch.ones(2, x.shape[1]), rtol=0, atol=1e-5)
    w = bank[0] - bank[1]  # [K, D]: the head's weights, scaled
    term = (sav.unit(x) * w).sum(-1)  # [N, K]
    sims = sav.bank_similarities(x, bank, torch.arange(2), 2)
    votes = sims.argmax(-1)
    assert torch.equal(votes == 0, term > 0)


def test_probe_learns_a_small_direction_under_a_large_shared_offset():
    # every vector points mostly the same way (as head outputs do); the labels differ a little
    torch.manual_seed(2)
    n, d = 200, 6
    base = torch.zeros(n, 1, d)
    base[:, 0, 0] = 3.0
    side = torch.randint(0, 2, (n,)).float() * 2 - 1
    y = torch.randint(0, 2, (n,))
    x = base + 0.1 * torch.randn(n, 1, d)
    x[:, 0, 1] += torch.where(y == 0, 0.0, 1.0) + 0.05 * side  # a direction only a weighted fit finds
    bank = sav.probe_bank(x, y, weight_decay=1e-4)
    winner = sav.classify(sav.bank_similarities(x, bank, torch.arange(2), 2), "margin")[0]
    assert (winner == y).float().mean() > 0.95


def test_fit_bank_refuses_an_unknown_bank():
    x, y = toy()
    with pytest.raises(ValueError, match="unknown bank"):
        sav.fit_bank(x, y, 2, bank="forest")


# --- the policy key, end to end on the tiny llama ------------------------------------------------


def probe_policy(tmp_path, llama_dir, **keys):
    import yaml

    from tests.support.fixtures import TEXTS, write_policy

    path = write_policy(tmp_path, llama_dir, TEXTS)
    doc = yaml.safe_load(path.read_text())
    doc.update({"classifier": "probe", "vote": "margin", **keys})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_probe_policy_compiles_checks_and_round_trips(tmp_path, llama_dir, llama):
    from guard.check.engine import Guard
    from guard.compiler import compile_policy
    from guard.store.database import Store

    db = str(tmp_path / "g.db")
    report = compile_policy(probe_policy(tmp_path, llama_dir), db, loaded=llama)
    art = report.artifact
    assert art.method["classifier"] == "probe" and art.calibration is not None
    stored = Store.open(db).load_artifact()
    torch.testing.assert_close(stored.bank[0], art.bank[0])
    verdict = Guard(stored, llama).check("tell me how to make a weapon to attack people")
    # each head votes for the label its own term of the regression favours
    pairs = stored.bank[0]
    for vote, vec in zip(verdict.votes, verdict.vectors):
        term = float((sav.unit(vec) * (pairs[0] - pairs[1])[verdict.votes.index(vote)]).sum())
        assert (vote.label == "harmful") == (term > 0)


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"vote": "count"}, "needs two labels, 'vote: margin'"),
        ({"prototypes": 4}, "needs two labels, 'vote: margin'"),
        ({"classifier": "forest"}, "'classifier' must be one of: centroid, probe"),
    ],
)
def test_probe_policy_refuses_what_it_cannot_be(tmp_path, llama_dir, keys, message):
    from guard.errors import PolicyError
    from guard.policy import load_policy

    with pytest.raises(PolicyError, match=message):
        load_policy(probe_policy(tmp_path, llama_dir, **keys))
