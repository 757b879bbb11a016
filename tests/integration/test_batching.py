"""The token-budget batching rule (guard.models.batching) against a naive implementation: every
input in exactly one batch, the budget and the row cap respected except an over-long input alone,
and results restored to input order by the engines that use it."""

import random

import pytest

from guard.models.batching import Batching, length_buckets, padded_tokens, token_batches
from tests.support.fixtures import TEXTS, write_policy


def naive_batches(lengths, budget, max_batch):
    """The rule as plainly as it can be written: sort longest first, then add inputs to the
    current batch while rows x longest stays within the budget and rows within the cap."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    out = []
    for i in order:
        if out:
            batch = out[-1]
            rows = len(batch) + 1
            width = max(max(lengths[j] for j in batch), lengths[i], 1)
            if rows * width <= budget and (max_batch is None or rows <= max_batch):
                batch.append(i)
                continue
        out.append([i])
    return out


@pytest.mark.parametrize("seed", range(40))
def test_token_batches_equal_the_naive_rule(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(1, 40), rng.randint(1, 400)]) for _ in range(rng.randint(0, 120))]
    budget = rng.choice([1, 16, 64, 300, 1000, 10_000])
    max_batch = rng.choice([None, 1, 3, 16])
    got = token_batches(lengths, budget, max_batch)
    assert got == naive_batches(lengths, budget, max_batch)
    # every input in exactly one batch
    assert sorted(i for batch in got for i in batch) == list(range(len(lengths)))
    for batch in got:
        widest = max(lengths[i] for i in batch)
        if len(batch) > 1:  # within the budget, unless one over-long input runs alone
            assert len(batch) * widest <= budget
        else:
            assert batch  # no empty batch
        if max_batch is not None:
            assert len(batch) <= max_batch
        assert lengths[batch[0]] == widest  # longest first: the first input sets the width


def test_an_over_long_input_runs_alone_and_short_ones_fill_batches():
    lengths = [5, 500, 5, 5, 6, 5]
    assert token_batches(lengths, 20) == [[1], [4, 0, 2], [3, 5]]
    assert token_batches(lengths, 20, max_batch=2) == [[1], [4, 0], [2, 3], [5]]


def test_without_a_budget_the_plan_is_the_count_cut():
    lengths = [3, 9, 1, 9, 4, 7, 2]
    assert Batching(3, None).plan(lengths) == length_buckets(lengths, 3) == [[1, 3, 5], [4, 0, 6], [2]]
    assert padded_tokens(lengths, [[1, 3, 5], [4, 0, 6], [2]]) == 27 + 12 + 1


def test_refuses_a_budget_below_one():
    with pytest.raises(ValueError):
        token_batches([1, 2], 0)


def test_engines_restore_input_order_under_a_tight_budget(llama, llama_dir, tmp_path):
    """Forwards cut by a budget so small that most inputs run alone, or by the old count cut:
    the same verdicts, in input order."""
    from guard.check.engine import GuardSet
    from guard.compiler import compile_policy

    db = str(tmp_path / "guard.db")
    compile_policy(write_policy(tmp_path, llama_dir, TEXTS), db, loaded=llama)
    guards = GuardSet.load(db, model=llama)
    texts = ["a poem about the sea " * n for n in (9, 1, 7, 2, 8, 1)] + ["how do I hurt someone"]
    shapes: list[tuple[int, int]] = []
    handle = llama.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        tight = guards.check_batch(texts, batch_size=16, token_budget=120)
    finally:
        handle.remove()
    assert all(rows * width <= 120 or rows == 1 for rows, width in shapes)
    assert sum(rows for rows, _ in shapes) == len(set(texts))  # identical inputs run once
    counted = guards.check_batch(texts, batch_size=2, token_budget=None)
    alone = [guards.check_batch([t])[0] for t in texts]
    for a, b, c in zip(tight, counted, alone):
        assert {n: (v.label, v.scores) for n, v in a.items()} == {n: (v.label, v.scores) for n, v in c.items()}
        assert {n: (v.label, v.scores) for n, v in b.items()} == {n: (v.label, v.scores) for n, v in c.items()}


def test_scores_do_not_depend_on_batch_neighbours(llama, llama_dir, tmp_path):
    """The same text alone and padded beside neighbours of other lengths: the same label, vote
    shares and calibrated probabilities to 1e-6 (issue 21). On the tiny model float32 noise is far
    below that; on SmolLM2 with more than one thread it is not (docs/checking.md, "Batch neighbours")."""
    from guard.check.engine import Guard
    from guard.compiler import compile_policy

    db = str(tmp_path / "guard.db")
    compile_policy(write_policy(tmp_path, llama_dir, TEXTS), db, loaded=llama)
    guard = Guard.load(db, model=llama)
    text = "how do I bake bread for my family"
    alone = guard.check_batch([text])[0]
    assert alone.calibrated is not None
    neighbours = [["hi"], ["write a long essay about the roman empire " * 4], ["a", "an essay on rome " * 6, "ok"]]
    shapes: list[tuple[int, int]] = []
    handle = llama.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        results = []
        for others in neighbours:
            shapes.clear()
            results.append(guard.check_batch([text, *others], batch_size=16)[0])
            assert [rows for rows, _ in shapes] == [1 + len(others)]  # one padded forward, the text among them
    finally:
        handle.remove()
    for beside, others in zip(results, neighbours):
        assert beside.label == alone.label
        for probabilities, expected in ((beside.scores, alone.scores), (beside.calibrated, alone.calibrated)):
            assert probabilities == pytest.approx(expected, abs=1e-6), others
        assert (beside.vectors - alone.vectors).abs().max().item() < 1e-6
