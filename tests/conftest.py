import os

import pytest

from tests.support.fixtures import TEXTS, make_text_model, write_policy

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


@pytest.fixture(scope="session")
def guard01_llama():
    """The tiny llama guard 0.1's test database was compiled on, as shipped files: made by
    tests/support/fixtures.py under transformers 5.24.0, whose config.json records that version, so
    the fingerprint the 0.1 database stores does not move when transformers releases."""
    from pathlib import Path

    from guard.models import load_model

    return load_model(str(Path(__file__).parent / "data" / "tiny-llama-0.1"), device="cpu")


@pytest.fixture
def tiny_policy(tmp_path, llama_dir):
    return write_policy(tmp_path, llama_dir, TEXTS)


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "guard.db")


@pytest.fixture(scope="session")
def vlm_dirs(tmp_path_factory):
    """`vlm_dirs(family)`: the directory of a tiny saved vision-language model, made once per session."""
    from tests.support.vlm_fixtures import make_vlm

    made = {}

    def get(family: str):
        if family not in made:
            made[family] = make_vlm(tmp_path_factory.mktemp(f"tiny-{family}"), family)
        return made[family]

    return get


@pytest.fixture(scope="session")
def colour_data(tmp_path_factory):
    """Solid reddish and bluish images of random shades and sizes: train/{red,blue}/ (6 each, a
    `format: folder` layout) and heldout/{red,blue}/ (10 each)."""
    from tests.support.vlm_fixtures import write_colour_images

    return write_colour_images(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL server for the session (tests/support/postgres.py); skipped only where no
    server binary exists."""
    from tests.support.postgres import PostgresServer, server_bin

    bindir = server_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binary (initdb, pg_ctl) on this machine")
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed: pip install -e '.[test]'")
    server = PostgresServer(bindir).start()
    yield server
    server.stop()


@pytest.fixture
def pg_db(postgres_server):
    """The URL of a new, empty PostgreSQL database."""
    return postgres_server.new_database()


# Whole modules that take minutes (kill trials, concurrency rounds, Ray, the real model's server, the
# docs' examples); with the real_model and postgres markers they make `slow`: `pytest -m "not slow"`
# is the quick loop, `.ci/run` runs everything.
SLOW_MODULES = {"test_crash", "test_concurrency", "test_scan_ray", "test_serve_real", "test_docs"}


def pytest_collection_modifyitems(items):
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        if module in SLOW_MODULES or item.get_closest_marker("real_model") or item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def default_activations(tmp_path_factory):
    """A database holding the shipped default policy compiled once per session on the real
    SmolLM2-135M, and so its activation cache: the tests that compile the default policy again
    (`warm_db`) run the model on nothing new, instead of 1,077 forwards each."""
    from pathlib import Path

    from guard.compiler import compile_policy

    db = tmp_path_factory.mktemp("default-policy") / "guard.db"
    seed = os.environ.get("GUARD_TEST_ACTIVATIONS")  # a database whose activation cache holds the exemplars
    if seed:  # on a busy machine: the compile below then runs the fit, not the forwards
        from tests.support.fixtures import copy_database

        copy_database(seed, db)
    compile_policy(Path(__file__).resolve().parents[1] / "policies/text-harm.yaml", str(db), device="cpu")
    return db


@pytest.fixture
def warm_db(default_activations, tmp_path):
    """A private copy of `default_activations`, so a test's writes stay its own: `warm_db(path)`
    writes it there and returns the path as a string."""
    from tests.support.fixtures import copy_database

    return lambda path=None: copy_database(default_activations, path or tmp_path / "guard.db")
