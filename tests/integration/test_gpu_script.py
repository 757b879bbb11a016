"""benchmarks/gpu.py runs end to end (tiny configs on the CPU): the GPU run is one command away."""

import math


def test_gpu_benchmark_script_on_tiny_models(tmp_path):
    from benchmarks import gpu

    out = tmp_path / "gpu.json"
    rows = gpu.main(
        [
            "--tiny",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--exemplars",
            "2",
            "--checks",
            "2",
            "--batches",
            "2",
            "--repeats",
            "1",
            "--sides",
            "20,48",
            "--out",
            str(out),
        ]
    )
    assert out.exists()
    assert {r["model"] for r in rows} == {"qwen2_vl-tiny", "llava_onevision-tiny"}
    measures = [r["measure"] for r in rows if r["model"] == "qwen2_vl-tiny"]
    assert measures[0] == "compile, s per exemplar"
    assert any(m.startswith("check latency batch 1") for m in measures)
    assert any(m.startswith("images/s at batch 2") for m in measures)
    for row in rows:
        assert math.isfinite(row["guard"]) and row["guard"] > 0 and row["reference"] > 0


def test_synthetic_heads_reach_the_requested_layer():
    from benchmarks import gpu

    loaded = gpu.build("t", gpu.TINY["qwen2_vl-tiny"], __import__("torch").device("cpu"), __import__("torch").float32)
    for deepest in range(loaded.layout.num_layers):
        art = gpu.synthetic_artifact(loaded, deepest, k=6)
        assert art.deepest_layer == deepest and len(set(art.heads)) == len(art.heads)
