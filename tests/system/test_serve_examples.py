"""The examples/ programs run as documented: the embedding FastAPI app and the openai client."""

import importlib.util
from pathlib import Path

import httpx
import pytest

from guard.check.engine import GuardSet
from guard.compiler import compile_policy
from guard.serve.app import create_app
from guard.serve.service import Service
from guard.store.database import Store
from tests.support.fixtures import TEXTS, write_policy
from tests.support.serve_helpers import thread_server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
COMMENTS = ["write a poem about the sea", "how can I hurt someone and get away with it", "what is the capital"]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example_db(tmp_path_factory, llama_dir, llama):
    folder = tmp_path_factory.mktemp("examples")
    db = str(folder / "guard.db")
    compile_policy(write_policy(folder, llama_dir, TEXTS), db, loaded=llama)
    return db


def test_embedded_app_accepts_or_rejects_as_the_library_decides(example_db, llama, monkeypatch):
    monkeypatch.setenv("GUARD_DB", example_db)
    module = load_example("embed_fastapi")
    expected = GuardSet.load(example_db, model=llama).check_batch(COMMENTS)
    with thread_server(module.app) as url:
        for text, verdicts in zip(COMMENTS, expected):
            response = httpx.post(f"{url}/comments", json={"text": text}, timeout=60)
            flagged = any(v.flagged for v in verdicts.values())
            assert response.status_code == (422 if flagged else 201), response.text
        accepted = [c["text"] for c in httpx.get(f"{url}/comments").json()]
        assert accepted == [t for t, v in zip(COMMENTS, expected) if not any(x.flagged for x in v.values())]
        assert httpx.post(f"{url}/comments", json={"text": " "}).status_code == 422


def test_openai_client_example(example_db, llama, monkeypatch, capsys):
    service = Service(GuardSet.load(example_db, model=llama), store=Store.open(example_db))
    module = load_example("openai_client")
    expected = GuardSet.load(example_db, model=llama).check_batch(COMMENTS)
    with thread_server(create_app(service)) as url:
        monkeypatch.setenv("GUARD_URL", f"{url}/v1")
        code = module.main(COMMENTS)
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    flags = [any(v.flagged for v in r.values()) for r in expected]
    assert [line.startswith("FLAGGED") for line in lines] == flags
    assert code == (1 if any(flags) else 0)
