"""One input made ready for the model, once: rendered, escaped, limit-checked, tokenised.

`prepare_input` is the one implementation both engines (torch `GuardSet`, ONNX `OnnxGuard`) use:
the prompt fields are checked against guard.limits, each prompt template (with its escaping)
is filled in and chat-rendered, and the rendered prompt is tokenised once; its token count is
checked against guard's token limit and the model's positions. The `Prepared` input then travels
to the model: batches are built from its token ids, never from its text again. A prompt group
with windowed policies (guard.check.windows) also gets each window of {text} prepared, once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from guard import limits
from guard.check.windows import Setting, Span, extra_spans
from guard.errors import InputError
from guard.models.images import as_image
from guard.models.inputs import ModelInput, Tokenized
from guard.policy import fill_prompt

Group = tuple[str, str]  # (prompt template, escape): policies sharing one share a forward


class Renderer(Protocol):
    """What renders and tokenises for an engine: a LoadedModel, or a tokenizer's TextInputs."""

    def prepare(self, prompt: str, images: Sequence = ()) -> str | ModelInput: ...

    def tokenize(self, rendered: str | ModelInput) -> Tokenized: ...

    def token_spans(self, text: str, start: int = 0, end: int | None = None) -> Iterable[Span]:
        """The character spans of the tokens of `text[start:end]` alone (token windows, guard.models.offsets)."""
        ...


@dataclass(frozen=True)
class Prepared:
    """One input ready for the model: its fields (images decoded) and, per prompt group, the
    rendered and tokenised model input; for groups with windowed policies, each window's model
    input too (its {text} one run of sentences: guard.check.windows), by the window's span."""

    fields: dict
    rows: dict[Group, Tokenized] = field(default_factory=dict)
    windows: dict[Group, dict[Span, Tokenized]] = field(default_factory=dict)
    document: bool = False  # {text} is longer than one check: checked window by window (guard.check.documents)

    @property
    def tokens(self) -> int:
        """The most tokens the model reads for this input (over the prompt groups)."""
        return max((row.length for row in self.rows.values()), default=0)


def ready_fields(fields: dict) -> dict:
    """The fields with their images read and decoded (once, whatever the prompt groups)."""
    if fields.get("images"):
        return {**fields, "images": [as_image(image) for image in fields["images"]]}
    return fields


def render_prompt(renderer: Renderer, group: Group, fields: dict) -> str | ModelInput:
    """The filled-in prompt (field values escaped as the group says), chat-rendered."""
    template, escape = group
    images = fields.get("images") or []
    text_fields = {k: v for k, v in fields.items() if k != "images"}
    limits.check_fields({**text_fields, "images": images})  # cheap refusals before any model work
    try:
        prompt = fill_prompt(template, text_fields, escape)
    except KeyError as exc:
        raise InputError(f"the policy prompt needs a value for {{{exc.args[0]}}}") from None
    return renderer.prepare(prompt, images)


def prepare_input(
    renderer: Renderer,
    groups: Iterable[Group],
    fields: dict,
    *,
    position_limit: int | None = None,
    windows: Mapping[Group, Iterable[Setting]] | None = None,
) -> Prepared:
    """`fields` (a dict of prompt fields, with an optional "images" list) ready for the model,
    or InputError (GuardError) saying why it cannot be checked: a field over guard.limits, a
    missing prompt field, too many tokens for guard or for the model's positions. `windows`:
    the window settings of each group's windowed policies, whose windows are prepared too."""
    ready = ready_fields(fields)
    rows = {group: _tokenized(renderer, group, ready, position_limit) for group in groups}
    spans = {
        group: prepare_windows(renderer, group, ready, settings, position_limit)
        for group, settings in (windows or {}).items()
    }
    return Prepared(ready, rows, spans)


def prepare_windows(
    renderer: Renderer, group: Group, fields: dict, settings: Iterable[Setting], position_limit: int | None = None
) -> dict[Span, Tokenized]:
    """The model input of each window of the fields' {text} that `settings` check (the whole text
    left out; guard.check.windows.extra_spans), by span; `fields` as `ready_fields` gives them."""
    text = str(fields.get("text") or "")
    return {
        (a, b): _tokenized(renderer, group, {**fields, "text": text[a:b]}, position_limit)
        for a, b in extra_spans(text, settings, renderer.token_spans)
    }


def _tokenized(renderer: Renderer, group: Group, ready: dict, position_limit: int | None) -> Tokenized:
    """One prompt group's model input for ready fields, its token count checked."""
    row = renderer.tokenize(render_prompt(renderer, group, ready))
    if row.ids is not None:  # a text input's exact count (an image input's is an estimate)
        limits.check_tokens(row.length)
        if position_limit and row.length > position_limit:
            raise InputError(
                f"too long: {row.length:,} tokens with the prompt (the model reads at most {position_limit:,})"
            )
    return row


def as_fields(item: str | dict) -> dict:
    """An input as prompt fields: a text is {"text": text}."""
    return item if isinstance(item, dict) else {"text": item}
