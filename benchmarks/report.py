"""Turn a pytest-benchmark JSON file into the ratio table of BENCHMARKS.md.

Usage: python -m benchmarks.report .benchmarks/latest.json
"""

from __future__ import annotations

import json
import sys


def load(path: str) -> dict[str, dict]:
    data = json.loads(open(path).read())
    return {b["fullname"].split("::")[-1].removeprefix("test_"): b for b in data["benchmarks"]}


def paired_rows(b: dict[str, dict]) -> list[tuple[str, str, str]]:
    """Groups holding a `..._reference` and a `..._guard` benchmark (the tiny-VLM ones)."""
    rows = []
    for name, ref in b.items():
        if not name.startswith("vlm_") or "_reference" not in name:
            continue
        ours = b.get(name.replace("_reference", "_guard"))
        if ours is not None and ours["group"] == ref["group"]:
            g, r = ours["stats"]["mean"], ref["stats"]["mean"]
            rows.append((f"{ref['group']}: time guard/reference", f"{g / r:.3f}", f"{g:.3f}s vs {r:.3f}s"))
    return rows


def ratio_rows(b: dict[str, dict]) -> list[tuple[str, str, str]]:
    def mean(name):
        return b[name]["stats"]["mean"]

    def mem(name):
        return b[name]["extra_info"].get("peak_extra_mib")

    rows = []
    if "compile_guard" in b and "compile_reference" in b:
        rows.append(
            (
                "compile, 60 exemplars: time guard/reference",
                f"{mean('compile_guard') / mean('compile_reference'):.3f}",
                f"{mean('compile_guard'):.2f}s vs {mean('compile_reference'):.2f}s (target <= 0.4)",
            )
        )
        rows.append(
            (
                "compile: peak memory above model, guard/reference",
                f"{mem('compile_guard') / mem('compile_reference'):.3f}",
                f"{mem('compile_guard'):.0f} MiB vs {mem('compile_reference'):.0f} MiB (model {b['compile_guard']['extra_info']['model_mib']:.0f} MiB)",
            )
        )
    if {"check_latency_guard", "check_latency_reference", "check_latency_plain_forward"} <= set(b):
        layers = b["check_latency_plain_forward"]["extra_info"]["layers"]
        deepest = b["check_latency_guard"]["extra_info"]["deepest_layer"]
        target = (deepest + 1) / layers + 0.05
        rows.append(
            (
                "check latency, batch 1: guard/reference",
                f"{mean('check_latency_guard') / mean('check_latency_reference'):.3f}",
                f"{mean('check_latency_guard') * 100:.1f} ms vs {mean('check_latency_reference') * 100:.1f} ms per input (10 inputs a round)",
            )
        )
        rows.append(
            (
                "check latency, batch 1: guard/plain full forward",
                f"{mean('check_latency_guard') / mean('check_latency_plain_forward'):.3f}",
                f"target <= (deepest {deepest} + 1)/{layers} + 0.05 = {target:.3f}",
            )
        )
    if "check_throughput_guard" in b and "check_throughput_reference" in b:
        g, r = mean("check_throughput_guard"), mean("check_throughput_reference")
        n = int(b["check_throughput_guard"]["group"].split(":")[1].split()[0])
        rows.append(
            (
                f"check throughput, {n} texts: time guard/reference",
                f"{g / r:.3f}",
                f"{n / g:.1f} vs {n / r:.1f} texts/s",
            )
        )
        rows.append(
            (
                "check: peak memory above model, guard/reference",
                f"{mem('check_throughput_guard') / mem('check_throughput_reference'):.3f}",
                f"{mem('check_throughput_guard'):.0f} MiB vs {mem('check_throughput_reference'):.0f} MiB",
            )
        )
    return rows


def onnx_rows(b: dict[str, dict]) -> list[tuple[str, str, str]]:
    """onnxruntime against torch (benchmarks/test_bench_onnx.py)."""
    rows = []
    if "onnx_latency_onnxruntime" in b and "onnx_latency_torch" in b:
        o, t = b["onnx_latency_onnxruntime"]["stats"]["mean"], b["onnx_latency_torch"]["stats"]["mean"]
        rows.append(
            (
                "check latency, batch 1: onnxruntime/torch",
                f"{o / t:.3f}",
                f"{o * 100:.1f} ms vs {t * 100:.1f} ms per input (10 inputs a round)",
            )
        )
    if "onnx_throughput_onnxruntime" in b and "onnx_throughput_torch" in b:
        o, t = b["onnx_throughput_onnxruntime"], b["onnx_throughput_torch"]
        n = int(o["group"].split(":")[1].split()[0])
        rows.append(
            (
                f"check throughput, {n} texts: time onnxruntime/torch",
                f"{o['stats']['mean'] / t['stats']['mean']:.3f}",
                f"{n / o['stats']['mean']:.1f} vs {n / t['stats']['mean']:.1f} texts/s",
            )
        )
        om, tm = o["extra_info"], t["extra_info"]
        rows.append(
            (
                "check: process peak memory (loading included), onnxruntime/torch",
                f"{om['peak_mib'] / tm['peak_mib']:.3f}",
                f"{om['peak_mib']:.0f} MiB vs {tm['peak_mib']:.0f} MiB (after loading: "
                f"{om['loaded_mib']:.0f} vs {tm['loaded_mib']:.0f} MiB)",
            )
        )
    return rows


def main(path: str) -> None:
    benchmarks = load(path)
    rows = ratio_rows(benchmarks) + paired_rows(benchmarks) + onnx_rows(benchmarks)
    print("| measure | ratio | detail |\n|---|---|---|")
    for name, ratio, detail in rows:
        print(f"| {name} | {ratio} | {detail} |")


if __name__ == "__main__":
    main(sys.argv[1])
