"""Property-based tests (hypothesis): the policy parser, the exemplar readers, the image loader
and the stdin line reader give a result or a GuardError for any input, never another exception."""

import io
import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guard.errors import GuardError
from guard.limits import read_lines
from guard.models.images import decode_image
from guard.policy import parse_policy
from guard.policy.exemplars import read_exemplar_file

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=12))
KEYS = [
    "name",
    "model",
    "prompt",
    "labels",
    "exemplars",
    "heads",
    "scoring",
    "flagged",
    "text",
    "label",
    "from",
    "target",
    "recall",
    "fpr",
    "uncertain_margin",
    "description",
    "shots",
    "seed",
    "format",
    "image",
    "images",
]
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=6)
    ),
    max_leaves=30,
)


def near_valid_policy(draw_labels, draw_exemplars, prompt, heads):
    return {"name": "fuzz", "prompt": prompt, "labels": draw_labels, "exemplars": draw_exemplars, "heads": heads}


def accepts(call):
    try:
        call()
    except GuardError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip(), "a GuardError message is one line"


@FUZZ
@given(st.text(max_size=400))
def test_policy_parser_any_text(tmp_path, text):
    accepts(lambda: parse_policy(text, "fuzz.yaml", base_dir=tmp_path))


@FUZZ
@given(documents)
def test_policy_parser_any_document(tmp_path, doc):
    accepts(lambda: parse_policy(yaml.safe_dump(doc), "fuzz.yaml", base_dir=tmp_path))


@FUZZ
@given(
    st.lists(st.one_of(st.text(max_size=8), st.dictionaries(st.sampled_from(KEYS), scalars, max_size=4)), max_size=4),
    st.lists(st.dictionaries(st.sampled_from(KEYS), scalars | st.text(max_size=20), max_size=4), max_size=8),
    st.text(max_size=30),
    scalars,
)
def test_policy_parser_near_valid_policies(tmp_path, labels, exemplars, prompt, heads):
    doc = near_valid_policy(labels, exemplars, prompt, heads)
    accepts(lambda: parse_policy(yaml.safe_dump(doc), "fuzz.yaml", base_dir=tmp_path))


@FUZZ
@given(st.sampled_from(["jsonl", "csv", "vlguard", "mhalubench"]), st.binary(max_size=600) | st.text(max_size=400))
def test_readers_any_file(tmp_path, fmt, content):
    path = tmp_path / f"data.{fmt}"
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    accepts(lambda: read_exemplar_file(path, fmt, path.name, "fuzz.yaml:1", root=tmp_path))


json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(st.sampled_from(["jsonl", "vlguard", "mhalubench"]), st.lists(json_values, max_size=5))
def test_readers_any_json(tmp_path, fmt, records):
    path = tmp_path / f"data.{fmt}"
    text = "\n".join(json.dumps(r) for r in records) if fmt == "jsonl" else json.dumps(records)
    path.write_text(text)
    accepts(lambda: read_exemplar_file(path, fmt, path.name, "fuzz.yaml:1", root=tmp_path))


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGBA", (7, 5), (200, 10, 10, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


@FUZZ
@given(st.binary(max_size=2000))
def test_image_loader_any_bytes(data):
    accepts(lambda: decode_image(data, "fuzz.png"))


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(PNG) - 1), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(8, len(PNG)),
)
def test_image_loader_damaged_png(changes, cut):
    data = bytearray(PNG)
    for where, value in changes:
        data[where] = value
    accepts(lambda: decode_image(bytes(data[:cut]), "fuzz.png"))


@FUZZ
@given(st.binary(max_size=3000))
def test_line_reader_any_bytes(data):
    lines = list(read_lines(io.BytesIO(data)))
    assert len(lines) == data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)
    for _, line in lines:
        assert isinstance(line, (str, GuardError))


@pytest.mark.parametrize("seed_doc", ["name: x\nlabels: [a, b]\n", "a: &x [1]\nb: *x\n"])
def test_parser_examples_stay_errors(tmp_path, seed_doc):
    accepts(lambda: parse_policy(seed_doc, "fuzz.yaml", base_dir=tmp_path))
