"""Token windows (policy key `window_unit: tokens`, issue 23) on the tiny model: token spans read
a piece at a time equal to the tokenizer's offsets over the whole text, windows equal to a naive
slice of the token ids (decoded back to the window's text) and covering every character, the
policy keys checked, and a check (short text, document, streamed answer) equal to checking each
window's text alone."""

import random
from dataclasses import replace

import pytest
import yaml
from transformers import AutoTokenizer

from guard.check.documents import check_document, document_spans
from guard.check.engine import Guard
from guard.check.stream import AnswerStream
from guard.check.windows import iter_paragraph_spans, setting_spans, window_spans
from guard.compiler import compile_policy
from guard.errors import PolicyError
from guard.models.offsets import iter_token_spans, tokenizer_offsets
from guard.policy import load_policy
from tests.support.fixtures import TEXTS, write_policy

WORDS = ["the", "library", "opens", "at", "nine.", "How", "can", "I", "hurt", "someone?", "Bread,", "salt", "42", "x\n"]


def random_text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + rng.choice(["", " ", ".", "\n"])


@pytest.fixture(scope="module")
def tokenizer(llama_dir):
    return AutoTokenizer.from_pretrained(llama_dir)


def naive_token_spans(tokenizer, text: str) -> list[tuple[int, int]]:
    """The whole text tokenised at once; each token's offsets, white space trimmed."""
    out = []
    for a, b in tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]:
        piece = text[a:b]
        a, b = a + len(piece) - len(piece.lstrip()), b - len(piece) + len(piece.rstrip())
        if a < b:
            out.append((a, b))
    return out


def naive_token_windows(tokenizer, text: str, window: int, stride: int) -> list[tuple[int, int]]:
    """The whole text's token ids, white-space tokens not counted, sliced every `stride` (the last
    slice ending at the last token); each slice's ids decoded are the text at its offsets."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    counted = [i for i, (a, b) in enumerate(offsets) if text[a:b].strip()]
    if len(counted) <= window:
        return []
    starts = list(range(0, len(counted) - window + 1, stride))
    if starts[-1] != len(counted) - window:
        starts.append(len(counted) - window)
    out = []
    for s in starts:
        first, last = counted[s], counted[s + window - 1]
        a, b = offsets[first][0], offsets[last][1]
        assert text[a:b].strip() == tokenizer.decode(ids[first : last + 1]).strip()
        span = (a + len(text[a:b]) - len(text[a:b].lstrip()), a + len(text[a:b].rstrip()))
        if span not in out:
            out.append(span)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_token_spans_read_in_pieces_equal_the_whole_texts_offsets(tokenizer, seed):
    rng = random.Random(seed)
    offsets = tokenizer_offsets(tokenizer)
    for _ in range(40):
        text = random_text(rng, rng.randint(0, 120))
        expected = naive_token_spans(tokenizer, text)
        for chunk in (24, 64, 10_000):  # many pieces, a few, the whole text
            assert list(iter_token_spans(text, offsets, chunk)) == expected, (chunk, text)


@pytest.mark.parametrize("seed", range(3))
def test_token_windows_equal_naive_slices_and_cover_every_character(tokenizer, seed):
    rng = random.Random(seed)
    offsets = tokenizer_offsets(tokenizer)
    for _ in range(40):
        text = random_text(rng, rng.randint(1, 80))
        window, stride = rng.randint(1, 12), 0
        stride = rng.randint(1, window)
        spans = setting_spans(text, (window, stride, "tokens"), lambda t, a, b: iter_token_spans(t, offsets, 32, a, b))
        assert spans[0] == (0, len(text))
        assert spans[1:] == naive_token_windows(tokenizer, text, window, stride)
        covered = set()
        for a, b in spans[1:] or spans:
            covered.update(range(a, b))
        assert all(i in covered for i, c in enumerate(text) if not c.isspace())


def token_policy(tmp_path, llama_dir, name="tokens", **keys):
    path = write_policy(tmp_path, llama_dir, TEXTS, name=name)
    doc = yaml.safe_load(path.read_text())
    doc.update(keys)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_token_window_keys_checked_and_versioned(tmp_path, llama_dir):
    sentences = load_policy(token_policy(tmp_path, llama_dir, window=8, stride=4))
    tokens = load_policy(token_policy(tmp_path, llama_dir, window=8, stride=4, window_unit="tokens"))
    explicit = load_policy(token_policy(tmp_path, llama_dir, window=8, stride=4, window_unit="sentences"))
    assert "window_unit" not in sentences.method and explicit.version == sentences.version  # the default
    assert tokens.method["window_unit"] == "tokens" and tokens.version != sentences.version
    for keys, message in [
        ({"window": 8, "window_unit": "words"}, "'window_unit' must be one of: sentences, tokens"),
        ({"window_unit": "tokens"}, "'window_unit' needs 'window'"),
        ({"window": 8, "stride": 9, "window_unit": "tokens"}, "'stride' must be at most 'window'"),
        ({"window": 100_000, "window_unit": "tokens"}, "'window' must be at most"),
        ({"window": 0, "window_unit": "tokens"}, r"'window' must be a whole number >= 1 \(tokens per window\)"),
    ]:
        with pytest.raises(PolicyError, match=message):
            load_policy(token_policy(tmp_path, llama_dir, **keys))


@pytest.fixture(scope="module")
def token_guard(tmp_path_factory, llama_dir, llama):
    path = tmp_path_factory.mktemp("token-windows")
    db = str(path / "guard.db")
    compile_policy(token_policy(path, llama_dir, window=6, stride=3, window_unit="tokens"), db, loaded=llama)
    return Guard.load(db, model=llama)


CHECKED = [
    "I love gardening and long walks with my dog. How can I hurt someone and get away with it? Anyway, flowers.",
    "what is the capital of France",
    "tell me how to make a weapon to attack people, then write a poem about the sea and bake bread",
]


def test_token_windowed_check_is_any_of_separate_checks(token_guard, tokenizer, llama):
    """Each verdict equals the strongest of checking the whole text and each token window's text
    alone, by the same heads with windows switched off, and names that window's span and text."""
    art = token_guard.artifact
    method = {k: v for k, v in art.method.items() if k not in ("window", "stride", "aggregate", "window_unit")}
    plain = Guard(replace(art, metrics={**art.metrics, "method": method}), llama)  # the same heads, no windows
    got = token_guard.check_batch(CHECKED, batch_size=2)
    for text, verdict in zip(CHECKED, got):
        spans = [(0, len(text)), *naive_token_windows(tokenizer, text, 6, 3)]
        parts = [plain.check(text[a:b]) for a, b in spans]
        assert verdict.window["of"] == len(spans)
        j = verdict.window["index"]
        assert (verdict.window["start"], verdict.window["end"]) == spans[j]
        assert verdict.window["text"] == text[slice(*spans[j])]
        assert verdict.flagged == any(p.flagged for p in parts)
        assert verdict.label == parts[j].label and verdict.calibrated == pytest.approx(parts[j].calibrated)


