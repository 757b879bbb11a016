"""guard against the SAV reference procedure on tiny vision-language models (CPU, float32).

Tiny random-init Qwen2-VL and LLaVA-OneVision models (the test suite's fixtures) with their real
image processors; 12 images of varied sizes. Real-size figures come from benchmarks/gpu.py.
"""

import pytest
import torch

from benchmarks import gpu, procedures

FAMILIES = ["qwen2_vl", "llava_onevision"]
COUNT = 12


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request):
    loaded = gpu.build(request.param, gpu.TINY[f"{request.param}-tiny"], torch.device("cpu"), torch.float32)
    guard = gpu.Guard(gpu.synthetic_artifact(loaded, loaded.layout.num_layers // 2, k=8), loaded)
    items = [{"text": gpu.INSTRUCTIONS[i % 4], "images": [im]} for i, im in enumerate(gpu.images(COUNT, (24, 96)))]
    return request.param, loaded, guard, items, [guard.render(**item) for item in items]


def test_vlm_compile_reference(benchmark, setup):
    family, loaded, _, _, rendered = setup
    benchmark.group = f"tiny {family}: compile {COUNT} images"
    benchmark.pedantic(
        procedures.reference_activations, args=(loaded, rendered), rounds=3, iterations=1, warmup_rounds=1
    )


def test_vlm_compile_guard(benchmark, setup):
    family, loaded, _, _, rendered = setup
    benchmark.group = f"tiny {family}: compile {COUNT} images"
    benchmark.pedantic(procedures.guard_activations, args=(loaded, rendered), rounds=5, iterations=1, warmup_rounds=1)


def test_vlm_check_reference(benchmark, setup):
    family, loaded, guard, _, rendered = setup
    benchmark.group = f"tiny {family}: check {COUNT} images"
    benchmark.pedantic(
        procedures.reference_predict,
        args=(loaded, guard.artifact, rendered),
        rounds=3,
        iterations=1,
        warmup_rounds=1,
    )


def test_vlm_check_guard(benchmark, setup):
    family, _, guard, items, _ = setup
    benchmark.group = f"tiny {family}: check {COUNT} images"
    benchmark.pedantic(
        guard.check_batch, args=(items,), kwargs={"batch_size": 8}, rounds=5, iterations=1, warmup_rounds=1
    )
