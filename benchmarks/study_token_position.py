"""Which token positions should a head's vector come from? A study for the default text-harm
policy (issue 11): guard reads each head at the last token of the prompt (the paper's choice);
this compares the mean over the last few tokens and the mean over the user's request span.

Each text is rendered exactly as guard renders it (the policy's prompt, `escape: xml`, the chat
template) and run once, alone (no padding), up to layer 16 with hooks on the attention output
projections, which see every head's output at every position. The classifier is the shipped one
(20 heads no deeper than layer 16 scored leave-one-out, 16 prototypes per label, margin vote),
fitted on policies/text-harm/exemplars.jsonl and measured on policies/text-harm/heldout.jsonl.

Run:  .venv/bin/python -m benchmarks.study_token_position
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from tqdm import tqdm

from guard.method import sav
from guard.method.fit import Fit
from guard.models import load_model
from guard.policy import escape_value, fill_prompt, load_policy

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "policies" / "text-harm"
MAX_LAYER = 16
POSITIONS = ("last token", "mean of last 4 tokens", "mean of last 8 tokens", "mean over the request span")


def read(path: Path) -> tuple[list[str], torch.Tensor]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["text"] for r in rows], torch.tensor([0 if r["label"] == "harmful" else 1 for r in rows])


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
            out.append(
                torch.stack(
                    [per_layer[-1], per_layer[-4:].mean(0), per_layer[-8:].mean(0), per_layer[span].mean(0)]
                ).float()
            )
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(out)


def margins(train: torch.Tensor, y: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    fitted = Fit(2, 20, prototypes=16)(train, y)
    heads, bank, bank_labels = fitted.heads, fitted.bank, fitted.bank_labels
    sims = sav.bank_similarities(sav.at_heads(test, heads), bank, bank_labels, 2)
    return sims[..., 0].mean(1) - sims[..., 1].mean(1)


def auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    pos, neg = scores[positive], scores[~positive]
    return float((pos[:, None] > neg[None]).float().mean() + 0.5 * (pos[:, None] == neg[None]).float().mean())


def main() -> None:
    policy = load_policy(ROOT / "policies" / "text-harm.yaml")
    loaded = load_model("smollm2-135m", device="cpu")
    train_texts, y = read(DATA / "exemplars.jsonl")
    test_texts, t = read(DATA / "heldout.jsonl")
    train = head_vectors(loaded, policy.prompt, policy.escape, train_texts, "exemplars")
    test = head_vectors(loaded, policy.prompt, policy.escape, test_texts, "held-out")
    harmful = t == 0
    print("\n| heads read at | held-out R | FPR | AUC |\n|---|---|---|---|")
    for p, name in enumerate(POSITIONS):
        m = margins(train[:, p], y, test[:, p])
        flagged = m > 0
        r, f = flagged[harmful].float().mean(), flagged[~harmful].float().mean()
        print(f"| {name} | {r:.1%} | {f:.1%} | {auc(m, harmful):.3f} |")


if __name__ == "__main__":
    main()
