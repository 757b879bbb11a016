"""Which token positions should a head's vector come from? guard reads each head at the last token
of the prompt (the paper's choice). Issue 11 compared other readings on the team-written data of
guard 0.2; this runs the comparison on the shipped public data (issue 20): the last token against
the mean over the user's request span, whose frame-independent reading is what the sentence-
embedding baseline does well on role-play frames.

Each text is rendered exactly as guard renders it (the policy's prompt, `escape: xml`, the chat
template) and run once, alone (no padding), up to layer 16 with hooks on the attention output
projections, which see every head's output at every position. The classifier is the shipped fit
(`Fit.of(policy)`: 20 heads no deeper than layer 16, the probe, the margin vote) on each reading.
Selection is on the fitted side (leave-one-source-out over the shipped exemplars); the eval files
given are measured once, grouped by their `source` field.

Run:  .venv/bin/python -m benchmarks.study_token_position [EVAL.jsonl ...] [--per-source N]
      [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch
from tqdm import tqdm

from guard.eval import baselines
from guard.eval.sources import exemplar_groups, loso_folds
from guard.method.fit import Fit
from guard.models import load_model
from guard.policy import escape_value, fill_prompt, load_policy

ROOT = Path(__file__).resolve().parents[1]
MAX_LAYER = 16
POSITIONS = ("last token", "mean over the request span")


class _Stop(Exception):
    """Ends the forward once layer MAX_LAYER's heads are read."""


def head_vectors(loaded, prompt: str, escape: str, texts: list[str], what: str) -> torch.Tensor:
    """[N, positions, layers, heads, head_dim]: each text's heads read at each of POSITIONS."""
    layout, tokenizer = loaded.layout, loaded.tokenizer
    taken: dict[int, torch.Tensor] = {}

    def reader(layer: int):
        def hook(module, args):
            taken[layer] = args[0][0].detach()  # [tokens, heads * head_dim]
            if layer == MAX_LAYER:
                raise _Stop  # nothing deeper is read

        return hook

    handles = [loaded.o_projs[layer].register_forward_pre_hook(reader(layer)) for layer in range(MAX_LAYER + 1)]
    out = []
    try:
        for text in tqdm(texts, desc=what, unit="text"):
            rendered = loaded.prepare(fill_prompt(prompt, {"text": text}, escape))
            encoded = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
            start = rendered.index(escape_value(text, escape))
            end = start + len(escape_value(text, escape))
            span = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if a < end and b > start]
            ids = torch.tensor([encoded["input_ids"]], device=loaded.device)
            with torch.inference_mode(), contextlib.suppress(_Stop):
                loaded.model(input_ids=ids, use_cache=False)
            per_layer = torch.stack([taken[layer] for layer in range(MAX_LAYER + 1)], dim=1)  # [T, L, H*D]
            per_layer = per_layer.reshape(per_layer.shape[0], MAX_LAYER + 1, layout.num_heads, layout.head_dim)
            out.append(torch.stack([per_layer[-1], per_layer[span].mean(0)]).float())
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(out)


def loso_flags(acts: torch.Tensor, labels: torch.Tensor, groups: list[str], fit: Fit) -> torch.Tensor:
    """Each source held out of a fit on the others: its items flagged or not."""
    flagged = torch.zeros(len(labels), dtype=torch.bool)
    for _, fitted, held in loso_folds(groups):
        flagged[held] = fit(acts[fitted], labels[fitted]).predict(acts[held]) == 0
    return flagged


def by_source(flagged: torch.Tensor, labels: torch.Tensor, groups: list[str]) -> dict[str, str]:
    """source -> "caught/harmful" or "flagged/benign" (recall or FPR), plus the pooled pair."""
    out = {}
    for name in [*dict.fromkeys(groups), "pooled"]:
        mask = torch.tensor([name in ("pooled", g) for g in groups])
        for label, what in ((0, "recall"), (1, "FPR")):
            pick = mask & (labels == label)
            if pick.any():
                out[f"{name} {what}"] = f"{int(flagged[pick].sum())}/{int(pick.sum())}"
    return out


def embedding_results(policy, y, groups, rows) -> dict:
    """The embedding baseline (all-MiniLM-L6-v2 + logistic regression) on the same folds and items."""
    model_dir = baselines.embed_model_dir("embed")
    train = baselines.embed_texts(model_dir, [ex.text for ex in policy.exemplars])
    flagged = torch.zeros(len(y), dtype=torch.bool)
    for _, fitted, held in loso_folds(groups):
        flagged[held] = baselines.logistic_regression(train[fitted], y[fitted], train[held])[0] == 0
    out = {"loso": by_source(flagged, y, groups)}
    if rows:
        test = baselines.embed_texts(model_dir, [r["text"] for r in rows])
        t = torch.tensor([policy.label_names.index(r["label"]) for r in rows])
        out["eval"] = by_source(baselines.logistic_regression(train, y, test)[0] == 0, t, [r["source"] for r in rows])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("eval", nargs="*", type=Path, help="never-fitted JSONL files (text, label, source)")
    parser.add_argument("--per-source", type=int, default=0, help="only the first N items of each eval source")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--vectors", type=Path, help="keep the head vectors in this torch file (reused if it exists)")
    args = parser.parse_args()
    policy = load_policy(ROOT / "policies" / "text-harm.yaml")
    loaded = load_model(policy.model, policy.base_dir, device="cpu")
    fit = Fit.of(policy)
    y = torch.tensor([policy.label_names.index(ex.label) for ex in policy.exemplars])
    groups = exemplar_groups(policy, "source")
    rows, taken = [], {}
    for path in args.eval:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            taken[row["source"]] = taken.get(row["source"], 0) + 1
            if not args.per_source or taken[row["source"]] <= args.per_source:
                rows.append(row)
    if args.vectors and args.vectors.exists():
        train, test = torch.load(args.vectors)
    else:
        train = head_vectors(loaded, policy.prompt, policy.escape, [ex.text for ex in policy.exemplars], "exemplars")
        test = head_vectors(loaded, policy.prompt, policy.escape, [r["text"] for r in rows], "eval") if rows else None
        if args.vectors:
            torch.save((train, test), args.vectors)
    t = torch.tensor([policy.label_names.index(r["label"]) for r in rows])
    results = {}
    # each reading alone, and both side by side (each head's vector is the two readings concatenated)
    readings = {name: (lambda x, p=p: x[:, p]) for p, name in enumerate(POSITIONS)}
    readings["both, concatenated"] = lambda x: torch.cat([x[:, 0], x[:, 1]], dim=-1)
    for name, read in readings.items():
        results[name] = {"loso": by_source(loso_flags(read(train), y, groups, fit), y, groups)}
        if rows:
            flagged = fit(read(train), y).predict(read(test)) == 0
            results[name]["eval"] = by_source(flagged, t, [r["source"] for r in rows])
        print(name, json.dumps(results[name]), flush=True)
    results["embedding + LR baseline"] = embedding_results(policy, y, groups, rows)
    print("embedding + LR baseline", json.dumps(results["embedding + LR baseline"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
