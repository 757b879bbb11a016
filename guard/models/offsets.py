"""A text's tokens as character spans, from the model's own tokenizer (token windows, issue 23).

The tokenizer reads the text a piece of about `CHUNK_CHARS` characters at a time, each piece cut
just before a space that begins a word (where byte-level BPE and sentencepiece tokenizers start a
token anyway, so the spans are those of the whole text tokenised at once), so a document of any
length is never tokenised whole and its spans come lazily; a piece without such a space in its
second half is cut at `CHUNK_CHARS` (the tokens at that cut may then differ from the whole
text's). Each span is a token's (start, end)
character offsets with surrounding white space trimmed; tokens of white space alone are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

Span = tuple[int, int]
CHUNK_CHARS = 8_192  # characters tokenised at once: what memory holds of a document's tokens


def iter_token_spans(
    text: str,
    offsets: Callable[[str], list[Span]],
    chunk: int = CHUNK_CHARS,
    start: int = 0,
    end: int | None = None,
) -> Iterator[Span]:
    """The token spans of `text[start:end]` (in `text`'s offsets), lazily; `offsets(piece)` gives
    the (start, end) character offsets of a piece's tokens (a tokenizer's offset mapping, no
    special tokens)."""
    end = len(text) if end is None else end
    while start < end:
        cut = _cut(text, start, chunk, end)
        for a, b in offsets(text[start:cut]):
            a, b = _trim(text, start + a, start + b)
            if a < b:
                yield (a, b)
        start = cut


def _cut(text: str, start: int, chunk: int, stop: int) -> int:
    """Where the piece starting at `start` ends: before the last space that begins a word within
    `chunk` characters (after its first half), else at `chunk` characters, or at `stop`."""
    end = start + chunk
    if end >= stop:
        return stop
    at = end
    while at > start + chunk // 2:
        at = text.rfind(" ", start + chunk // 2, at)
        if at < 0:
            break
        if not text[at + 1].isspace():  # " word": a pre-token of its own whatever precedes it
            return at
    return end


def _trim(text: str, a: int, b: int) -> Span:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def tokenizer_offsets(tokenizer) -> Callable[[str], list[Span]]:
    """`offsets` for a Hugging Face fast tokenizer (a processor's own tokenizer for a
    vision-language model): its offset mapping, no special tokens."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)

    def offsets(piece: str) -> list[Span]:
        found = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return [(int(a), int(b)) for a, b in found]

    return offsets
