"""Windows of a long text (policy keys `window`, `window_unit`, `stride`, `aggregate`; issues 20
and 23): a policy checks the whole text and each run of `window` consecutive units of it (every
`stride` units), so a request buried in harmless chat is also read on its own. A unit is a
sentence (the default) or a token of the model's tokenizer (`window_unit: tokens`; the caller
passes the token spans, guard.models.offsets).

Pure functions: sentence spans, window spans and the windows' texts, and the rule that turns the
whole text's verdict and its windows' verdicts into one (`aggregate: any`). A text of at most
`window` units has one window, itself, and is checked exactly as without the keys. The engine
(guard.check.engine) prepares each window as an input of its own (guard.check.prepared) and
checks it in the same forwards as the rest; eval judges windows through `window_verdicts`.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

Span = tuple[int, int]  # (start, end) character offsets into the text
SENTENCES, TOKENS = "sentences", "tokens"
UNITS = (SENTENCES, TOKENS)  # what a window counts (policy key `window_unit`)
Setting = tuple[int, int, str]  # (units per window, stride, unit): Artifact.window
TokenSpans = Callable[[str, int, int], Iterable[Span]]  # the token spans of text[start:end] (guard.models.offsets)

# a sentence ends after . ! or ? (repeated, perhaps followed by closing quotes or brackets) before
# white space, or at a line break
_END = re.compile(r"[.!?]+[\"')\]]*(?=\s)|\n")


_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")  # a blank line (perhaps more) between paragraphs


def sentence_spans(text: str) -> list[Span]:
    """(start, end) character spans of the sentences of `text`, white space trimmed, empty ones
    dropped; in order, and together they cover every non-space character of `text`."""
    return list(iter_sentence_spans(text))


def iter_sentence_spans(
    text: str, max_chars: int | None = None, start: int = 0, end: int | None = None
) -> Iterator[Span]:
    """`sentence_spans`, one at a time (a document's sentences are never all held); with
    `max_chars`, a longer sentence (a text without end marks) is cut into pieces of at most that
    many characters, at the last white space where there is one. `start`, `end`: the sentences
    of `text[start:end]` (as if cut out, without the copy), in `text`'s offsets."""
    end = len(text) if end is None else end
    for match in _END.finditer(text, start, end):
        yield from _trimmed(text, start, match.end(), max_chars)
        start = match.end()
    yield from _trimmed(text, start, end, max_chars)


def _trimmed(text: str, a: int, b: int, max_chars: int | None) -> Iterator[Span]:
    """The span a..b of `text` less its white space at both ends (none if it is all white space),
    cut into pieces of at most `max_chars`; read in place, never copied (a paragraph may be a
    whole document)."""
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    if a == b:
        return
    while max_chars is not None and b - a > max_chars:
        cut = text.rfind(" ", a + 1, a + max_chars + 1)
        cut = cut if cut > a else a + max_chars
        yield from _trimmed(text, a, cut, None)
        a = cut
        while a < b and text[a].isspace():
            a += 1
    yield (a, b)


def unit_spans(
    text: str,
    unit: str,
    tokens: TokenSpans | None = None,
    max_chars: int | None = None,
    start: int = 0,
    end: int | None = None,
) -> Iterator[Span]:
    """The spans of the units a window counts in `text[start:end]` (read in place), lazily:
    sentences (cut at `max_chars`, `iter_sentence_spans`) or tokens (`tokens(text, start, end)`,
    the model's tokenizer)."""
    if unit == TOKENS:
        if tokens is None:
            raise ValueError("token windows need the model's tokenizer")
        return iter(tokens(text, start, len(text) if end is None else end))
    if unit != SENTENCES:
        raise ValueError(f"unknown window unit {unit!r}")
    return iter_sentence_spans(text, max_chars, start, end)


def window_spans(text: str, window: int, stride: int, units: Sequence[Span] | None = None) -> list[Span]:
    """The whole text's span first, then, when it has more than `window` units (`units`: their
    spans; by default its sentences), the span of every run of `window` consecutive units
    starting every `stride` units (the last run ends at the last unit). Duplicates are dropped."""
    if window < 1 or stride < 1:
        raise ValueError("window and stride must be at least 1")
    sentences = sentence_spans(text) if units is None else list(units)
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


def iter_window_spans(
    text: str, window: int, stride: int, max_chars: int | None = None, units: Iterable[Span] | None = None
) -> Iterator[Span]:
    """A document's windows, one at a time and without the whole text: every run of `window`
    consecutive units starting every `stride` units, the last run ending at the last unit
    (`window_spans` less its first span), or the one run of all the units when there are no
    more than `window`. Units: `units` (spans, read lazily), by default the sentences, cut at
    `max_chars` (`iter_sentence_spans`)."""
    if window < 1 or stride < 1:
        raise ValueError("window and stride must be at least 1")
    run: deque[Span] = deque(maxlen=window)
    count, last = 0, None
    units = iter_sentence_spans(text, max_chars) if units is None else units
    for count, span in enumerate(units, start=1):
        run.append(span)
        first = count - window  # the index of the run's first sentence
        if first >= 0 and first % stride == 0:
            last = first
            yield (run[0][0], run[-1][1])
    if run and last != max(count - window, 0):
        yield (run[0][0], run[-1][1])


def iter_paragraph_spans(text: str) -> Iterator[Span]:
    """The (start, end) spans of the paragraphs of `text`, lazily: runs of text between blank
    lines, white space trimmed, empty ones dropped."""
    start = 0
    for match in _PARAGRAPH_BREAK.finditer(text):
        yield from _trimmed(text, start, match.start(), None)
        start = match.end()
    yield from _trimmed(text, start, len(text), None)


def window_texts(text: str, window: int, stride: int) -> list[str]:
    """The texts of `window_spans` (the whole text first)."""
    return [text[a:b] for a, b in window_spans(text, window, stride)]


def setting_spans(text: str, setting: Setting, tokens: TokenSpans | None = None) -> list[Span]:
    """`window_spans` of one policy's setting (`tokens`: the model's token spans, which token
    windows need)."""
    window, stride, unit = setting
    return window_spans(text, window, stride, list(unit_spans(text, unit, tokens)))


def extra_spans(text: str, settings: Iterable[Setting], tokens: TokenSpans | None = None) -> list[Span]:
    """The window spans (the whole text left out) that any of `settings` checks, each once, in order."""
    found: dict[Span, None] = {}
    for setting in settings:
        found.update(dict.fromkeys(setting_spans(text, setting, tokens)[1:]))
    return sorted(found)


def choose(text: str, spans: Sequence[Span], verdicts: Sequence[Any], how: str = "any", flagged=()) -> Any:
    """One verdict from the verdicts of `spans` of `text` (the whole text first), by `Aggregate`'s
    rule `how` (`flagged`: the policy's flagged labels, which `mean` and `max` need). It names
    its window: `{"index", "start", "end", "text", "of"}` (index 0 is the whole text; `of`: how
    many were checked)."""
    folded = Aggregate(how, flagged)
    for span, verdict in zip(spans, verdicts):
        folded.add(span, verdict)
    return folded.result(lambda span: text[span[0] : span[1]])


class Aggregate:
    """Windows' verdicts folded into one as they come (policy key `aggregate`), keeping a few
    verdicts whatever their number, so a document's windows can stream through:

    - `any`: flagged when any window is; the flagged window with the highest calibrated
      probability of its label gives the verdict (else the highest vote margin; the earlier
      window on ties), or the first window's when none is flagged;
    - `mean` / `max`: the mean / the highest calibrated probability of each label over the
      windows (vote shares without calibration) is the verdict's `calibrated` (`scores`), and
      decides it as one window's would: a flagged label at or over its threshold (without one:
      the highest score) flags. The window with the highest score of the deciding label (of a
      flagged label when none flags) gives the votes and is named.
    """

    def __init__(self, how: str = "any", flagged: Iterable[str] = ()):
        if how not in ("any", "mean", "max"):
            raise ValueError(f"unknown aggregate {how!r}")
        self.how, self.flagged_labels, self.count = how, list(flagged), 0
        self.best: dict[str, tuple[tuple, int, Span, Any]] = {}  # label -> (strength, index, span, verdict)
        self.first: tuple[int, Span, Any] | None = None
        self.totals: dict[str, float] = {}

    def add(self, span: Span, verdict: Any) -> None:
        j, self.count = self.count, self.count + 1
        if self.first is None:
            self.first = (j, span, verdict)
        values = _values(verdict)
        if self.how == "any":
            if verdict.flagged:
                strength = ((verdict.calibrated or {}).get(verdict.label, 0.0), verdict.margin, -j)
                self._keep("", strength, j, span, verdict)
            return
        for label, value in values.items():
            self.totals[label] = (
                value + self.totals.get(label, 0.0) if self.how == "mean" else max(value, self.totals.get(label, value))
            )
            self._keep(label, (value, verdict.margin, -j), j, span, verdict)

    def _keep(self, key: str, strength: tuple, j: int, span: Span, verdict: Any) -> None:
        if key not in self.best or strength > self.best[key][0]:
            self.best[key] = (strength, j, span, verdict)

    def result(self, text_of: Callable[[Span], str], index_base: int = 0) -> Any:
        """The one verdict, naming its window (`text_of(span)`: the window's text; window
        indexes count from `index_base`)."""
        if self.first is None:
            raise ValueError("no verdict to aggregate")
        if self.how == "any":
            j, span, verdict = self.best[""][1:] if "" in self.best else self.first
        else:
            verdict, j, span = self._decided()
        window = {"index": j + index_base, "start": span[0], "end": span[1], "text": text_of(span)}
        window["of"] = self.count
        if self.how != "any":
            window["aggregate"] = self.how
        return replace(verdict, window=window)

    def _decided(self) -> tuple[Any, int, Span]:
        """`mean`/`max`: the named window's verdict, with the aggregated scores, label and flag."""
        values = {k: v / self.count if self.how == "mean" else v for k, v in self.totals.items()}
        some = self.first[2]
        thresholds = some.thresholds or {}
        top = max(values.values())
        candidates = [
            label
            for label in self.flagged_labels
            if label in values and (values[label] >= thresholds[label] if label in thresholds else values[label] == top)
        ]
        if candidates:
            label, flagged = max(candidates, key=lambda k: values[k]), True
        else:
            allowed = [k for k in values if k not in self.flagged_labels] or list(values)
            label, flagged = max(allowed, key=lambda k: values[k]), False
        named = label if flagged else max(self.flagged_labels or [label], key=lambda k: values.get(k, 0.0))
        _, j, span, verdict = self.best.get(named, self.best[label])
        rounded = {k: float(v) for k, v in values.items()}
        kind = "calibrated" if verdict.calibrated is not None else "scores"
        return replace(verdict, label=label, flagged=flagged, **{kind: rounded}), j, span


def _values(verdict: Any) -> dict[str, float]:
    """What `mean` and `max` aggregate: the calibrated probabilities, else the vote shares."""
    return dict(verdict.calibrated if verdict.calibrated is not None else verdict.scores)


def window_verdicts(
    artifact,
    texts: Sequence[str | None],
    whole: list,
    judge: Callable[[list[tuple[int, str]]], list],
    tokens: TokenSpans | None = None,
) -> list:
    """Verdicts of a windowed policy (`artifact.window`) for inputs whose {text} are `texts`:
    `whole` holds the whole texts' verdicts; `judge` gives the verdicts of (input index, window
    text) pairs (the same policy, that input's prompt with its {text} replaced). Each input's
    verdict is `choose`'s. A policy without windows gets `whole` back unchanged. `tokens`: the
    model's token spans (token windows need them)."""
    if artifact.window is None:
        return whole
    spans = [setting_spans(text or "", artifact.window, tokens) for text in texts]
    extra = [(i, j) for i, found in enumerate(spans) for j in range(1, len(found))]
    judged = judge([(i, (texts[i] or "")[slice(*spans[i][j])]) for i, j in extra]) if extra else []
    options = [[v] for v in whole]
    for (i, _), verdict in zip(extra, judged):
        options[i].append(verdict)
    how, flagged = getattr(artifact, "aggregate", "any"), getattr(artifact, "flagged_labels", ())
    return [choose(text or "", spans[i], options[i], how, flagged) for i, text in enumerate(texts)]
