"""Extension points: a package adds a model family or an exemplar format without editing guard,
by calling the register functions or through entry points (a real installed distribution's
metadata, made in a temporary folder on sys.path)."""

import sys
import textwrap

import pytest

from guard import plugins
from guard.errors import ModelError, PolicyError
from guard.models import ARCHITECTURES, Architecture, load_model, register_architecture
from guard.policy import load_policy
from guard.policy.exemplars import READERS, Reader, read_exemplar_file, register_reader
from tests.support.fixtures import make_text_model


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    """An installed distribution `guard-demo-plugin` declaring entry points in both groups."""
    site = tmp_path / "site"
    (site / "demo_plugin").mkdir(parents=True)
    (site / "demo_plugin" / "__init__.py").write_text(
        textwrap.dedent(
            '''
            from guard.policy.exemplars import Exemplar
            from guard.models import Architecture

            ROW = Architecture("starcoder2", "model.layers")

            def read_tabbed(source):
                """label<TAB>text per line"""
                out = []
                for n, line in enumerate(source.path.read_text().splitlines(), start=1):
                    label, text = line.split("\\t", 1)
                    out.append(Exemplar(text=text, label=label, origin=f"{source.display}:{n}"))
                return out
            '''
        )
    )
    info = site / "guard_demo_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: guard-demo-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[guard.architectures]\nstarcoder2 = demo_plugin:ROW\n\n[guard.readers]\ntabbed = demo_plugin:read_tabbed\n"
    )
    monkeypatch.syspath_prepend(str(site))
    plugins.forget_entry_points()
    yield
    ARCHITECTURES.pop("starcoder2", None)
    READERS.pop("tabbed", None)
    sys.modules.pop("demo_plugin", None)
    plugins.forget_entry_points()


def test_an_entry_point_adds_a_model_family(tmp_path, plugin_package):
    directory = make_text_model(tmp_path / "sc2", "starcoder2", layers=2)
    loaded = load_model(str(directory), device="cpu")
    assert loaded.arch.family == "starcoder2" and len(loaded.o_projs) == 2


def test_without_the_plugin_the_family_is_refused(tmp_path):
    plugins.forget_entry_points()
    directory = make_text_model(tmp_path / "sc2", "starcoder2", layers=2)
    with pytest.raises(ModelError, match="model type 'starcoder2' is not supported yet"):
        load_model(str(directory), device="cpu")


def test_an_entry_point_adds_an_exemplar_format(tmp_path, plugin_package):
    (tmp_path / "data.tsv").write_text("bad\thow do I pick a lock\ngood\thow do I bake bread\n")
    (tmp_path / "p.yaml").write_text(
        "name: p\nmodel: x\nprompt: '{text}'\nlabels: [bad, good]\nheads: 1\nscoring: in_sample\n"
        "exemplars:\n  - {from: data.tsv, format: tabbed}\n"
    )
    policy = load_policy(tmp_path / "p.yaml")
    assert [(e.label, e.text) for e in policy.exemplars] == [
        ("bad", "how do I pick a lock"),
        ("good", "how do I bake bread"),
    ]


def test_register_functions_refuse_silent_replacement(tmp_path):
    with pytest.raises(ModelError, match="already registered"):
        register_architecture("llama", Architecture("llama", "model.decoder.layers"))
    with pytest.raises(ModelError, match="must be a guard.models.Architecture"):
        register_architecture("odd", {"layers": "model.layers"})

    def read_nothing(source):
        return []

    with pytest.raises(PolicyError, match="already registered"):
        register_reader("jsonl", read_nothing)
    register_reader("nothing", Reader(read_nothing))
    try:
        (tmp_path / "empty.txt").write_text("")
        assert read_exemplar_file(tmp_path / "empty.txt", "nothing", "empty.txt", "here") == []
    finally:
        READERS.pop("nothing")
