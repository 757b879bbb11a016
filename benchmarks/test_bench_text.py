"""guard against the SAV reference procedure on the real SmolLM2-135M model (CPU).

Run: bash benchmarks/run.sh   (prints the ratio table recorded in BENCHMARKS.md)
Groups compare, in the same run: compile (activations of 60 exemplars), check latency (one
input at a time) and check throughput (45 held-out texts). Each benchmark also records peak memory
above the loaded model, measured in a fresh process (benchmarks/memory.py).
"""

import pytest
import torch

from benchmarks import procedures
from benchmarks.memory import measure
from benchmarks.texts import POLICY, heldout_texts
from guard.policy import load_policy

LATENCY_INPUTS = 10
THROUGHPUT_INPUTS = 45


@pytest.fixture(scope="module")
def exemplar_prompts(guard):
    policy = load_policy(POLICY)
    return [guard.loaded.prepare(policy.render(e.prompt_fields())) for e in policy.exemplars]


def test_reference_equals_guard(guard, exemplar_prompts):
    """Same activations and verdicts: the benchmarks compare cost, not different answers."""
    loaded = guard.loaded
    ref = procedures.reference_activations(loaded, exemplar_prompts[:6])
    ours = procedures.guard_activations(loaded, exemplar_prompts[:6])
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    texts = heldout_texts()[:8]
    ref_labels = procedures.reference_predict(loaded, guard.artifact, [guard.render(t) for t in texts]).tolist()
    assert [v.label for v in guard.check_batch(texts)] == [guard.artifact.label_names[i] for i in ref_labels]


def _memory(benchmark, procedure, db, count):
    result = measure(procedure, db, count)
    benchmark.extra_info.update(
        peak_extra_mib=round(result["peak_extra_mib"], 1), model_mib=round(result["model_mib"], 1)
    )


@pytest.mark.benchmark(group="compile: 60 exemplars, all heads")
def test_compile_reference(benchmark, guard, exemplar_prompts, compiled_db):
    benchmark.pedantic(procedures.reference_activations, args=(guard.loaded, exemplar_prompts), rounds=1, iterations=1)
    _memory(benchmark, "reference_compile", compiled_db, 60)


@pytest.mark.benchmark(group="compile: 60 exemplars, all heads")
def test_compile_guard(benchmark, guard, exemplar_prompts, compiled_db):
    benchmark.pedantic(procedures.guard_activations, args=(guard.loaded, exemplar_prompts), rounds=3, iterations=1)
    _memory(benchmark, "guard_compile", compiled_db, 60)


@pytest.mark.benchmark(group="check latency: batch 1")
def test_check_latency_reference(benchmark, guard):
    rendered = [guard.render(t) for t in heldout_texts()[:LATENCY_INPUTS]]
    benchmark.pedantic(
        procedures.reference_predict, args=(guard.loaded, guard.artifact, rendered), rounds=3, iterations=1
    )


@pytest.mark.benchmark(group="check latency: batch 1")
def test_check_latency_plain_forward(benchmark, guard):
    rendered = [guard.render(t) for t in heldout_texts()[:LATENCY_INPUTS]]
    benchmark.pedantic(procedures.plain_forward, args=(guard.loaded, rendered), rounds=5, iterations=1)
    benchmark.extra_info["layers"] = guard.loaded.layout.num_layers


@pytest.mark.benchmark(group="check latency: batch 1")
def test_check_latency_guard(benchmark, guard):
    texts = heldout_texts()[:LATENCY_INPUTS]
    benchmark.pedantic(lambda: [guard.check(t) for t in texts], rounds=5, iterations=1)
    benchmark.extra_info["deepest_layer"] = guard.artifact.deepest_layer


@pytest.mark.benchmark(group=f"check throughput: {THROUGHPUT_INPUTS} texts")
def test_check_throughput_reference(benchmark, guard, compiled_db):
    rendered = [guard.render(t) for t in heldout_texts()[:THROUGHPUT_INPUTS]]
    benchmark.pedantic(
        procedures.reference_predict, args=(guard.loaded, guard.artifact, rendered), rounds=1, iterations=1
    )
    _memory(benchmark, "reference_check", compiled_db, THROUGHPUT_INPUTS)


@pytest.mark.benchmark(group=f"check throughput: {THROUGHPUT_INPUTS} texts")
def test_check_throughput_guard(benchmark, guard, compiled_db):
    texts = heldout_texts()[:THROUGHPUT_INPUTS]
    benchmark.pedantic(guard.check_batch, args=(texts,), kwargs={"batch_size": 16}, rounds=3, iterations=1)
    _memory(benchmark, "guard_check", compiled_db, THROUGHPUT_INPUTS)
