"""The one way from model inputs to features: head outputs at the last prompt token, cache first.

Compile, eval and check all call `features`:

- compile and eval read every layer's heads and go through the activation cache (per model
  fingerprint, dtype and input: the chat-rendered prompt and its images' content), so an input
  runs through the model at most once, ever;
- check reads only the layers holding selected heads and stops the forward after the deepest;
- eval's baselines add extras from the same forward: the final hidden state (the LM head's input)
  and the log-probability of each answer word as the next token. The LM head runs on the last
  token only, never on the whole sequence.

Inputs run in length-sorted, right-padded batches (a padded row computes what it would alone), cut
by `guard.models.batching.Batching` (a token budget, or a count); identical inputs run once.
Results come back in input order. `Tokenized` inputs (check's prepared inputs) are only padded,
never tokenised again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from guard.models.batching import Batching
from guard.models.inputs import ModelInput, Tokenized
from guard.models.loaded import LoadedModel


@dataclass
class Features:
    z: (
        torch.Tensor
    )  # [N, len(layers), heads, head_dim] float32: each head's output at the last token (TransformerLens's z)
    layers: list[int]
    hidden: torch.Tensor | None = None  # [N, hidden] float32 (extras only)
    answer_logprobs: torch.Tensor | None = None  # [N, answers] float32 (extras only)
    computed: int = 0  # distinct inputs run through the model now
    cached: int = 0  # distinct inputs whose head outputs came from the cache

    @property
    def heads(self) -> torch.Tensor:
        """guard 0.2's name for `z`."""
        return self.z


def input_hash(rendered: str, extra: Sequence[str] = ()) -> str:
    """Cache key of a rendered prompt plus anything else that changes the model input (images)."""
    digest = hashlib.sha256(rendered.encode("utf-8"))
    for part in extra:
        digest.update(b"\0" + part.encode("utf-8"))
    return digest.hexdigest()


def cache_key(item: str | ModelInput | Tokenized) -> str:
    """Activation cache key of one model input: its rendered prompt and its images' content."""
    if isinstance(item, Tokenized):
        item = item.rendered
    if isinstance(item, ModelInput):
        return input_hash(item.text, item.image_hashes)
    return input_hash(item)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def features(
    loaded: LoadedModel,
    rendered: Sequence[str | ModelInput | Tokenized],
    *,
    layers: Sequence[int] | None = None,
    store=None,
    batch_size: int | Batching = 8,
    progress: str | None = None,
    hidden: bool = False,
    answer_ids: Sequence[int] | None = None,
) -> Features:
    """Head outputs at `layers` (all if None) for each input, with the optional extras.

    `store` (a guard.store.database.Store) is the activation cache; it holds all layers, so it is used
    only when all layers are asked for. Each batch is cached as soon as it is computed, so an
    interrupted run keeps its work. With extras, every input runs a full forward (the cache
    holds head outputs only) and cached head outputs are kept as they were.
    `batch_size` is a count of inputs per forward, or a `Batching` (count and token budget).
    `progress` is a bar title, or None for no bar.
    """
    all_layers = list(range(loaded.layout.num_layers))
    layers = all_layers if layers is None else sorted(layers)
    extras = hidden or answer_ids is not None
    keys = [cache_key(item) for item in rendered]
    first: dict[str, int] = {}  # each distinct input, where it first appears
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    cache = store if store is not None and layers == all_layers else None
    dtype = dtype_name(loaded.dtype)
    found = cache.cached_activations(loaded.fingerprint, dtype, sorted(first)) if cache else {}
    hits = len(found)
    todo = [key for key in first if extras or key not in found]
    extra_rows: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    ids = None if answer_ids is None else torch.tensor(list(answer_ids))
    for group, inputs in batches(loaded, [rendered[first[key]] for key in todo], batch_size, progress):
        heads, last_hidden, logprobs = run_batch(loaded, inputs, layers, extras, ids)
        fresh = {todo[i]: heads[j] for j, i in enumerate(group) if todo[i] not in found}
        found.update(fresh)
        if cache and fresh:
            cache.put_activations(loaded.fingerprint, dtype, fresh)
        if extras:
            for j, i in enumerate(group):
                extra_rows[todo[i]] = (last_hidden[j], None if logprobs is None else logprobs[j])
    out = Features(
        z=torch.stack([found[key] for key in keys]) if keys else _empty(loaded, layers),
        layers=layers,
        computed=len(todo),
        cached=hits,
    )
    if extras and keys:
        out.hidden = torch.stack([extra_rows[key][0] for key in keys])
        if ids is not None:
            out.answer_logprobs = torch.stack([extra_rows[key][1] for key in keys])
    return out


def _empty(loaded: LoadedModel, layers: Sequence[int]) -> torch.Tensor:
    return torch.empty((0, len(layers), loaded.layout.num_heads, loaded.layout.head_dim))


def run_batch(
    loaded: LoadedModel,
    inputs: dict[str, torch.Tensor],
    layers: Sequence[int],
    extras: bool = False,
    answer_ids: torch.Tensor | None = None,
):
    """One encoded batch through the model: (heads `[B, len(layers), H, D]`, final hidden `[B, hidden]`
    or None, answer log-probs `[B, answers]` or None). Without extras the forward stops after the
    deepest layer in `layers`; with them it stops at the LM head's input."""
    with torch.inference_mode():
        with loaded.tap.trace(inputs["attention_mask"], layers, final_hidden=extras) as trace:
            loaded.model(**inputs, use_cache=False)
        heads = trace.stacked(layers)
        if not extras:
            return heads, None, None
        if trace.hidden is None:
            raise RuntimeError("the forward pass never reached the LM head")
        logprobs = None if answer_ids is None else answer_logprobs(loaded, trace.hidden, answer_ids)
        return heads, trace.hidden.float().cpu(), logprobs


def answer_logprobs(loaded: LoadedModel, hidden: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """log P(each answer token | prompt) from the final hidden state at the last prompt token."""
    logits = loaded.model.get_output_embeddings()(hidden).float()  # [B, vocab], last token only
    cap = getattr(loaded.model.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.log_softmax(logits, dim=-1)[:, answer_ids.to(logits.device)].cpu()


def batches(
    loaded: LoadedModel, items: Sequence, batch_size: int | Batching, progress: str | None = None
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """(indices, encoded batch) over `items` (what `loaded.encode` takes), in length-sorted
    batches cut as `batch_size` says, with a progress bar titled `progress` (None: no bar)."""
    rule = batch_size if isinstance(batch_size, Batching) else Batching(batch_size, token_budget=None)
    if rule.token_budget is None and len(items) <= rule.max_batch:
        groups = [list(range(len(items)))] if items else []  # one batch: no need to measure lengths
    else:
        groups = rule.plan([item.length if isinstance(item, Tokenized) else loaded.token_count(item) for item in items])
    with tqdm(total=len(items), desc=progress, unit="input", disable=progress is None, leave=False) as bar:
        for group in groups:
            yield group, loaded.encode([items[i] for i in group])
            bar.update(len(group))
