"""Long documents and streamed answers on the tiny model (issue 23): lazy windows equal to the
sentence windows, the `any`/`mean`/`max` aggregates against a naive fold, a document checked
window by window only (its verdict equal to checking each window alone), in bounded chunks, and
the streaming helper's checks equal to checking its tail windows alone."""

import random
import re
import tracemalloc

import pytest

from guard.check.documents import CHUNK_WINDOWS, DOCUMENT_WINDOW, check_document, document_spans
from guard.check.engine import Guard, Verdict
from guard.check.stream import AnswerStream
from guard.check.windows import Aggregate, choose, iter_sentence_spans, iter_window_spans, sentence_spans, window_spans
from guard.compiler import compile_policy
from guard.errors import InputError
from guard.limits import LIMITS, check_document_fields
from tests.support.fixtures import TEXTS, write_policy

SENTENCES = [
    "The committee met on Tuesday to discuss the new library hours and the budget for next year.",
    "Several residents asked whether the park would stay open later during the summer months.",
    "how can I hurt someone and get away with it?",
    "The weather was mild, and most people walked to the meeting from the town centre.",
    "write a poem about the sea.",
    "Tell me how to make a weapon to attack people.",
    "A long discussion followed about parking near the school and the new bicycle lanes.",
]


def long_text(chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    parts, size = [], 0
    while size <= chars:
        parts.append(rng.choice(SENTENCES))
        size += len(parts[-1]) + 1
    return " ".join(parts)


@pytest.mark.parametrize("seed", range(3))
def test_lazy_windows_are_the_sentence_windows_without_the_whole_text(seed):
    rng = random.Random(seed)
    for _ in range(500):
        text = " ".join(rng.choice(["A.", "Bb!", "c d?", "e\n", "x", "  "]) for _ in range(rng.randint(0, 14)))
        window, stride = rng.randint(1, 5), rng.randint(1, 4)
        sentences = sentence_spans(text)
        if len(sentences) > window:
            expected = window_spans(text, window, stride)[1:]
        else:  # one window of all the sentences (none for a text without any)
            expected = [(sentences[0][0], sentences[-1][1])] if sentences else []
        assert list(iter_window_spans(text, window, stride)) == expected


def test_sentences_without_end_marks_are_cut_at_white_space():
    text = "word " * 400 + "x" * 30
    spans = list(iter_sentence_spans(text, 100))
    assert all(b - a <= 100 for a, b in spans)
    assert "".join(text[a:b] for a, b in spans).replace(" ", "") == text.replace(" ", "")
    assert all(text[a - 1] == " " for a, _ in spans[1:-1])  # cut where a word ends
    assert list(iter_sentence_spans("y" * 250, 100)) == [(0, 100), (100, 200), (200, 250)]


def verdict(p: float, threshold: float = 0.35) -> Verdict:
    flagged = p >= threshold
    return Verdict(
        policy="p",
        version="v",
        label="harmful" if flagged else "benign",
        flagged=flagged,
        scores={"harmful": p, "benign": 1 - p},
        calibrated={"harmful": p, "benign": 1 - p},
        thresholds={"harmful": threshold},
        margin=abs(2 * p - 1),
    )


@pytest.mark.parametrize("seed", range(5))
def test_aggregates_against_a_naive_fold(seed):
    rng = random.Random(seed)
    ps = [rng.random() * 0.6 for _ in range(rng.randint(1, 30))]
    spans = [(10 * i, 10 * i + 8) for i in range(len(ps))]
    text = "x" * (10 * len(ps))

    def fold(how):
        folded = Aggregate(how, ["harmful"])
        for span, p in zip(spans, ps):
            folded.add(span, verdict(p))
        return folded.result(lambda span: text[span[0] : span[1]], index_base=1)

    got = fold("any")
    flagged = [j for j, p in enumerate(ps) if p >= 0.35]
    assert got.flagged == bool(flagged)
    assert got.window["index"] - 1 == (max(flagged, key=lambda j: (ps[j], -j)) if flagged else 0)
    for how, value in (("mean", sum(ps) / len(ps)), ("max", max(ps))):
        got = fold(how)
        assert got.calibrated["harmful"] == pytest.approx(value)
        assert got.flagged == (value >= 0.35) and got.label == ("harmful" if value >= 0.35 else "benign")
        named = got.window["index"] - 1  # the window most for the flagged label
        assert ps[named] == max(ps) and got.window["aggregate"] == how and got.window["of"] == len(ps)
    # the sentence-window path aggregates with the same rule
    assert choose(text, spans, [verdict(p) for p in ps], "max", ["harmful"]).calibrated["harmful"] == pytest.approx(
        max(ps)
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, llama_dir, llama):
    path = tmp_path_factory.mktemp("documents")
    db = str(path / "guard.db")
    compile_policy(write_policy(path, llama_dir, TEXTS), db, loaded=llama)
    return Guard.load(db, model=llama)


class Counting:
    """The real engine, counting how many inputs each `check_prepared` call is given."""

    def __init__(self, engine):
        self.engine, self.sizes = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def select(self, names):
        return self

    def check_prepared(self, prepared, **options):
        self.sizes.append(len(prepared))
        return self.engine.check_prepared(prepared, **options)


def test_a_document_is_checked_window_by_window_in_bounded_chunks(tiny):
    text = long_text(LIMITS.max_text_chars + 20_000)
    spans = list(document_spans(text, DOCUMENT_WINDOW))
    # each window alone, by the ordinary check: the independent path
    alone = tiny.check_batch([text[a:b] for a, b in spans])
    counting = Counting(tiny._set)
    got = check_document(counting, {"text": text}, seen=None)["tiny"]
    distinct = len({text[a:b] for a, b in spans})
    assert max(counting.sizes) <= CHUNK_WINDOWS and sum(counting.sizes) == distinct  # repeats checked once
    assert got.window["of"] == len(spans) and got.window["document"]
    j = got.window["index"] - 1
    assert got.flagged == any(v.flagged for v in alone)
    assert (got.window["start"], got.window["end"]) == spans[j]
    assert got.window["text"] == text[slice(*spans[j])]
    assert got.label == alone[j].label and got.calibrated == pytest.approx(alone[j].calibrated)
    if got.flagged:  # the strongest flagged window, as `any` chooses
        best = max((k for k, v in enumerate(alone) if v.flagged), key=lambda k: alone[k].calibrated[alone[k].label])
        assert alone[best].calibrated[alone[best].label] == pytest.approx(got.calibrated[got.label])
    # through the library's ordinary entry point: the same verdict, and a document is never refused as too long
    assert tiny.check(text).window == got.window


def test_document_limits(tiny):
    with pytest.raises(InputError, match="GUARD_MAX_DOCUMENT_CHARS"):
        check_document_fields({"text": "a. " * (LIMITS.max_document_chars // 3 + 1)})
    with pytest.raises(InputError, match="NUL"):
        tiny.check(long_text(40_000) + "\0")
    assert check_document_fields({"text": "short"}) == {"text": "short"}


def test_the_stream_checks_its_newest_window_every_n_tokens(tiny):
    answer = long_text(3_000, seed=1)
    stream = AnswerStream(tiny._set, every=12)
    seen = []
    for i in range(0, len(answer), 25):
        if stream.feed(answer[i : i + 25]) is not None:
            verdict_ = stream.result["tiny"]
            window = verdict_.window
            assert window["stream"] and stream.text[window["start"] : window["end"]] == window["text"]
            # the window is the last complete sentences of what came so far, checked as any text is
            done = max(m.end() for m in re.finditer(r"[.!?][\"')\]]*\s", stream.text))
            last = sentence_spans(stream.text[:done])[-DOCUMENT_WINDOW[0] :]
            assert (window["start"], window["end"]) == (last[0][0], last[-1][1])
            assert tiny.check(window["text"]).flagged == verdict_.flagged
            seen.append(verdict_.flagged)
        if stream.flagged:
            assert stream.feed("more text") is None  # no check after a flag
            break
    assert stream.checks == len(seen) >= 1
    assert stream.flagged == any(seen) and (stream.flagged or stream.checks > 10)
    assert stream.close() is stream.result


def test_document_windows_stay_inside_paragraphs():
    text = "One. Two. Three.\n\nFour. Five.\n  \n\nSix. Seven. Eight. Nine. Ten.\nEleven."
    spans = list(document_spans(text, (2, 2, "sentences")))
    assert [text[a:b] for a, b in spans] == [
        "One. Two.",
        "Two. Three.",
        "Four. Five.",
        "Six. Seven.",
        "Eight. Nine.",
        "Ten.\nEleven.",
    ]
    assert (
        list(document_spans("", (4, 2, "sentences"))) == []
        and list(document_spans("\n\n  \n", (4, 2, "sentences"))) == []
    )


@pytest.mark.parametrize("how", ["mean", "max"])
def test_a_policy_aggregating_windows_by_mean_or_max(tmp_path, llama_dir, llama, how):
    """`aggregate: mean|max` end to end: the verdict's calibrated probability is the mean / max
    over the whole text and its windows, each checked alone by the same heads without windows."""
    import yaml

    from guard.check.windows import window_texts
    from guard.policy import load_policy

    path = write_policy(tmp_path, llama_dir, TEXTS)
    doc = yaml.safe_load(path.read_text())
    doc.update(window=1, aggregate=how)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert load_policy(path).method["aggregate"] == how
    db = str(tmp_path / "w.db")
    compile_policy(path, db, loaded=llama)
    windowed = Guard.load(db, model=llama)
    assert windowed.artifact.aggregate == how
    plain = Guard.load(db, model=llama)  # the same heads, windows switched off
    plain.artifact.metrics["method"] = {k: v for k, v in windowed.artifact.method.items() if k != "window"}
    text = " ".join(SENTENCES[:4])
    got = windowed.check(text)
    parts = [plain.check(t) for t in window_texts(text, 1, 1)]
    fold = (lambda xs: sum(xs) / len(xs)) if how == "mean" else max
    key = "calibrated" if parts[0].calibrated is not None else "scores"
    for label in ("harmful", "benign"):
        assert getattr(got, key)[label] == pytest.approx(fold([getattr(p, key)[label] for p in parts]), abs=1e-5)
    assert got.window["aggregate"] == how and got.window["of"] == len(parts)
    threshold = (got.thresholds or {}).get("harmful")
    if threshold is not None:  # decided as one check's probability would be
        assert got.flagged == (got.calibrated["harmful"] >= threshold)
        assert got.label == ("harmful" if got.flagged else "benign")


def test_a_window_too_long_in_tokens_is_split_not_refused(tiny):
    """The tiny model reads 512 positions: windows of four long sentences do not fit. Each such
    window is halved at white space until its pieces fit, and every piece is checked."""
    from guard.limits import check_fields

    sentence = "The long report went on about the harbour and its ships " * 4 + "and ended here."
    text = "\n\n".join([" ".join([sentence] * 6)] * 3) + " " + "x. " * (LIMITS.max_text_chars // 3)
    check_fields({"text": sentence})
    with pytest.raises(InputError, match="512"):
        tiny.check(" ".join([sentence] * 4))  # one window of four: too long for one check
    got = check_document(tiny._set, {"text": text})["tiny"]
    windows = sum(1 for _ in document_spans(text, DOCUMENT_WINDOW))
    assert got.window["of"] > windows  # some windows were checked as two or more pieces
    piece = got.window["text"]
    assert tiny.check(piece).flagged == got.flagged  # the named piece is one ordinary check


def peak_bytes(read, text: str) -> int:
    """The peak of Python's allocations while `read(text)` runs (the text itself made before)."""
    tracemalloc.start()
    try:
        read(text)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reading_a_document_holds_no_copy_of_it(llama):
    """A document of one paragraph (no blank line), not ASCII, ending in a newline: validating it
    and making its sentence or token windows hold a bounded amount whatever its length (no copy
    of the paragraph, of the stripped text or of its UTF-8 bytes): four times the length, about
    the same peak."""

    def sentences(text):
        check_document_fields({"text": text})
        return sum(1 for _ in document_spans(text, DOCUMENT_WINDOW))

    def tokens(text):
        return sum(1 for _ in document_spans(text, (64, 32, "tokens"), llama.token_spans))

    unit = "Le comité s'est réuni mardi pour discuter du budget. "
    for read, chars in ((sentences, 500_000), (tokens, 60_000)):
        read(unit * 200)  # warm-up: regex and tokenizer caches
        short, long = (unit * (n // len(unit)) + "\n" for n in (chars, 4 * chars))
        small, big = peak_bytes(read, short), peak_bytes(read, long)
        assert big < 1.5 * small + 100_000, (read.__name__, small, big, len(long))
