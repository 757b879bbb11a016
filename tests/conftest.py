import os

import pytest

from tests.fixtures import TEXTS, make_text_model, write_policy

# Never reach for the network in tests; model references resolve locally or fail clearly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return make_text_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory):
    return make_text_model(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2")


@pytest.fixture(params=["llama", "qwen2"])
def text_model_dir(request, llama_dir, qwen2_dir):
    return {"llama": llama_dir, "qwen2": qwen2_dir}[request.param]


@pytest.fixture(scope="session")
def llama(llama_dir):
    from guard.models import load_model

    return load_model(str(llama_dir), device="cpu")


@pytest.fixture
def tiny_policy(tmp_path, llama_dir):
    return write_policy(tmp_path, llama_dir, TEXTS)


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "guard.db")
