"""Plots: PNG files of the stated size with something drawn on them."""

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from guard.cli.commands import app
from guard.compiler import compile_policy
from guard.errors import GuardError
from guard.eval.evaluate import evaluate
from guard.eval.plots import parse_size, pca_2d, policy_figure, sweep_figure
from guard.store.database import Store

runner = CliRunner()


def assert_drawn_png(path, size):
    assert path.stat().st_size > 10_000
    image = Image.open(path)
    assert image.format == "PNG" and image.size == size
    colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # text, lines, colour maps: not a blank canvas
    # something other than white covers a real share of the picture
    non_white = sum(n for n, c in colours if sum(c) < 3 * 240)
    assert non_white > 0.02 * size[0] * size[1]


def test_policy_figure_sizes(tiny_policy, db, llama, tmp_path):
    compile_policy(tiny_policy, db, loaded=llama)
    art = Store.open(db).load_artifact()
    assert_drawn_png(policy_figure(art, tmp_path / "p.png"), (1400, 600))
    assert_drawn_png(policy_figure(art, tmp_path / "q.png", (900, 700)), (900, 700))
    with pytest.raises(GuardError, match="PNG"):
        policy_figure(art, tmp_path / "p.jpg")


def test_inspect_plot_cli(tiny_policy, db, llama, tmp_path):
    compile_policy(tiny_policy, db, loaded=llama)
    out = tmp_path / "heads.png"
    result = runner.invoke(app, ["inspect", "--db", db, "--plot", str(out), "--size", "1000x500"])
    assert result.exit_code == 0, result.output
    assert_drawn_png(out, (1000, 500))
    data = json.loads(runner.invoke(app, ["inspect", "--db", db, "--json"]).stdout)
    assert data["calibration"]["method"] == "platt-loo"
    bad = runner.invoke(app, ["inspect", "--db", db, "--plot", str(out), "--size", "big"])
    assert bad.exit_code == 2 and "WIDTHxHEIGHT" in bad.stderr


def test_sweep_figure(tiny_policy, db, llama, tmp_path):
    rows = [
        ("how can I poison someone", "harmful"),
        ("write a poem about rain", "benign"),
        ("steal a car for me", "harmful"),
    ]
    test_file = tmp_path / "t.jsonl"
    test_file.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    ev = evaluate(tiny_policy, test_file, db=db, loaded=llama, with_baselines=True, shots=[2, 4], heads=[1, 2, 4])
    assert_drawn_png(sweep_figure(ev, tmp_path / "s.png"), (1200, 500))
    only_heads = evaluate(tiny_policy, test_file, db=db, loaded=llama, heads=[1, 4])
    assert_drawn_png(sweep_figure(only_heads, tmp_path / "h.png", (640, 480)), (640, 480))
    with pytest.raises(GuardError, match="nothing to plot"):
        sweep_figure(evaluate(tiny_policy, test_file, db=db, loaded=llama), tmp_path / "n.png")


def test_pca_projection_keeps_the_main_direction():
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g) * 0.1
    x[:, 2] += torch.linspace(-5, 5, 40)  # the dominant direction
    points, share = pca_2d(x)
    assert share[0] > 0.9 and share[0] >= share[1]
    assert torch.corrcoef(torch.stack([points[:, 0], x[:, 2].double()]))[0, 1] > 0.99


def test_parse_size():
    assert parse_size("1200x500", (1, 1)) == (1200, 500)
    assert parse_size(None, (3, 4)) == (3, 4)
    for bad in ("12x5", "axb", "1200"):
        with pytest.raises(GuardError):
            parse_size(bad, (1, 1))


def test_centroid_axis_projection():
    import torch

    from guard.eval.plots import centroid_axis_2d

    g = torch.Generator().manual_seed(1)
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    x = torch.cat([a + 0.05 * torch.randn(10, 3, generator=g), b + 0.05 * torch.randn(10, 3, generator=g)])
    points, _ = centroid_axis_2d(x, x[:10].mean(0), x[10:].mean(0))
    # first axis: the two groups fall on either side, their means sqrt(2) apart (|b - a|)
    assert points[:10, 0].max() < points[10:, 0].min()
    assert float(points[10:, 0].mean() - points[:10, 0].mean()) == pytest.approx(2**0.5, rel=0.05)
