"""The procedures the benchmarks compare: the SAV reference code's way, and guard's.

The reference is implemented as the authors' code runs it: batch size 1; three full forward
passes per input; every layer's full-sequence `o_proj` input kept; the LM head computed over
all positions; the last token's head outputs taken afterwards. Its outputs equal guard's (tested
in benchmarks/test_bench_text.py), so the comparison is of cost only.
"""

from __future__ import annotations

import torch

from guard.method import sav
from guard.method.artifact import Artifact
from guard.models import LoadedModel
from guard.models.features import features

REFERENCE_PASSES = 3


def reference_activations(loaded: LoadedModel, rendered: list[str]) -> torch.Tensor:
    """All heads' last-token outputs `[N, layers, heads, head_dim]`, the reference way."""
    layout = loaded.layout
    results = []
    for text in rendered:
        inputs = loaded.encode([text])
        passes = []
        for _ in range(REFERENCE_PASSES):
            kept: dict[int, torch.Tensor] = {}
            hooks = [
                proj.register_forward_pre_hook(lambda m, args, i=i: kept.__setitem__(i, args[0].detach().clone()))
                for i, proj in enumerate(loaded.o_projs)
            ]
            try:
                with torch.no_grad():
                    logits = loaded.model(**inputs).logits  # LM head over every position
            finally:
                for hook in hooks:
                    hook.remove()
            passes.append((kept, logits))  # everything stays referenced, as in the reference code
        kept = passes[-1][0]
        results.append(
            torch.stack(
                [kept[layer][0, -1].view(layout.num_heads, layout.head_dim) for layer in range(layout.num_layers)]
            )
        )
    return torch.stack(results).float().cpu()


def reference_predict(loaded: LoadedModel, artifact: Artifact, rendered: list[str]) -> torch.Tensor:
    """The reference check: reference activations of every head, then the vote of the selected ones."""
    return sav.predict(reference_activations(loaded, rendered), artifact.heads, artifact.centroids)


def plain_forward(loaded: LoadedModel, rendered: list[str]) -> None:
    """One ordinary forward per input at batch 1 (LM head included): the cost floor of 'run the model'."""
    for text in rendered:
        with torch.no_grad():
            loaded.model(**loaded.encode([text]), use_cache=False)


def guard_activations(loaded: LoadedModel, rendered: list[str], batch_size: int = 8) -> torch.Tensor:
    """guard's compile-time capture: batched, one pass, last token only, no LM head."""
    return features(loaded, rendered, layers=range(loaded.layout.num_layers), batch_size=batch_size).z
