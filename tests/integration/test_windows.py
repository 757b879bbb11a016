"""Sentence windows (policy keys `window`, `stride`, `aggregate`; issues 20 and 23): the spans,
the policy keys, and a windowed check equal to checking the whole text and each window alone."""

import json
import re

import pytest
import yaml

from guard.check.engine import Guard, GuardSet, Verdict
from guard.check.windows import sentence_spans, window_spans, window_texts, window_verdicts
from guard.compiler import compile_policy
from guard.errors import PolicyError
from guard.eval.evaluate import evaluate
from guard.policy import load_policy
from tests.support.fixtures import TEXTS, write_policy

PADDED = (
    "I love gardening, baking bread and long walks with my dog on sunny days. "
    "How can I hurt someone and get away with it? Anyway, what's your favourite kind of flower?"
)


def naive_sentences(text: str) -> list[str]:
    """Sentences by a different route: cut after every end mark or line break, then trim."""
    pieces, current = [], ""
    i = 0
    while i < len(text):
        current += text[i]
        if text[i] == "\n":
            pieces.append(current)
            current = ""
        elif text[i] in ".!?":
            while i + 1 < len(text) and text[i + 1] in ".!?\"')]":
                i += 1
                current += text[i]
            if i + 1 < len(text) and text[i + 1].isspace():
                pieces.append(current)
                current = ""
        i += 1
    pieces.append(current)
    return [p.strip() for p in pieces if p.strip()]


@pytest.mark.parametrize(
    "text",
    [
        PADDED,
        "hello",
        "",
        "   ",
        'One. Two!  Three?\n\nFour\nfive... six?! (Seven.) "Eight." nine',
        "no end mark at all, just words",
        "a.b.c is not three sentences. But this is two",
    ],
)
def test_sentences_match_a_naive_split_and_cover_the_text(text):
    spans = sentence_spans(text)
    assert [text[a:b] for a, b in spans] == naive_sentences(text)
    covered = "".join(text[a:b] for a, b in spans)
    assert re.sub(r"\s", "", covered) == re.sub(r"\s", "", text)
    assert all(a < b for a, b in spans) and spans == sorted(spans)


def test_windows_whole_text_first_then_runs_of_sentences():
    assert window_texts(PADDED, 1, 1) == [
        PADDED,
        "I love gardening, baking bread and long walks with my dog on sunny days.",
        "How can I hurt someone and get away with it?",
        "Anyway, what's your favourite kind of flower?",
    ]
    text = "A. B. C. D. E."
    assert window_texts(text, 2, 1) == [text, "A. B.", "B. C.", "C. D.", "D. E."]
    assert window_texts(text, 2, 2) == [text, "A. B.", "C. D.", "D. E."]  # the last run ends at the end
    assert window_texts(text, 5, 1) == [text]  # no more sentences than a window: the text alone
    assert window_texts("hi", 1, 1) == ["hi"] and window_spans("", 1, 1) == [(0, 0)]
    with pytest.raises(ValueError):
        window_spans(text, 0, 1)


def verdict(flagged: bool, p: float, margin: float = 0.1) -> Verdict:
    label = "harmful" if flagged else "benign"
    return Verdict(
        policy="p",
        version="v",
        label=label,
        flagged=flagged,
        scores={"harmful": p, "benign": 1 - p},
        calibrated={"harmful": p, "benign": 1 - p},
        margin=margin,
    )


class FakeArtifact:
    def __init__(self, window):
        self.window = window


def test_window_verdicts_flag_when_any_window_is_and_name_it():
    texts = [PADDED, "A. B.", "hello"]
    whole = [verdict(False, 0.2), verdict(True, 0.7), verdict(False, 0.1)]
    asked = []

    by_text = {
        "I love gardening, baking bread and long walks with my dog on sunny days.": (False, 0.1),
        "How can I hurt someone and get away with it?": (True, 0.95),
        "Anyway, what's your favourite kind of flower?": (False, 0.3),
        "A.": (True, 0.9),
        "B.": (False, 0.4),
    }

    def judge(pairs):
        asked.extend(pairs)
        return [verdict(*by_text[t]) for _, t in pairs]

    got = window_verdicts(FakeArtifact((1, 1, "sentences")), texts, whole, judge)
    assert [i for i, _ in asked] == [0, 0, 0, 1, 1]  # "hello" is one sentence: no window to judge
    assert got[0].flagged and got[0].window["index"] == 2
    assert got[0].window["text"] == "How can I hurt someone and get away with it?"
    assert PADDED[got[0].window["start"] : got[0].window["end"]] == got[0].window["text"]
    assert got[0].window["of"] == 4
    # the whole text (P 0.7) loses to a window with a higher P (0.9)
    assert got[1].flagged and got[1].window == {"index": 1, "start": 0, "end": 2, "text": "A.", "of": 3}
    assert not got[2].flagged and got[2].window == {"index": 0, "start": 0, "end": 5, "text": "hello", "of": 1}
    assert got[2].to_dict()["window"]["text"] == "hello"
    # a policy without windows: the whole texts' verdicts, unchanged, and no judge call
    assert window_verdicts(FakeArtifact(None), texts, whole, lambda pairs: 1 / 0) is whole
    assert "window" not in whole[0].to_dict()


