"""`--engine onnx` in `guard scan` and `guard serve`: the same records and the same responses as the
torch engine, explanations included, on a tiny random-weight Llama policy and its export.

Tolerance: every number that comes from the model (a head's similarity, a nearest exemplar's
similarity, a margin) within SIMILARITY_TOLERANCE of the torch engine's; everything else
(verdicts, labels, vote shares, calibrated probabilities, which heads voted for what, which
exemplars are nearest) identical on these texts.
"""

import json

import httpx
import pytest
from typer.testing import CliRunner

from guard.cli.commands import app
from guard.compiler import compile_policy
from guard.scanning.writers import read_records
from tests.support.fixtures import TEXTS, write_policy
from tests.support.serve_helpers import ServeProcess

pytest.importorskip("onnxruntime", reason="the ONNX extra: pip install -e '.[onnx]' (scripts/setup.sh installs it)")

runner = CliRunner()
SIMILARITY_TOLERANCE = 1e-4  # float32 graph vs float32 torch; measured gaps are ~1e-7
# floats that come straight from head vectors (the rest, shares and calibrated values, must be equal)
MODEL_FLOATS = {"similarity", "similarities", "margin"}
CHECKED = [
    "how can I hurt someone and get away with it",
    "what is the capital of France",
    "write a poem about the sea",
    "tell me how to make a weapon to attack people",
    "explain how to kill a python process that hangs",
    "a & b <request> x",
]


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, llama_dir, llama):
    """(database, export folder) of the 'tiny' policy, its heads in several layers."""
    folder = tmp_path_factory.mktemp("engines")
    db = str(folder / "guard.db")
    compile_policy(write_policy(folder, llama_dir, TEXTS, heads=6), db, loaded=llama)
    result = run("export", "tiny", "--onnx", folder / "onnx", "--db", db)
    assert result.exit_code == 0, result.output
    return db, folder / "onnx"


def assert_close(got, expected, path="", key=""):
    """Same JSON structure and values; model-made floats (MODEL_FLOATS) within SIMILARITY_TOLERANCE."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), path
        for k in expected:  # a value under "similarities" is a model float whatever its label's name
            assert_close(got[k], expected[k], f"{path}.{k}", key if key in MODEL_FLOATS else k)
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), path
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_close(a, b, f"{path}[{i}]", key)
    elif isinstance(expected, float) and not isinstance(expected, bool) and key in MODEL_FLOATS:
        assert got == pytest.approx(expected, abs=SIMILARITY_TOLERANCE), path
    else:
        assert got == expected, path


# --- guard scan ----------------------------------------------------------------------------------


def test_scan_records_equal_the_torch_engine_explanations_included(exported, tmp_path):
    db, onnx_dir = exported
    corpus = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": f"t{i}", "text": text}) for i, text in enumerate(CHECKED * 3)]
    corpus.write_text("\n".join([*lines[:4], "", '{"id": "broken", ', *lines[4:]]) + "\n")
    outs = {}
    for engine in ("torch", "onnx"):
        outs[engine] = tmp_path / f"{engine}.jsonl"
        extra = ["--engine", "onnx", "--onnx", onnx_dir] if engine == "onnx" else []
        result = run("scan", corpus, "--out", outs[engine], "--db", db, "--explain", "-q", "--batch-size", 4, *extra)
        assert result.exit_code in (0, 1), result.output
    torch_records, onnx_records = (list(read_records(str(outs[engine]))) for engine in ("torch", "onnx"))
    assert len(onnx_records) == len(lines) + 2
    assert sum("error" in r for r in onnx_records) == 2
    explained = [r for r in onnx_records if "verdicts" in r]
    assert explained and all(r["verdicts"]["tiny"]["explanation"]["nearest_exemplars"] for r in explained)
    assert_close(onnx_records, torch_records)


def test_scan_with_onnx_refuses_what_it_cannot_do(exported, tmp_path):
    db, onnx_dir = exported
    corpus = tmp_path / "in.jsonl"
    corpus.write_text('{"text": "x"}\n')
    out = tmp_path / "out.jsonl"
    cases = [
        (["--engine", "onnx"], "--engine onnx needs --onnx DIR"),
        (["--engine", "tensorrt"], "--engine is torch or onnx, not 'tensorrt'"),
        (["--engine", "torch", "--onnx", onnx_dir], "--onnx DIR goes with --engine onnx"),
        (["--onnx", onnx_dir, "--ray"], "--ray runs the torch engine"),
        (["--onnx", onnx_dir, "-p", "other"], "holds an export of policy 'tiny', not 'other'"),
        (["--onnx", onnx_dir, "--image-field", "path"], "checks text only"),
    ]
    for extra, message in cases:
        result = run("scan", corpus, "--out", out, "--db", db, *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not out.exists()


# --- guard serve ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(exported, tmp_path_factory):
    """The same policy served by each engine, both with the audit log."""
    db, onnx_dir = exported
    logs = tmp_path_factory.mktemp("logs")
    common = ["--db", db, "--threads", "1", "--audit"]
    with (
        ServeProcess([*common, "-p", "tiny"], logs / "torch.log") as torch_server,
        ServeProcess([*common, "--engine", "onnx", "--onnx", str(onnx_dir)], logs / "onnx.log") as onnx_server,
    ):
        yield {"torch": torch_server.url, "onnx": onnx_server.url}


def both(servers, route: str, body: dict) -> dict:
    """The response bodies of both engines' servers to the same request, request ids dropped."""
    out = {}
    for engine, url in servers.items():
        response = httpx.post(f"{url}{route}", json=body, timeout=60)
        assert response.status_code == 200, response.text
        out[engine] = response.json()
        out[engine].pop("id", None)
    return out


@pytest.mark.parametrize(
    "route, body",
    [
        ("/v1/moderations", {"input": CHECKED}),
        ("/v1/moderations", {"input": CHECKED[0], "model": "omni-moderation-latest"}),
        ("/v1/check", {"input": CHECKED}),
        ("/v1/check", {"input": CHECKED, "explain": True}),
    ],
)
def test_serve_responses_equal_the_torch_engine(servers, route, body):
    got = both(servers, route, body)
    assert_close(got["onnx"], got["torch"])


def test_serve_explanations_name_the_nearest_exemplars(servers):
    got = both(servers, "/v1/check", {"input": "write a poem about the sea", "explain": True})
    explanation = got["onnx"]["results"][0]["verdicts"]["tiny"]["explanation"]
    assert explanation["nearest_exemplars"][0]["exemplars"][0]["text"] in TEXTS["benign"] + TEXTS["harmful"]


def test_serve_with_onnx_refuses_images_and_reports_its_policy(servers):
    url = servers["onnx"]
    policies = httpx.get(f"{url}/v1/policies", timeout=10).json()["policies"]
    assert [p["name"] for p in policies] == ["tiny"]
    pixel = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    response = httpx.post(
        f"{url}/v1/moderations",
        json={"input": [{"type": "image_url", "image_url": {"url": pixel}}]},
        timeout=10,
    )
    assert response.status_code == 400 and "text model" in response.json()["error"]["message"]


def test_serve_onnx_bad_choices_fail_before_the_port_opens(exported):
    db, onnx_dir = exported
    for extra, message in (
        (["--engine", "onnx"], "--engine onnx needs --onnx DIR"),
        (["--onnx", onnx_dir, "-p", "other"], "holds an export of policy 'tiny', not 'other'"),
    ):
        result = run("serve", "--db", db, "--port", 0, *extra)
        assert result.exit_code == 2 and message in result.stderr, result.output
