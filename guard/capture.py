"""Capture each head's output at the last prompt token, and stop the forward once it is taken.

Like baukit's nethook: forward pre-hooks on `o_proj` read its input (all heads' attention
outputs, concatenated) at the last real token of each row, and `StopForward` ends the forward
after the deepest layer that is needed, so later layers and the LM head never run. Only one
`[batch, heads, head_dim]` slice per needed layer is kept, never full-sequence activations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress

import torch
from tqdm.auto import tqdm

from guard.models.loaded import LoadedModel


class StopForward(Exception):
    """Raised inside a hook to end the forward pass early (caught by `head_outputs`)."""


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token in each row, for left or right padding: `[B]`."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.to(positions.dtype)).argmax(dim=1)


@contextmanager
def capture_heads(
    o_projs: Sequence[torch.nn.Module],
    layers: Sequence[int],
    last_index: torch.Tensor,
    num_heads: int,
    head_dim: int,
    stop_after_deepest: bool = True,
) -> Iterator[dict[int, torch.Tensor]]:
    """Yield a dict that fills with `{layer: [B, heads, head_dim]}` during the forward inside."""
    taken: dict[int, torch.Tensor] = {}
    deepest = max(layers)
    rows = torch.arange(len(last_index), device=last_index.device)

    def make_hook(layer: int):
        def hook(module, args):
            x = args[0]
            taken[layer] = x[rows, last_index].reshape(len(rows), num_heads, head_dim)
            if stop_after_deepest and layer == deepest:
                raise StopForward

        return hook

    handles = [o_projs[layer].register_forward_pre_hook(make_hook(layer)) for layer in layers]
    try:
        yield taken
    finally:
        for handle in handles:
            handle.remove()


def head_outputs(
    loaded: LoadedModel, inputs: dict[str, torch.Tensor], layers: Sequence[int], early_stop: bool = True
) -> torch.Tensor:
    """Run one batch and return float32 head outputs `[B, len(layers), heads, head_dim]`."""
    layout = loaded.layout
    last = last_token_index(inputs["attention_mask"])
    with (
        torch.inference_mode(),
        capture_heads(loaded.o_projs, layers, last, layout.num_heads, layout.head_dim, early_stop) as taken,
        suppress(StopForward),
    ):
        loaded.model(**inputs, use_cache=False)
    missing = [layer for layer in layers if layer not in taken]
    if missing:
        raise RuntimeError(f"the forward pass never reached layers {missing}")
    return torch.stack([taken[layer] for layer in layers], dim=1).float().cpu()


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding), longest first."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def batches(
    loaded: LoadedModel, items: Sequence, batch_size: int, progress: str | None = None
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """(indices, encoded batch) over `items` (what `loaded.encode` takes), in length-bucketed
    batches with a progress bar titled `progress` (None: no bar)."""
    if len(items) <= batch_size:  # one batch: nothing to order, so no need to measure lengths
        groups = [list(range(len(items)))]
    else:
        groups = length_buckets([loaded.token_count(item) for item in items], batch_size)
    with tqdm(total=len(items), desc=progress, unit="input", disable=progress is None, leave=False) as bar:
        for group in groups:
            yield group, loaded.encode([items[i] for i in group])
            bar.update(len(group))


def extract(
    loaded: LoadedModel,
    items: Sequence,
    layers: Sequence[int],
    batch_size: int = 8,
    progress: str | None = None,
    on_batch: Callable[[list[int], torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Head outputs for many inputs (chat-rendered prompts, or ModelInputs with images), in
    length-bucketed batches, returned in input order.

    `progress` is a bar title, or None for no bar. `on_batch(indices, outputs)` is called after
    each batch (the compiler caches there, so an interrupted run keeps what it computed).
    """
    result = torch.empty((len(items), len(layers), loaded.layout.num_heads, loaded.layout.head_dim))
    for group, inputs in batches(loaded, items, batch_size, progress):
        outputs = head_outputs(loaded, inputs, layers)
        result[group] = outputs
        if on_batch is not None:
            on_batch(group, outputs)
    return result