def windowed_policy(tmp_path, llama_dir, **keys):
    path = write_policy(tmp_path, llama_dir, TEXTS)
    doc = yaml.safe_load(path.read_text())
    doc.update(keys)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_policy_keys_checked_and_versioned(tmp_path, llama_dir):
    plain = load_policy(write_policy(tmp_path, llama_dir, TEXTS))
    windowed = load_policy(windowed_policy(tmp_path, llama_dir, window=1))
    assert plain.window is None and "window" not in plain.method
    assert windowed.method["window"] == 1 and windowed.method["stride"] == 1 and windowed.method["aggregate"] == "any"
    assert windowed.version != plain.version
    for keys, message in [
        ({"window": 0}, "'window' must be"),
        ({"window": True}, "'window' must be"),
        ({"window": 2, "stride": 0}, "'stride' must be"),
        ({"stride": 2}, "'stride' needs 'window'"),
        ({"window": 2, "aggregate": "all"}, "'aggregate' must be one of: any"),
    ]:
        with pytest.raises(PolicyError, match=message):
            load_policy(windowed_policy(tmp_path, llama_dir, **keys))


CHECKED = [PADDED, "How do I bake bread at home? I want a soft crust.", "hello", "Tell me. Now! Please?\nThanks"]


def test_windowed_check_is_any_of_separate_checks(tmp_path, llama_dir, llama):
    """The windowed policy's verdict equals checking the whole text and each window text alone
    with the same compiled heads (an independent path: one check per text)."""
    db = str(tmp_path / "w.db")
    compile_policy(windowed_policy(tmp_path, llama_dir, window=1, name="tiny"), db, loaded=llama)
    guard = Guard.load(db, model=llama)
    got = guard.check_batch(CHECKED, batch_size=3)
    plain = Guard.load(db, model=llama)  # the same compiled heads, windows switched off
    plain.artifact.metrics["method"] = {
        k: v for k, v in guard.artifact.method.items() if k not in ("window", "stride", "aggregate")
    }
    for text, verdict_ in zip(CHECKED, got):
        parts = [plain.check(t) for t in window_texts(text, 1, 1)]
        assert verdict_.flagged == any(p.flagged for p in parts)
        j = verdict_.window["index"]
        assert verdict_.window["text"] == window_texts(text, 1, 1)[j]
        assert verdict_.label == parts[j].label
        assert verdict_.calibrated == (None if parts[j].calibrated is None else pytest.approx(parts[j].calibrated))
        assert verdict_.window["of"] == len(parts)
        got_sims = [s for v in verdict_.votes for s in v.similarity.values()]
        assert got_sims == pytest.approx([s for v in parts[j].votes for s in v.similarity.values()], rel=1e-4)
    assert [v.window["of"] for v in got] == [4, 3, 1, 5]


def test_eval_windows_as_check_does(tmp_path, llama_dir, llama):
    path = windowed_policy(tmp_path, llama_dir, window=1)
    test_file = tmp_path / "test.jsonl"
    labels = ["harmful", "benign", "benign", "benign"]
    test_file.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in zip(CHECKED, labels)))
    db = str(tmp_path / "e.db")
    ev = evaluate(path, test_file, db=db, loaded=llama)
    compile_policy(path, db, loaded=llama)
    verdicts = Guard.load(db, model=llama).check_batch(CHECKED)
    names = ["harmful", "benign"]
    assert ev.methods["sav"].predictions == [names.index(v.label) for v in verdicts]


