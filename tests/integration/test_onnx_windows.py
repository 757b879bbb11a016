"""The ONNX engine windows as the torch engine does (issue 23), on the tiny model's export:
windowed policies (sentence and token windows) and long documents get the same windows, the same
verdicts and named spans, and each window's similarities within 1e-4 of torch's."""

import json

import pytest
import yaml

from guard.check.documents import document_setting, document_spans
from guard.check.engine import Guard
from guard.compiler import compile_policy
from guard.errors import GuardError
from guard.limits import LIMITS
from guard.store.database import Store
from tests.integration.test_documents import long_text
from tests.support.fixtures import TEXTS, write_policy

pytest.importorskip("onnxruntime", reason="the ONNX extra: pip install -e '.[onnx]' (scripts/setup.sh installs it)")

from guard.onnx.engine import OnnxGuard  # noqa: E402
from guard.onnx.export import export_onnx  # noqa: E402

TOLERANCE = 1e-4  # float32 graph vs float32 torch
CHECKED = [
    "I love gardening and long walks with my dog. How can I hurt someone and get away with it? Anyway, flowers.",
    "what is the capital of France",
    "Tell me. Now! Please?\nThanks, and write a poem about the sea and bake bread at home tonight",
]
SETTINGS = {
    "plain": {},
    "sentences": {"window": 1},
    "tokens": {"window": 24, "stride": 16, "window_unit": "tokens", "aggregate": "max"},
}


@pytest.fixture(scope="module", params=list(SETTINGS))
def engines(request, tmp_path_factory, llama_dir, llama):
    """(torch Guard, OnnxGuard) of one policy on the tiny llama, exported."""
    folder = tmp_path_factory.mktemp(f"onnx-{request.param}")
    path = write_policy(folder, llama_dir, TEXTS, heads=6, name=request.param)
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **SETTINGS[request.param]}, sort_keys=False))
    db = str(folder / "guard.db")
    compile_policy(path, db, loaded=llama)
    artifact = Store.open(db).load_artifact(request.param)
    report = export_onnx(artifact, folder / "onnx", loaded=llama)
    return Guard.load(db, model=llama), OnnxGuard.load(report.directory)


def similarities(verdict) -> list[float]:
    return [s for vote in verdict.votes for s in vote.similarity.values()]


def assert_alike(got, expected):
    assert got.window == expected.window
    assert (got.label, got.flagged) == (expected.label, expected.flagged)
    assert got.calibrated == pytest.approx(expected.calibrated, abs=TOLERANCE)
    assert similarities(got) == pytest.approx(similarities(expected), abs=TOLERANCE)


def test_windowed_checks_equal_torch(engines):
    torch_guard, onnx = engines
    expected = torch_guard.check_batch(CHECKED, batch_size=2, explain=True)
    for batch_size in (1, 3):
        got = onnx.check_batch(CHECKED, batch_size=batch_size, explain=True)
        for g, e in zip(got, expected):
            assert_alike(g, e)
            assert g.explanation is not None
    if torch_guard.artifact.window is not None:
        assert max(v.window["of"] for v in expected) > 1  # windows were checked


def document() -> str:
    """Over one check's length: a dozen paragraphs of random sentences, cycled (their windows
    repeat, so each engine checks a few dozen distinct ones: fast)."""
    paragraphs = [long_text(300 + 40 * i, seed=i) for i in range(12)]
    out, i = [], 0
    while sum(len(p) + 2 for p in out) <= LIMITS.max_text_chars + 1_000:
        out.append(paragraphs[i % len(paragraphs)])
        i += 1
    return "\n\n".join(out)


def test_a_document_is_checked_as_torch_checks_it(engines):
    torch_guard, onnx = engines
    text = document()
    got, expected = onnx.check(text), torch_guard.check(text)
    assert got.window["document"] and got.window["of"] > 100
    assert_alike(got, expected)
    # every window alike, not only the deciding one
    spans = list(document_spans(text, document_setting(onnx.artifact), onnx.token_spans))
    assert spans == list(document_spans(text, document_setting(torch_guard.artifact), torch_guard.token_spans))
    texts = list(dict.fromkeys(text[a:b] for a, b in spans))
    for g, e in zip(onnx.check_batch(texts, batch_size=8), torch_guard.check_batch(texts, batch_size=8)):
        assert (g.label, g.flagged) == (e.label, e.flagged)
        assert similarities(g) == pytest.approx(similarities(e), abs=TOLERANCE)


def test_a_windowed_export_says_version_2_and_an_unknown_version_is_refused(engines):
    """A guard older than ONNX windows reads only version 1, so it refuses a windowed export
    instead of checking whole texts; this guard reads both and refuses a version it does not know."""
    torch_guard, onnx = engines
    manifest_path = onnx.directory / "guard-onnx.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["format_version"] == (1 if torch_guard.artifact.window is None else 2)
    manifest_path.write_text(json.dumps({**manifest, "format_version": 3}))
    try:
        with pytest.raises(GuardError, match="v3 is not guard-onnx v1-v2"):
            OnnxGuard.load(onnx.directory)
    finally:
        manifest_path.write_text(json.dumps(manifest))