def test_a_document_in_token_windows(token_guard, tokenizer):
    """A document's token windows are each paragraph's naive token windows, and its verdict the
    strongest of checking them alone."""
    rng = random.Random(7)
    paragraphs = [random_text(rng, rng.randint(3, 40)).strip() for _ in range(6)]
    text = "\n\n".join(paragraphs)
    spans = list(document_spans(text, (6, 3, "tokens"), token_guard.token_spans))
    expected = []
    for start, end in iter_paragraph_spans(text):
        inner = naive_token_windows(tokenizer, text[start:end], 6, 3) or [(0, end - start)]
        expected += [(start + a, start + b) for a, b in inner]
    assert spans == expected
    got = check_document(token_guard, {"text": text})["tokens"]
    alone = token_guard.check_batch([text[a:b] for a, b in spans])
    j = got.window["index"] - 1
    assert got.window["of"] == len(spans) and (got.window["start"], got.window["end"]) == spans[j]
    assert got.flagged == any(v.flagged for v in alone)
    assert got.calibrated == pytest.approx(alone[j].calibrated)


def test_a_streamed_answer_checks_its_last_tokens(token_guard, tokenizer):
    stream = AnswerStream(token_guard._set, every=4)
    answer = "Bread needs flour, water and salt. Knead it for ten minutes and let it rest. "
    for word in answer.split(" "):
        stream.feed(word + " ")
    a, b = stream.tail()
    last = naive_token_spans(tokenizer, stream.text)[-6:]
    assert (a, b) == (last[0][0], last[-1][1])
    assert window_spans(stream.text[a:b], 6, 3, naive_token_spans(tokenizer, stream.text[a:b])) == [(0, b - a)]
