"""Many threads share one loaded model: every verdict equals the one a single thread gets.

guard 0.1 registered its hooks per call on the shared `o_proj` modules, so one thread's hooks
fired inside another thread's forward (IndexError, wrong verdicts). The tap's hooks are now
installed once per model and read per-call state (guard.models.capture), so these tests fail on the old
design and pass on the new one.
"""

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from guard.check.engine import Guard, GuardSet
from guard.compiler import compile_policy
from guard.models import set_threads
from tests.support.fixtures import TEXTS, write_policy

THREADS = 8
PER_THREAD = 25
WORDS = [
    "how",
    "do",
    "I",
    "make",
    "bake",
    "break",
    "hide",
    "help",
    "hurt",
    "find",
    "build",
    "my",
    "the",
    "a",
    "neighbour",
    "bread",
    "lock",
    "code",
    "poem",
    "river",
]


def mixed_inputs(seed: int, n: int) -> list[str]:
    """Short and long texts, repeats, odd characters: different lengths make different padding."""
    rnd = random.Random(seed)
    pool = [t for texts in TEXTS.values() for t in texts]
    out = []
    for _ in range(n):
        kind = rnd.random()
        if kind < 0.4:
            out.append(rnd.choice(pool))
        elif kind < 0.9:
            out.append(" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 40))))
        else:
            out.append(rnd.choice(pool).upper() + " ?!")
    return out


def calls_of(seed: int) -> list[tuple[str, list[str]]]:
    """One thread's work: single checks and small batches, in a seeded order."""
    rnd = random.Random(seed)
    texts = mixed_inputs(seed, PER_THREAD)
    calls, i = [], 0
    while i < len(texts):
        size = rnd.choice([1, 1, 2, 3, 5])
        calls.append(("one" if size == 1 else "batch", texts[i : i + size]))
        i += size
    return calls


def run_calls(target, calls):
    out = []
    for kind, texts in calls:
        if kind == "one":
            out.append([target.check(texts[0])])
        else:
            out.append(target.check_batch(texts, batch_size=2))
    return out


def assert_same(got, expected):
    """Labels, flags, vote shares and every head's vote identical; similarities to float noise."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        for a, b in zip(g, e):
            a_items = a.items() if isinstance(a, dict) else [(None, a)]
            for name, verdict in a_items:
                ref = b[name] if name is not None else b
                assert (verdict.label, verdict.flagged, verdict.scores) == (ref.label, ref.flagged, ref.scores)
                assert [v.label for v in verdict.votes] == [v.label for v in ref.votes]
                for v, r in zip(verdict.votes, ref.votes):
                    for label in v.similarity:
                        assert v.similarity[label] == pytest.approx(r.similarity[label], abs=1e-5)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, llama):
    tmp = tmp_path_factory.mktemp("threads")
    db = str(tmp / "guard.db")
    compile_policy(write_policy(tmp, llama.source.path, TEXTS, name="one"), db, loaded=llama)
    compile_policy(write_policy(tmp, llama.source.path, TEXTS, name="two", heads=2), db, loaded=llama)
    return db


def test_eight_threads_share_one_guard(shared, llama):
    guard = Guard.load(shared, "one", model=llama)
    work = [calls_of(seed) for seed in range(THREADS)]
    expected = [run_calls(guard, calls) for calls in work]  # one thread, one call after another
    barrier = threading.Barrier(THREADS)

    def worker(i):
        barrier.wait()  # start together, so forwards overlap
        return run_calls(guard, work[i])

    with ThreadPoolExecutor(THREADS) as pool:
        got = list(pool.map(worker, range(THREADS)))
    for g, e in zip(got, expected):
        assert_same(g, e)


def test_threads_share_a_guard_set_and_single_guards_on_one_model(shared, llama):
    both = GuardSet.load(shared, ["one", "two"], model=llama)
    one = Guard.load(shared, "one", model=llama)
    work = [calls_of(100 + seed) for seed in range(THREADS)]
    targets = [both if i % 2 else one for i in range(THREADS)]
    expected = [run_calls(t, calls) for t, calls in zip(targets, work)]
    with ThreadPoolExecutor(THREADS) as pool:
        got = list(pool.map(lambda i: run_calls(targets[i], work[i]), range(THREADS)))
    for g, e in zip(got, expected):
        assert_same(g, e)


def test_a_trace_sees_only_its_own_thread(llama):
    """Two threads read different layers of different inputs at once; each gets its own."""
    inputs = [llama.encode([llama.prepare(t)]) for t in ("a short one", "a much longer text " * 8)]
    layers = [[0], [1, 2]]
    expected = []
    for x, ls in zip(inputs, layers):
        with torch.inference_mode(), llama.tap.trace(x["attention_mask"], ls) as trace:
            llama.model(**x, use_cache=False)
        expected.append(trace.stacked(ls))
    barrier = threading.Barrier(2)

    def read(i):
        barrier.wait()
        for _ in range(20):
            with torch.inference_mode(), llama.tap.trace(inputs[i]["attention_mask"], layers[i]) as trace:
                llama.model(**inputs[i], use_cache=False)
            assert set(trace.z) == set(layers[i])
            torch.testing.assert_close(trace.stacked(layers[i]), expected[i])
        return True

    with ThreadPoolExecutor(2) as pool:
        assert all(pool.map(read, range(2)))


def test_threads_setting(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1
        monkeypatch.setenv("GUARD_THREADS", "2")
        assert set_threads() == 2
        assert set_threads(1) == 1  # an explicit value wins over the environment
        monkeypatch.setenv("GUARD_THREADS", "many")
        with pytest.raises(Exception, match="GUARD_THREADS must be a whole number"):
            set_threads()
    finally:
        torch.set_num_threads(before)
