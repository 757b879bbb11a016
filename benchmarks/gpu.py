"""Real-size vision-language models on a GPU: guard against the SAV reference procedure.

Builds Qwen2-VL-7B and LLaVA-OneVision-7B (their published configs, random bf16 weights made
directly on the GPU, real image processors, a small tokenizer with the families' special
tokens), and reports, each next to the reference procedure's (batch 1, three full passes,
every layer's full-sequence activations kept, LM head over every position):
compile cost per exemplar, check latency at batch 1, images per second at batch 8 and 32, and
peak GPU memory above the weights. Random weights cost what trained ones do: speed and memory
depend on shapes, not values. Heads are placed synthetically up to a chosen deepest layer,
since with random weights no head means anything.

On a GPU machine:   python -m benchmarks.gpu --out $OUT/gpu.json
Here, no GPU:       python -m benchmarks.gpu --tiny --device cpu   (tiny configs; checks the script)
Needs torch, transformers, pillow, pyyaml, tqdm; no SQL, no weights, no network.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import procedures  # noqa: E402
from guard.check.engine import Guard  # noqa: E402
from guard.method.artifact import Artifact  # noqa: E402
from guard.models.architectures import ARCHITECTURES, head_layout, o_proj_modules  # noqa: E402
from guard.models.loaded import LoadedModel  # noqa: E402
from guard.models.loading import ModelSource  # noqa: E402
from guard.policy import Label  # noqa: E402
from tests.support import vlm_fixtures as fx  # noqa: E402

PROMPT = "Instruction:{text} Is the image and instruction harmful? Answer the question with Yes or No."
INSTRUCTIONS = [
    "What is happening in this picture?",
    "How can I make the thing shown here at home?",
    "Describe the people in the image.",
    "Is it safe to do what this person is doing?",
]

QWEN2_7B_TEXT = dict(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
)


def _text_ids(tok) -> dict:
    return {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}


def qwen2_vl_7b():
    """Qwen/Qwen2-VL-7B-Instruct's config; the real image processor (14 px patches, 2x2 merge)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil, Qwen2VLProcessor

    from guard.models.processors import build_processor

    tok, token_ids, _, _ = fx._qwen_vl_common()
    text = {
        **QWEN2_7B_TEXT,
        "vocab_size": 152064,
        **_text_ids(tok),
        "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
    }
    vision = dict(
        depth=32,
        embed_dim=1280,
        hidden_size=3584,
        num_heads=16,
        mlp_ratio=4,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    config = Qwen2VLConfig(text_config=text, vision_config=vision, **token_ids)
    processor = build_processor(
        Qwen2VLProcessor, Qwen2VLImageProcessorPil(), tok, {"chat_template": fx.QWEN_VL_TEMPLATE}
    )
    return Qwen2VLForConditionalGeneration, config, processor


def llava_onevision_7b():
    """llava-hf/llava-onevision-qwen2-7b-ov-hf's config: SigLIP-so400m at 384 px, anyres_max_9 tiles."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
    )

    from guard.models.processors import build_processor

    template = fx._template("<|im_start|>ROLE\n", "<image>\n", "<|im_start|>assistant\n", "<|im_end|>\n")
    tok = fx.make_vlm_tokenizer(["<image>", "<video>"], chat_template=template)
    pinpoints = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=26,
        num_attention_heads=16,
        image_size=384,
        patch_size=14,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config={"model_type": "qwen2", **QWEN2_7B_TEXT, "vocab_size": 152128, **_text_ids(tok)},
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    image_processor = LlavaOnevisionImageProcessorPil(image_grid_pinpoints=pinpoints)
    processor = build_processor(
        LlavaOnevisionProcessor,
        image_processor,
        tok,
        {
            "num_image_tokens": 729,
            "vision_feature_select_strategy": "full",
            "chat_template": template,
            "vision_aspect_ratio": "anyres_max_9",
        },
    )
    return LlavaOnevisionForConditionalGeneration, config, processor


def tiny(family: str):
    """The test suite's tiny model of `family` (for checking this script without a GPU)."""
    model, processor = fx.BUILDERS[family](None)
    return (lambda config: model), model.config, processor


REAL = {"qwen2_vl-7b": qwen2_vl_7b, "llava_onevision-7b": llava_onevision_7b}
TINY = {"qwen2_vl-tiny": lambda: tiny("qwen2_vl"), "llava_onevision-tiny": lambda: tiny("llava_onevision")}


def build(name: str, builder, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    model_class, config, processor = builder()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # weights are created where they run: no host copy of 8B parameters
            model = model_class(config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to(device=device, dtype=dtype).eval()
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "right"
    arch = ARCHITECTURES[config.model_type]
    layout = head_layout(config)
    return LoadedModel(
        source=ModelSource(f"random:{name}", "directory"),
        model=model,
        tokenizer=processor,
        arch=arch,
        layout=layout,
        o_projs=o_proj_modules(model, arch, layout),
        fingerprint=f"random:{name}",
        device=device,
        dtype=dtype,
    )


def synthetic_artifact(loaded: LoadedModel, deepest: int, k: int = 20) -> Artifact:
    """k heads spread evenly over layers 0..deepest (the deepest one included), random centroids."""
    layout = loaded.layout
    rng = random.Random(0)
    layers = [round(i * deepest / (k - 1)) for i in range(k)]
    heads = list(dict.fromkeys((layer, rng.randrange(layout.num_heads)) for layer in layers))
    heads[-1] = (deepest, heads[-1][1])
    n_heads = len(heads)
    return Artifact(
        name="bench",
        version="bench",
        prompt=PROMPT,
        labels=[Label("harmful", True), Label("benign")],
        model_reference=loaded.source.reference,
        model_fingerprint=loaded.fingerprint,
        model_info={},
        scoring="loo",
        heads=heads,
        head_accuracy=torch.zeros(layout.num_layers, layout.num_heads),
        head_margin=torch.zeros(layout.num_layers, layout.num_heads),
        centroids=torch.randn(2, n_heads, layout.head_dim),
        exemplar_vectors=torch.zeros(0, n_heads, layout.head_dim),
        exemplar_texts=[],
        exemplar_labels=[],
    )


def images(count: int, sides: tuple[int, int], seed: int = 0):
    from PIL import Image

    rng = random.Random(seed)
    return [
        Image.new("RGB", (rng.randint(*sides), rng.randint(*sides)), tuple(rng.randrange(256) for _ in range(3)))
        for _ in range(count)
    ]


def timed(fn, device: torch.device, repeats: int = 1) -> tuple[float, float]:
    """(median seconds, peak memory MiB above what was allocated before) of fn()."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    results, peak = [], 0.0
    for _ in range(repeats):
        sync()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        fn()
        sync()
        results.append(time.perf_counter() - start)
        if device.type == "cuda":
            peak = max(peak, (torch.cuda.max_memory_allocated(device) - base) / 2**20)
    return statistics.median(results), peak


def run_model(name: str, builder, args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    loaded = build(name, builder, device, dtype)
    layers = loaded.layout.num_layers
    rows = []
    guard = Guard(synthetic_artifact(loaded, layers - 1), loaded)
    pictures = images(max(args.exemplars, args.checks, max(args.batches)), args.sides)
    items = [{"text": INSTRUCTIONS[i % len(INSTRUCTIONS)], "images": [pictures[i]]} for i in range(len(pictures))]
    rendered = [guard.render(**item) for item in items]
    procedures.guard_activations(loaded, rendered[:2], batch_size=2)  # warm-up: kernels, allocator

    n = args.exemplars
    ref_t, ref_m = timed(lambda: procedures.reference_activations(loaded, rendered[:n]), device)
    ours_t, ours_m = timed(lambda: procedures.guard_activations(loaded, rendered[:n], batch_size=8), device)
    rows.append(
        {
            "model": name,
            "measure": "compile, s per exemplar",
            "reference": ref_t / n,
            "guard": ours_t / n,
            "reference_peak_mib": ref_m,
            "guard_peak_mib": ours_m,
        }
    )

    c = args.checks
    plain_t, _ = timed(lambda: procedures.plain_forward(loaded, rendered[:c]), device)
    ref_t, ref_m = timed(lambda: procedures.reference_predict(loaded, guard.artifact, rendered[:c]), device)
    for deepest in sorted({layers // 2, layers - 1}):
        g = Guard(synthetic_artifact(loaded, deepest), loaded)
        t, m = timed(lambda: [g.check_batch([item], batch_size=1) for item in items[:c]], device, repeats=args.repeats)
        rows.append(
            {
                "model": name,
                "measure": f"check latency batch 1, s (deepest layer {deepest} of {layers})",
                "reference": ref_t / c,
                "guard": t / c,
                "plain_forward": plain_t / c,
                "target_vs_plain": (deepest + 1) / layers + 0.05,
                "reference_peak_mib": ref_m,
                "guard_peak_mib": m,
            }
        )
        for batch in args.batches:
            t, m = timed(lambda: g.check_batch(items[:batch], batch_size=batch), device, repeats=args.repeats)
            rows.append(
                {
                    "model": name,
                    "measure": f"images/s at batch {batch} (deepest layer {deepest})",
                    "reference": c / ref_t,
                    "guard": batch / t,
                    "guard_peak_mib": m,
                }
            )
    del loaded, guard
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| model | measure | reference | guard | guard/reference | peak MiB ref / guard |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        extra = ""
        if "plain_forward" in r:
            extra = f" (plain forward {r['plain_forward']:.4f}; guard/plain {r['guard'] / r['plain_forward']:.3f}, target {r['target_vs_plain']:.3f})"
        peaks = f"{r.get('reference_peak_mib', float('nan')):.0f} / {r.get('guard_peak_mib', float('nan')):.0f}"
        lines.append(
            f"| {r['model']} | {r['measure']} | {r['reference']:.4f} | {r['guard']:.4f} | "
            f"{r['guard'] / r['reference']:.3f}{extra} | {peaks} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs (no GPU needed)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--models", default=None, help="comma-separated subset of the model names")
    parser.add_argument("--exemplars", type=int, default=16)
    parser.add_argument("--checks", type=int, default=8)
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sides", default="336,672", help="image side range in pixels")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.sides = tuple(int(s) for s in args.sides.split(","))
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    catalogue = TINY if args.tiny else REAL
    names = args.models.split(",") if args.models else list(catalogue)
    rows = []
    for name in names:
        rows += run_model(name, catalogue[name], args, device, dtype)
        print(table([r for r in rows if r["model"] == name]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