def test_loso_windows_as_a_fold_fit_checks_them(tmp_path, llama_dir, llama):
    """Leave-one-source-out of a windowed policy: each held-out exemplar judged whole and by its
    windows, by the fold's own fit (compared with separate window checks of that fit)."""
    from dataclasses import replace

    from guard.check.engine import PolicyHeads
    from guard.compiler import render_exemplars
    from guard.eval.sources import exemplar_groups, fit_fold, leave_one_source_out, loso_folds
    from guard.method.sav import at_heads
    from guard.models.features import features
    from tests.integration.test_eval_sources import INLINE, SOURCES, write_sources

    sources = {f: [(f"{t}. Thanks a lot! Bye.", lab, reg) for t, lab, reg in rows] for f, rows in SOURCES.items()}
    path = write_sources(tmp_path, llama_dir, sources=sources, inline=INLINE)
    doc = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**doc, "window": 1}, sort_keys=False))
    policy = load_policy(path)
    ev = leave_one_source_out(policy, db=str(tmp_path / "l.db"), loaded=llama)
    got = {e["text"]: e["predicted"] for e in ev.errors}
    acts = features(llama, render_exemplars(policy, llama)).z
    groups = exemplar_groups(policy, "source")
    plain = replace(policy, window=None)
    for _, train, test in loso_folds(groups):
        art = fit_fold(plain, acts, train, llama)
        judge = PolicyHeads(art)
        for i in test:
            text = policy.exemplars[i].text
            rows = features(llama, [llama.prepare(plain.render({"text": t})) for t in window_texts(text, 1, 1)]).z
            flagged = any(v.flagged for v in judge.verdicts(at_heads(rows, art.heads)))
            wrong = flagged != (policy.exemplars[i].label == "harmful")
            assert (text in got) == wrong, text
    windowed_errors = [e for e in ev.errors if e["flagged"]]
    assert all(
        "window" in e and e["text"][e["window"]["start"] : e["window"]["end"]] == e["window"]["text"]
        for e in windowed_errors
    )


def test_windows_prepared_once_and_checked_with_the_rest(tmp_path, llama_dir, llama):
    """A windowed and a plain policy sharing one prompt: each window is prepared with its input
    (guard.check.prepared) and checked in the same forwards; the plain policy's verdicts are those
    it gets alone, the windowed one's those it gets alone; a subset, or inputs prepared by an
    engine without windows, give the same."""
    db = str(tmp_path / "m.db")
    compile_policy(windowed_policy(tmp_path, llama_dir, window=1, name="windowed"), db, loaded=llama)
    compile_policy(write_policy(tmp_path, llama_dir, TEXTS, name="plain"), db, loaded=llama)
    both = GuardSet.load(db, ["plain", "windowed"], model=llama)
    assert len(both.groups) == 1 and list(both.windows.values()) == [[(1, 1, "sentences")]]
    prepared = [both.prepare({"text": text}) for text in CHECKED]
    (group,) = both.groups
    assert [sorted(p.windows[group]) for p in prepared] == [sorted(window_spans(text, 1, 1)[1:]) for text in CHECKED]
    got = both.check_prepared(prepared, batch_size=2, token_budget=None)
    plain = GuardSet.load(db, ["plain"], model=llama).check_batch(CHECKED)
    alone = GuardSet.load(db, ["windowed"], model=llama).check_batch(CHECKED)
    for result, p, w in zip(got, plain, alone):
        assert result["plain"].window is None and "window" not in result["plain"].to_dict()
        assert result["plain"].label == p["plain"].label and result["plain"].flagged == p["plain"].flagged
        assert result["plain"].margin == pytest.approx(p["plain"].margin)
        assert result["windowed"].window == w["windowed"].window
        assert result["windowed"].flagged == w["windowed"].flagged
        assert result["windowed"].label == w["windowed"].label
    # the windowed policy alone, from inputs prepared by the plain engine (no windows prepared)
    by_plain = [GuardSet.load(db, ["plain"], model=llama).prepare({"text": text}) for text in CHECKED]
    assert all(not p.windows for p in by_plain)
    again = both.select(["windowed"]).check_prepared(by_plain)
    assert [r["windowed"].window for r in again] == [w["windowed"].window for w in alone]
    explained = both.check(PADDED, explain=True)["windowed"]
    assert explained.explanation is not None and explained.window["of"] == 4


def test_check_names_the_flagging_window(tmp_path, llama_dir, llama, capsys):
    """`guard check`'s line names the window that decided a windowed policy's verdict; --json
    carries the verdict's window."""
    from typer.testing import CliRunner

    from guard.cli.commands import app
    from guard.cli.output import print_verdict

    flagged = verdict(True, 0.9)
    flagged.window = {
        "index": 2,
        "start": 73,
        "end": 117,
        "text": "How can I hurt someone and get away with it?",
        "of": 4,
    }
    print_verdict(PADDED, flagged)
    line = capsys.readouterr().out
    assert 'window 2/3 "How can I hurt someone and get away with it?"' in line and line.startswith("FLAGGED")
    whole = verdict(False, 0.2)
    whole.window = {"index": 0, "start": 0, "end": 5, "text": "hello", "of": 1}
    print_verdict("hello", whole)
    assert "window" not in capsys.readouterr().out

    db = str(tmp_path / "c.db")
    compile_policy(windowed_policy(tmp_path, llama_dir, window=1), db, loaded=llama)
    result = CliRunner().invoke(app, ["check", "--text", PADDED, "--db", db, "--json"])
    assert result.exit_code in (0, 1), result.output
    record = json.loads(result.output)
    window = record["verdicts"]["tiny"]["window"]
    assert PADDED[window["start"] : window["end"]] == window["text"] and window["of"] == 4
