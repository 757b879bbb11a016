"""Windows of a long text (policy keys `window`, `stride`, `aggregate`; issues 20 and 23): a policy
checks the whole text and each run of `window` consecutive sentences (every `stride` sentences), so
a request buried between sentences of harmless chat is also read on its own.

Pure functions: sentence spans, window spans and the windows' texts, and the rule that turns the
whole text's verdict and its windows' verdicts into one (`aggregate: any`). A text of at most
`window` sentences has one window, itself, and is checked exactly as without the keys. The engine
(guard.check.engine) prepares each window as an input of its own (guard.check.prepared) and
checks it in the same forwards as the rest; eval judges windows through `window_verdicts`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

Span = tuple[int, int]  # (start, end) character offsets into the text
Setting = tuple[int, int]  # (sentences per window, stride): Artifact.window

# a sentence ends after . ! or ? (repeated, perhaps followed by closing quotes or brackets) before
# white space, or at a line break
_END = re.compile(r"[.!?]+[\"')\]]*(?=\s)|\n")


def sentence_spans(text: str) -> list[Span]:
    """(start, end) character spans of the sentences of `text`, white space trimmed, empty ones
    dropped; in order, and together they cover every non-space character of `text`."""
    spans, start = [], 0
    for match in _END.finditer(text):
        spans.append((start, match.end()))
        start = match.end()
    spans.append((start, len(text)))
    out = []
    for a, b in spans:
        piece = text[a:b]
        stripped = piece.strip()
        if stripped:
            a += len(piece) - len(piece.lstrip())
            out.append((a, a + len(stripped)))
    return out


def window_spans(text: str, window: int, stride: int) -> list[Span]:
    """The whole text's span first, then, when it has more than `window` sentences, the span of
    every run of `window` consecutive sentences starting every `stride` sentences (the last run
    ends at the last sentence). Duplicates are dropped."""
    if window < 1 or stride < 1:
        raise ValueError("window and stride must be at least 1")
    sentences = sentence_spans(text)
    spans = [(0, len(text))]
    if len(sentences) <= window:
        return spans
    starts = list(range(0, len(sentences) - window + 1, stride))
    if starts[-1] != len(sentences) - window:
        starts.append(len(sentences) - window)
    for s in starts:
        span = (sentences[s][0], sentences[s + window - 1][1])
        if span not in spans:
            spans.append(span)
    return spans


def window_texts(text: str, window: int, stride: int) -> list[str]:
    """The texts of `window_spans` (the whole text first)."""
    return [text[a:b] for a, b in window_spans(text, window, stride)]


def extra_spans(text: str, settings: Iterable[Setting]) -> list[Span]:
    """The window spans (the whole text left out) that any of `settings` checks, each once, in order."""
    found: dict[Span, None] = {}
    for window, stride in settings:
        found.update(dict.fromkeys(window_spans(text, window, stride)[1:]))
    return sorted(found)


def choose(text: str, spans: Sequence[Span], verdicts: Sequence[Any]) -> Any:
    """One verdict from the verdicts of `spans` of `text` (the whole text first; `aggregate: any`):
    the flagged window's with the highest calibrated probability of its label (else the highest
    vote margin; the earlier window, the whole text first, on ties), or the whole text's when
    none is flagged. It names its window: `{"index", "start", "end", "text", "of"}` (index 0 is
    the whole text; `of`: how many were checked)."""
    flagged = [j for j, v in enumerate(verdicts) if v.flagged]

    def strength(j: int) -> tuple[float, float, int]:
        v = verdicts[j]
        return ((v.calibrated or {}).get(v.label, 0.0), v.margin, -j)

    j = max(flagged, key=strength) if flagged else 0
    a, b = spans[j]
    window = {"index": j, "start": a, "end": b, "text": text[a:b], "of": len(spans)}
    return replace(verdicts[j], window=window)


def window_verdicts(
    artifact,
    texts: Sequence[str | None],
    whole: list,
    judge: Callable[[list[tuple[int, str]]], list],
) -> list:
    """Verdicts of a windowed policy (`artifact.window`) for inputs whose {text} are `texts`:
    `whole` holds the whole texts' verdicts; `judge` gives the verdicts of (input index, window
    text) pairs (the same policy, that input's prompt with its {text} replaced). Each input's
    verdict is `choose`'s. A policy without windows gets `whole` back unchanged."""
    if artifact.window is None:
        return whole
    size, stride = artifact.window
    spans = [window_spans(text or "", size, stride) for text in texts]
    extra = [(i, j) for i, found in enumerate(spans) for j in range(1, len(found))]
    judged = judge([(i, (texts[i] or "")[slice(*spans[i][j])]) for i, j in extra]) if extra else []
    options = [[v] for v in whole]
    for (i, _), verdict in zip(extra, judged):
        options[i].append(verdict)
    return [choose(text or "", spans[i], options[i]) for i, text in enumerate(texts)]
