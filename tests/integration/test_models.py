"""Model references: aliases, files, directories, hub ids; clear errors offline."""

import pytest

from guard.errors import ModelError
from guard.models import ARCHITECTURES, load_model, resolve
from guard.models.loading import fingerprint


def test_directory_reference_relative_to_base(llama_dir):
    source = resolve(llama_dir.name, base_dir=llama_dir.parent)
    assert source.kind == "directory" and source.path == llama_dir.resolve()


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        resolve("./nowhere", base_dir=tmp_path)
    with pytest.raises(ModelError, match="not found"):
        resolve("weights.gguf", base_dir=tmp_path)


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve(str(tmp_path))


def test_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert resolve("someorg/some-model").kind == "hub"
    with pytest.raises(ModelError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        load_model("someorg/some-model")


def test_hub_id_unreachable_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: fails at once
    with pytest.raises(ModelError, match="hub could not be reached"):
        load_model("someorg/some-model")


def test_unsupported_architecture(tmp_path, llama_dir):
    import json
    import shutil

    target = tmp_path / "odd"
    shutil.copytree(llama_dir, target)
    config = json.loads((target / "config.json").read_text())
    config["model_type"] = "gpt2"
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="model type 'gpt2' is not supported"):
        load_model(str(target))


def test_head_layout_comes_from_config(tmp_path):
    from tests.support.fixtures import make_text_model

    loaded = load_model(str(make_text_model(tmp_path / "m", "qwen2", layers=3, heads=8)))
    assert (loaded.layout.num_layers, loaded.layout.num_heads, loaded.layout.head_dim) == (3, 8, 8)
    assert len(loaded.o_projs) == 3
    assert loaded.arch is ARCHITECTURES["qwen2"]


def test_fingerprint_is_stable_and_content_based(tmp_path, llama_dir):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(llama_dir, copy)
    assert fingerprint(resolve(str(copy))) == fingerprint(resolve(str(llama_dir)))
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("64", "65", 1))
    assert fingerprint(resolve(str(copy))) != fingerprint(resolve(str(llama_dir)))


def test_bundled_alias_and_its_gguf_file_agree():
    source = resolve("smollm2-135m")
    assert source.kind == "bundled" and source.path.name.endswith(".gguf")
    by_path = resolve(str(source.path))
    assert by_path.kind == "gguf"
    assert fingerprint(by_path) == fingerprint(source)


def test_gguf_fingerprint_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    """A GGUF's fingerprint is its SHA-256, remembered by path, size, mtime and inode so a cold
    start does not read the whole file; any change to the file is hashed again."""
    import hashlib
    import os

    monkeypatch.setenv("GUARD_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(range(256)) * 100)
    naive = lambda: "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()  # noqa: E731
    source = resolve(str(model))
    assert fingerprint(source) == naive()
    assert (tmp_path / "cache" / "fingerprints.json").exists()
    assert fingerprint(source) == naive()  # from the cache: the same answer
    stat = model.stat()
    model.write_bytes(b"GGUF" + bytes(range(255, -1, -1)) * 100)  # same size, other content
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert fingerprint(source) == naive()  # hashed again, not the remembered digest
    (tmp_path / "cache" / "fingerprints.json").write_text("{not json")  # a damaged cache is ignored
    assert fingerprint(source) == naive()
    monkeypatch.setenv("GUARD_FINGERPRINT_CACHE", "0")
    assert fingerprint(source) == naive()
