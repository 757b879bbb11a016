"""Long documents (issue 23): a text longer than one check reads (guard.limits.max_text_chars)
is checked window by window only, never whole.

Each policy reads the document in its own windows (its `window`/`stride` sentences within each
paragraph, or
`DOCUMENT_WINDOW` for a policy that sets none, so the shipped default takes a document out of
the box); the windows are made lazily (guard.check.windows.iter_window_spans), prepared and
checked `CHUNK_WINDOWS` at a time through the engine's ordinary token-budget forwards, and their
verdicts are folded as they come (guard.check.windows.Aggregate, the policy's `aggregate`). So
memory holds one chunk of windows whatever the document's length; the verdict names the window
that decided it (character span and text). Each window is one ordinary check: it stays within
max_text_chars, and a sentence longer than `MAX_SENTENCE_CHARS` is cut at white space.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import replace
from itertools import islice

from tqdm.auto import tqdm

from guard.check.explain import explain as explain_verdict
from guard.check.windows import (
    SENTENCES,
    Aggregate,
    Setting,
    TokenSpans,
    iter_paragraph_spans,
    iter_window_spans,
    unit_spans,
)
from guard.errors import InputError
from guard.limits import LIMITS, check_document_fields
from guard.models.batching import TOKEN_BUDGET

DOCUMENT_WINDOW: Setting = (4, 2, SENTENCES)  # sentences per window and stride, for a policy without `window`
CHUNK_WINDOWS = 64  # windows prepared and checked together: what memory holds of a document
CACHE_WINDOWS = 1_024  # distinct windows whose verdicts a check keeps, to skip their repeats
MAX_SENTENCE_CHARS = 1_000
MIN_SPLIT_CHARS = 16  # a window too long in tokens is halved down to about this many characters  # a longer run without an end mark is cut (a window stays one check)


def document_setting(artifact) -> Setting:
    """The windows a policy reads a document in: its own, else `DOCUMENT_WINDOW`."""
    return artifact.window or DOCUMENT_WINDOW


def document_spans(text: str, setting: Setting, tokens: TokenSpans | None = None) -> Iterator[tuple[int, int]]:
    """The (start, end) spans of a document's windows for one setting, lazily: each paragraph's
    sentence or token windows (guard.check.windows.iter_window_spans; `tokens`: the model's
    token spans, guard.models.offsets, which token windows need). A window never crosses a blank
    line, so a harmful paragraph is read alone, not diluted by the prose around it (measured:
    a four-sentence bomb request between presidential speeches scored P(harmful) 0.07 and 0.10
    in windows that straddled it, and is flagged read alone)."""
    window, stride, unit = setting
    max_chars = max(1, min(MAX_SENTENCE_CHARS, LIMITS.max_text_chars // window))
    for start, end in iter_paragraph_spans(text):
        units = unit_spans(text, unit, tokens, max_chars, start, end)  # read in place: a paragraph may be the document
        yield from iter_window_spans(text, window, stride, units=units)


def check_document(
    engine,
    fields: dict,
    *,
    batch_size: int = 16,
    token_budget: int | None = TOKEN_BUDGET,
    explain: bool = False,
    chunk: int = CHUNK_WINDOWS,
    progress: bool = False,
    seen: WindowCache | None = None,
) -> dict:
    """`{policy name: Verdict}` for one input whose {text} is a document, in the engine's policy
    order (`engine`: a guard.check.protocol Engine). Every window of {text} is checked with the
    input's other fields; each verdict is its policy's `Aggregate` of its windows and names the
    deciding window (`"index"` counts from 1, `"of"` windows were checked, `"document": true`).
    `progress`: a progress bar on stderr, in characters read. `seen`: the verdicts of windows
    already checked (a window whose text comes again, boilerplate or a repeated paragraph, is
    not checked again); by default this document's own."""
    check_document_fields(fields)
    text = fields["text"]
    settings: dict[Setting, list[str]] = {}
    for art in engine.artifacts:
        settings.setdefault(document_setting(art), []).append(art.name)
    seen = WindowCache() if seen is None else seen
    verdicts = {}
    bar = tqdm(total=len(text) * len(settings), desc="document", unit="char", unit_scale=True, disable=not progress)
    for setting, names in settings.items():
        part = engine.select(names)
        read = 0  # characters of the text this setting's windows reached
        folds = {art.name: Aggregate(getattr(art, "aggregate", "any"), art.flagged_labels) for art in part.artifacts}
        for spans in _chunks(document_spans(text, setting, engine.token_spans), chunk):
            ready: dict = {}  # key -> Prepared, for the windows not seen before
            spans = [
                piece
                for span in spans
                for piece in _fitting(part, fields, text, span, (tuple(names), setting), seen, ready)
            ]
            keys = [(tuple(names), setting, text[a:b]) for a, b in spans]
            known = {key: seen.get(key) for key in keys}
            new = [key for key, result in known.items() if result is None]
            if new:
                checked = part.check_prepared(
                    [ready[key] for key in new], batch_size=batch_size, token_budget=token_budget
                )
                known.update(zip(new, checked))
            for span, key in zip(spans, keys):
                seen.put(key, known[key])
                for name, verdict in known[key].items():
                    folds[name].add(span, verdict)
            bar.update(spans[-1][1] - read)
            read = spans[-1][1]
        bar.update(len(text) - read)
        for art in part.artifacts:
            verdict = folds[art.name].result(lambda span: text[span[0] : span[1]], index_base=1)
            verdict = replace(verdict, window={**verdict.window, "document": True})
            if explain:
                verdict = replace(verdict, explanation=explain_verdict(art, verdict))
            verdicts[art.name] = verdict
    bar.close()
    return {name: verdicts[name] for name in engine.names}


