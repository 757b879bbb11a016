"""Read each head's output at the last prompt token, and stop the forward once it is read.

Like baukit's `Trace`: forward pre-hooks on every layer's `o_proj` read its input (all heads'
attention outputs, concatenated) at the last real token of each row, and `StopForward` ends the
forward after the deepest layer that is needed, so later layers and the LM head never run. Only
one `[batch, heads, head_dim]` slice per needed layer is kept, never full-sequence activations.

Thread safety by design: a `HeadTap` installs its hooks ONCE, when the model is loaded, and never
adds or removes hooks afterwards. What a forward should read lives in a per-call `Trace` that
`HeadTap.trace` puts in a context variable; hooks read it from there and do nothing without one.
Each thread (and each asyncio task) has its own context, so any number of threads can run
forwards on one model at once and each sees only its own trace. (Registering hooks per call, as
guard 0.1 did, let one thread's hooks fire inside another thread's forward.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch


class StopForward(Exception):
    """Raised inside a hook to end the forward pass early; `HeadTap.trace` catches it on exit."""


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token in each row, for left or right padding: `[B]`."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.to(positions.dtype)).argmax(dim=1)


@dataclass
class Trace:
    """What one forward reads, and what it has read so far."""

    tap: HeadTap
    layers: frozenset[int]
    rows: torch.Tensor  # [B] row indices
    last: torch.Tensor  # [B] last real token of each row
    stop_layer: int | None  # raise StopForward once this layer is read (None: run on)
    final_hidden: bool  # read the LM head's input at the last token, then stop
    z: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B, heads, head_dim]
    hidden: torch.Tensor | None = None  # [B, hidden], when final_hidden

    def stacked(self, layers: Sequence[int]) -> torch.Tensor:
        """`[B, len(layers), heads, head_dim]` float32 on the CPU; refuses layers never reached."""
        missing = [layer for layer in layers if layer not in self.z]
        if missing:
            raise RuntimeError(f"the forward pass never reached layers {missing}")
        return torch.stack([self.z[layer] for layer in layers], dim=1).float().cpu()


_ACTIVE: ContextVar[Trace | None] = ContextVar("guard_active_trace", default=None)


class HeadTap:
    """Hooks on one model's `o_proj` modules (and LM head), installed once; see the module doc."""

    def __init__(self, o_projs: Sequence[torch.nn.Module], num_heads: int, head_dim: int, lm_head=None):
        self.num_heads, self.head_dim = num_heads, head_dim
        self._handles = [proj.register_forward_pre_hook(self._layer_hook(i)) for i, proj in enumerate(o_projs)]
        if lm_head is not None:
            self._handles.append(lm_head.register_forward_pre_hook(self._lm_head_hook))

    def _layer_hook(self, layer: int):
        def hook(module, args):
            trace = _ACTIVE.get()
            if trace is None or trace.tap is not self or layer not in trace.layers:
                return
            x = args[0]
            trace.z[layer] = x[trace.rows, trace.last].reshape(len(trace.rows), self.num_heads, self.head_dim)
            if layer == trace.stop_layer:
                raise StopForward

        return hook

    def _lm_head_hook(self, module, args):
        trace = _ACTIVE.get()
        if trace is None or trace.tap is not self or not trace.final_hidden:
            return
        trace.hidden = args[0][trace.rows, trace.last]
        raise StopForward  # the LM head over every position is not needed

    @contextmanager
    def trace(
        self, attention_mask: torch.Tensor, layers: Sequence[int], *, stop: bool = True, final_hidden: bool = False
    ) -> Iterator[Trace]:
        """Read `layers` during the forward run inside the block. `stop`: end the forward after the
        deepest of them (ignored with `final_hidden`, which runs to the LM head's input)."""
        last = last_token_index(attention_mask)
        trace = Trace(
            tap=self,
            layers=frozenset(layers),
            rows=torch.arange(len(last), device=last.device),
            last=last,
            stop_layer=max(layers) if stop and layers and not final_hidden else None,
            final_hidden=final_hidden,
        )
        token = _ACTIVE.set(trace)
        try:
            yield trace
        except StopForward:
            pass
        finally:
            _ACTIVE.reset(token)

    def remove(self) -> None:
        """Take the hooks off the model (a LoadedModel keeps its tap for its whole life)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def head_outputs(
    loaded, inputs: dict[str, torch.Tensor], layers: Sequence[int], early_stop: bool = True
) -> torch.Tensor:
    """Run one encoded batch and return float32 head outputs `[B, len(layers), heads, head_dim]`."""
    with torch.inference_mode(), loaded.tap.trace(inputs["attention_mask"], layers, stop=early_stop) as trace:
        loaded.model(**inputs, use_cache=False)
    return trace.stacked(layers)
