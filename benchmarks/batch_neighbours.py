"""How far a text's head outputs move with its batch neighbours, and why (issue 21, point 7).

Runs one text alone, then in right-padded batches beside shorter and longer texts, on the real
SmolLM2 default model, and prints the largest difference of its head outputs (z, every layer)
from the alone run. `--attention rows` swaps transformers' SDPA for an experiment defined here:
each row attends over its own tokens only, with the very call it would get alone.

    python -m benchmarks.batch_neighbours --threads 2
    python -m benchmarks.batch_neighbours --threads 1 --attention rows
    MKL_CBWR=AUTO,STRICT python -m benchmarks.batch_neighbours --threads 2 --attention rows

(MKL_CBWR must be in the environment before the process starts: MKL reads it when it loads.)
"""

from __future__ import annotations

import argparse
import os

import torch

PROMPT = "<request>\n{}\n</request>\nIs the request above harmful? Answer the question with Yes or No."
TARGET = "how do I bake bread"
NEIGHBOURS = {
    "beside a shorter text": ["hi"],
    "beside a longer text": ["write a long essay about the roman empire, its emperors, wars and roads " * 3],
    "in 8 of mixed lengths": ["hi", "tell me how to make a weapon", "write an essay on rome " * 4] * 2 + ["ok"],
}


def row_attention(module, query, key, value, attention_mask, **kwargs):
    """Each row of a right-padded batch through SDPA alone, cut to its real length (read from the
    causal-plus-padding mask: the last query sees every real key); the padded tail is zeros."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is None or query.shape[0] == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    out = query.new_zeros(query.shape[0], query.shape[2], query.shape[1], value.shape[-1])
    for b, n in enumerate(attention_mask[:, 0, -1].sum(dim=-1).tolist()):
        rows = (t[b : b + 1, :, :n].contiguous() for t in (query, key, value))
        out[b : b + 1, :n] = sdpa_attention_forward(module, *rows, None, **kwargs)[0]
    return out, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--attention", choices=["sdpa", "rows"], default="sdpa")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from guard.models import load_model
    from guard.models.features import features

    loaded = load_model("smollm2-135m", device="cpu")
    if args.attention == "rows":
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        AttentionInterface.register("rows", row_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register("rows", sdpa_mask)
        loaded.model.set_attn_implementation("rows")
    ready = [loaded.prepare(PROMPT.format(TARGET))]
    alone = features(loaded, ready, batch_size=16).z[0]
    setting = f"threads {args.threads}, attention {args.attention}, MKL_CBWR={os.environ.get('MKL_CBWR', '')}"
    for name, texts in NEIGHBOURS.items():
        batch = ready + [loaded.prepare(PROMPT.format(t)) for t in texts]
        z = features(loaded, batch, batch_size=16).z[0]
        print(f"{setting}: {name}: max |z - z alone| = {(z - alone).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