def check_with_documents(
    engine, prepared, wrap, *, batch_size: int, token_budget: int | None, explain: bool, progress: bool
) -> list:
    """`engine.check_prepared` when some prepared inputs are documents: each document window by
    window (`check_document`, its verdicts made a result by `wrap`, the engine's CheckResult),
    the other inputs together as usual; results in input order. A window repeated in these
    documents is checked once. Shared by the torch and ONNX engines, so both window alike."""
    options = dict(batch_size=batch_size, token_budget=token_budget, explain=explain)
    short = [p for p in prepared if not p.document]
    results = iter(engine.check_prepared(short, progress=progress, **options) if short else [])
    seen = WindowCache()
    return [
        wrap(check_document(engine, p.fields, progress=progress, seen=seen, **options)) if p.document else next(results)
        for p in prepared
    ]


class WindowCache:
    """The verdicts of the last `size` distinct windows checked, by (policies, setting, text):
    bounded, so a document of any length keeps memory flat."""

    def __init__(self, size: int = CACHE_WINDOWS):
        self.size, self.entries = size, OrderedDict()

    def get(self, key):
        found = self.entries.get(key)
        if found is not None:
            self.entries.move_to_end(key)
        return found

    def put(self, key, value) -> None:
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


def _fitting(part, fields: dict, text: str, span, prefix: tuple, seen: WindowCache, ready: dict) -> list:
    """The window at `span`, prepared into `ready` (by its key: `prefix` and its text) unless
    `seen` has it; a window too long for one
    check in tokens (many tokens a character: emoji, some scripts; or a model of few positions)
    is split in two at white space, each half checked alone, so no part of a document goes
    unchecked and none makes the whole document fail."""
    a, b = span
    key = (*prefix, text[a:b])
    if key in ready or seen.get(key) is not None:
        return [span]
    try:
        ready[key] = part.prepare({**fields, "text": text[a:b]})
        return [span]
    except InputError:
        if b - a < 2 * MIN_SPLIT_CHARS:
            raise
    middle = text.rfind(" ", a + MIN_SPLIT_CHARS, (a + b) // 2 + 1)
    middle = middle if middle > a else (a + b) // 2
    pieces = [(a, middle), (middle + (text[middle] == " "), b)]
    return [out for piece in pieces for out in _fitting(part, fields, text, piece, prefix, seen, ready)]


def _chunks(spans: Iterable[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    spans = iter(spans)
    while batch := list(islice(spans, size)):
        yield batch
