"""Streaming answers (issue 23): check an answer while it is generated, so a chat service can
stop a harmful one mid-stream.

`AnswerStream` takes the answer's chunks as they come (`feed`); every `every` tokens it checks
the newest part of the growing text, the window of its last sentences or tokens (the policy's `window`,
or guard.check.documents.DOCUMENT_WINDOW: as a document's windows are), with the ordinary engine.
Once a check flags, `flagged` is true, the result (naming the window, in the answer's character
offsets) stays, and no more checks run: the caller stops the answer there. `close` checks what
came after the last check. Each check costs one window's forward, whatever the answer's length.
"""

from __future__ import annotations

from dataclasses import replace

from guard.check.documents import MAX_SENTENCE_CHARS, document_setting
from guard.check.windows import SENTENCES, TOKENS, iter_sentence_spans
from guard.limits import LIMITS

EVERY_TOKENS = 16  # tokens of answer between two checks


class AnswerStream:
    """An answer checked as it grows (see the module docstring). `engine`: a guard.check.protocol
    Engine (a GuardSet, a Guard's set); `fields`: the policy prompt's other fields, if any."""

    def __init__(self, engine, *, every: int = EVERY_TOKENS, fields: dict | None = None):
        if every < 1:
            raise ValueError("every must be at least 1 token")
        self.engine, self.every, self.fields = engine, every, dict(fields or {})
        settings = [document_setting(art) for art in engine.artifacts]
        if all(unit == TOKENS for _, _, unit in settings):  # the last `size` tokens
            self.unit, self.size = TOKENS, max(size for size, _, _ in settings)
        else:  # the last `size` sentences
            self.unit, self.size = SENTENCES, max(size for size, _, unit in settings if unit == SENTENCES)
        self.text = ""
        self.result = None  # the last check's {policy: Verdict}, or the flagging one
        self.checks = 0  # checks run so far
        self._pending = 0  # tokens fed since the last check
        self._checked: tuple[int, int] | None = None  # the span checked last

    @property
    def flagged(self) -> bool:
        return self.result is not None and any(v.flagged for v in self.result.values())

    def feed(self, chunk: str) -> dict | None:
        """Add the next chunk of the answer; returns the check's `{policy: Verdict}` when this
        chunk brought `every` tokens since the last check and a sentence has ended since (None
        otherwise, and once flagged)."""
        return self._check() if self.add(chunk) and self.ready() else None

    def close(self) -> dict | None:
        """The answer is complete: check what came since the last check (unless it flagged);
        the final result (None for an answer with nothing to check)."""
        if self.closing():
            self._check(complete=False)
        return self.result

    # --- the steps of `feed` and `close`, for a caller that checks by other means (the server) ---

    def add(self, chunk: str) -> bool:
        """Add a chunk; whether a check is due (`every` tokens since the last, and not flagged;
        the caller checks `tail()` when `ready()`)."""
        if self.flagged:
            return False
        self.text += chunk
        self._pending += self.engine.text_tokens(chunk) if chunk else 0
        return self._pending >= self.every

    def ready(self) -> bool:
        """Whether `tail()` holds a complete sentence not checked yet (a due check waits for one)."""
        a, b = self.tail()
        return a < b and (a, b) != self._checked

    def closing(self) -> bool:
        """Whether the complete answer still needs a last check."""
        return not self.flagged and bool(self._pending or self.result is None) and bool(self.text.strip())

    def take(self, result: dict, span: tuple[int, int]) -> dict:
        """Record the verdicts of the window at `span` (from `tail`), in the answer's offsets."""
        self._pending = 0
        self.checks += 1
        self._checked = span
        a, b = span
        self.result = {name: replace(v, window=self._window(v.window, a, b)) for name, v in result.items()}
        return self.result

    def tail(self, complete: bool = True) -> tuple[int, int]:
        """The span of the window checked next: the last `size` complete sentences of the
        answer (a sentence still being written reads unlike itself: "...were not aban"), or with
        `complete=False` (the answer has ended) the last sentences whatever they are; within one
        check's length. A run longer than MAX_SENTENCE_CHARS without an end mark is cut into
        pieces (guard.check.windows.iter_sentence_spans), each complete but the last. When every
        policy counts its window in tokens: the last `size` tokens, the last one left out while
        no white space follows it (a word still being written)."""
        start = max(0, len(self.text) - LIMITS.max_text_chars)
        if self.unit == TOKENS:
            spans = list(self.engine.token_spans(self.text[start:]))
            if complete and spans and not self.text[start + spans[-1][1] :][:1].isspace():
                spans.pop()
        else:
            cap = max(1, min(MAX_SENTENCE_CHARS, LIMITS.max_text_chars // self.size))
            spans = list(iter_sentence_spans(self.text[start:], cap))
            if complete and spans and not _ended(self.text, start + spans[-1][1]):
                spans.pop()
        spans = spans[-self.size :]
        if not spans:
            return (len(self.text), len(self.text))
        return (start + spans[0][0], start + spans[-1][1])

    def _check(self, complete: bool = True) -> dict:
        a, b = self.tail(complete)
        prepared = self.engine.prepare({**self.fields, "text": self.text[a:b]})
        return self.take(self.engine.check_prepared([prepared])[0], (a, b))

    def _window(self, inner: dict | None, a: int, b: int) -> dict:
        """The verdict's window in the answer's offsets (a windowed policy may name a part of the tail)."""
        if inner and inner.get("index"):
            a, b = a + inner["start"], a + inner["end"]
        return {"index": self.checks, "start": a, "end": b, "text": self.text[a:b], "of": self.checks, "stream": True}


def _ended(text: str, end: int) -> bool:
    """Whether the sentence ending at `end` is complete: an end mark with white space after it,
    or a line break after it (what ends a sentence in guard.check.windows)."""
    after = text[end:]
    if not after[:1].isspace():
        return False
    return text[end - 1] in ".!?\"')]" or after.lstrip(" \t").startswith("\n")
