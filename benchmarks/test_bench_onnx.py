"""onnxruntime (guard export --onnx, guard check --engine onnx) against the torch path, on the
real SmolLM2-135M default policy, CPU, same inputs, same run.

Run: bash benchmarks/run.sh -k onnx   (prints the ratio rows recorded in BENCHMARKS.md)
Groups: check latency (one input at a time, 10 held-out texts a round) and check throughput
(45 held-out texts, batches of 16). Peak memory of each engine, loading included, is measured in
a fresh process (benchmarks/onnx_memory.py).
"""

import pytest

from benchmarks.onnx_memory import measure
from benchmarks.texts import heldout_texts

pytest.importorskip("onnxruntime")

LATENCY_INPUTS = 10
THROUGHPUT_INPUTS = 45


@pytest.fixture(scope="module")
def onnx_dir(guard, tmp_path_factory) -> str:
    from guard.onnx.export import export_onnx

    return str(
        export_onnx(guard.artifact, tmp_path_factory.mktemp("onnx") / "text-harm", loaded=guard.loaded).directory
    )


@pytest.fixture(scope="module")
def engine(onnx_dir):
    from guard.onnx.engine import OnnxGuard

    return OnnxGuard.load(onnx_dir)


def test_onnx_equals_torch(guard, engine):
    """Same verdicts: the benchmarks compare cost, not different answers."""
    texts = heldout_texts()
    assert [v.label for v in engine.check_batch(texts)] == [v.label for v in guard.check_batch(texts)]


def _memory(benchmark, engine_name, where):
    result = measure(engine_name, where, THROUGHPUT_INPUTS)
    benchmark.extra_info.update({k: round(v, 1) for k, v in result.items() if k != "engine"})


@pytest.mark.benchmark(group="onnx check latency: batch 1")
def test_onnx_latency_torch(benchmark, guard):
    texts = heldout_texts()[:LATENCY_INPUTS]
    benchmark.pedantic(lambda: [guard.check(t) for t in texts], rounds=5, iterations=1)


@pytest.mark.benchmark(group="onnx check latency: batch 1")
def test_onnx_latency_onnxruntime(benchmark, engine):
    texts = heldout_texts()[:LATENCY_INPUTS]
    benchmark.pedantic(lambda: [engine.check(t) for t in texts], rounds=5, iterations=1)


@pytest.mark.benchmark(group=f"onnx check throughput: {THROUGHPUT_INPUTS} texts")
def test_onnx_throughput_torch(benchmark, guard, compiled_db):
    texts = heldout_texts()[:THROUGHPUT_INPUTS]
    benchmark.pedantic(guard.check_batch, args=(texts,), kwargs={"batch_size": 16}, rounds=3, iterations=1)
    _memory(benchmark, "torch", compiled_db)


@pytest.mark.benchmark(group=f"onnx check throughput: {THROUGHPUT_INPUTS} texts")
def test_onnx_throughput_onnxruntime(benchmark, engine, onnx_dir):
    texts = heldout_texts()[:THROUGHPUT_INPUTS]
    benchmark.pedantic(engine.check_batch, args=(texts,), kwargs={"batch_size": 16}, rounds=3, iterations=1)
    _memory(benchmark, "onnx", onnx_dir)
