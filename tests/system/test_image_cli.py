"""`guard check IMAGE... --prompt TEXT` and `guard compile --data-root`: output, exit codes, errors."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from guard.cli.commands import app

runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def write_policy(tmp_path, model, name, prompt, flagged, data):
    doc = {
        "name": name,
        "model": str(model),
        "prompt": prompt,
        "data_root": data,  # colour_data's folder name
        "labels": [{"name": "red", "flagged": "red" in flagged}, {"name": "blue", "flagged": "blue" in flagged}],
        "exemplars": [{"from": "train", "format": "folder", "text": "What colour is this?"}]
        if "{text}" in prompt
        else [{"from": "train", "format": "folder"}],
        "heads": 4,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def compiled(tmp_path, vlm_dirs, colour_data, db):
    """Three policies on a tiny LLaVA: 'ask' takes a prompt per image, 'plain' none; 'always'
    flags both labels. Compiled with --data-root pointing at the folder that holds colours/."""
    model = vlm_dirs("llava")
    policies = [
        ("ask", "Q: {text} Answer with one word.", ("red",)),
        ("plain", "What colour is this image?", ()),
        ("always", "What colour is this image?", ("red", "blue")),
    ]
    for name, prompt, flagged in policies:
        result = run(
            "compile",
            write_policy(tmp_path, model, name, prompt, flagged, colour_data.name),
            "--db",
            db,
            "--data-root",
            colour_data.parent,
        )
        assert result.exit_code == 0, result.output
    return db


def images(colour_data, label, n=2):
    return sorted((colour_data / "heldout" / label).glob("*.png"))[:n]


def test_compile_reads_the_data_root_from_the_environment(tmp_path, vlm_dirs, colour_data, db, monkeypatch):
    path = write_policy(tmp_path, vlm_dirs("llava"), "env", "Colour?", ("red",), colour_data.name)
    missing = run("compile", path, "--db", db)
    assert missing.exit_code == 2 and "data root" in missing.stderr and "GUARD_DATA_ROOT is not set" in missing.stderr
    monkeypatch.setenv("GUARD_DATA_ROOT", str(colour_data.parent))
    result = run("compile", path, "--db", db, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["exemplars"] == 12


def test_check_images_one_json_line_each(compiled, colour_data):
    paths = images(colour_data, "red") + images(colour_data, "blue")
    result = run("check", *paths, "--prompt", "what is this?", "--db", compiled, "-p", "ask", "--json")
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in paths]
    assert all(list(line["verdicts"]) == ["ask"] and len(line["verdicts"]["ask"]["votes"]) == 4 for line in lines)
    assert result.exit_code == (1 if any(line["flagged"] for line in lines) else 0)


def test_exit_codes_follow_flagged(compiled, colour_data):
    paths = images(colour_data, "red", 1) + images(colour_data, "blue", 1)
    flagged = run("check", *paths, "--db", compiled, "-p", "always")
    assert flagged.exit_code == 1, flagged.output
    assert flagged.output.count("FLAGGED") == 2 and str(paths[0]) in flagged.output
    allowed = run("check", *paths, "--db", compiled, "-p", "plain")
    assert allowed.exit_code == 0, allowed.output
    assert allowed.output.count("allowed") == 2


def test_images_and_text_together(compiled, colour_data):
    result = run(
        "check",
        images(colour_data, "red", 1)[0],
        "--text",
        "a text with no image",
        "--db",
        compiled,
        "-p",
        "always",
        "--json",
    )
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert "image" not in lines[0] and "image" in lines[1] and result.exit_code == 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["{red}", "-p", "ask"], "policy 'ask' puts text with each image ({text} in its prompt): add --prompt TEXT"),
        (["--prompt", "hi", "-p", "plain"], "--prompt goes with images"),
        (["{empty}", "-p", "plain"], "empty.png: is empty (0 bytes)"),
        (["{fake}", "-p", "plain"], "fake.png: not a PNG, JPEG, WebP or GIF image"),
        (["{red}", "{tmp}/missing.png", "-p", "plain"], "missing.png: no such file"),
    ],
)
def test_image_errors_are_one_line_with_exit_2(compiled, colour_data, tmp_path, args, message):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "fake.png").write_text("words, not pixels")
    fill = {
        "red": images(colour_data, "red", 1)[0],
        "empty": tmp_path / "empty.png",
        "fake": tmp_path / "fake.png",
        "tmp": tmp_path,
    }
    result = run("check", *[a.format(**fill) for a in args], "--db", compiled)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_text_model_policy_refuses_images(tmp_path, llama_dir, colour_data, db):
    from tests.support.fixtures import TEXTS
    from tests.support.fixtures import write_policy as write_text_policy

    assert run("compile", write_text_policy(tmp_path, llama_dir, TEXTS), "--db", db).exit_code == 0
    result = run("check", images(colour_data, "red", 1)[0], "--prompt", "hi", "--db", db)
    assert result.exit_code == 2
    assert "is a text model; it cannot take images" in result.stderr


def test_several_policies_share_each_image(compiled, colour_data):
    """Two policies with the same prompt read one forward per image (GuardSet); one JSON line each."""
    paths = images(colour_data, "blue", 2)
    result = run("check", *paths, "--db", compiled, "-p", "plain", "-p", "always", "--json")
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in paths]
    assert all(set(line["verdicts"]) == {"plain", "always"} and line["flagged"] for line in lines)
    assert result.exit_code == 1


def test_missing_prompt_is_reported_before_the_model_loads(compiled, colour_data, monkeypatch):
    """A usage error costs no model load: the check fails on --prompt even when loading would fail."""
    import guard.check.engine

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the usage error")

    monkeypatch.setattr(guard.check.engine, "load_model", no_loading)
    result = run("check", images(colour_data, "red", 1)[0], "--db", compiled, "-p", "ask")
    assert result.exit_code == 2 and "add --prompt TEXT" in result.stderr
