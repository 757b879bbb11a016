import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def compiled_db(tmp_path_factory) -> str:
    """The default policy compiled on the real SmolLM2 model (cached activations reused)."""
    import transformers

    from benchmarks.texts import POLICY
    from guard.compiler import compile_policy

    transformers.logging.set_verbosity_error()
    db = str(Path(tmp_path_factory.mktemp("bench")) / "guard.db")
    compile_policy(POLICY, db, device="cpu")
    return db


@pytest.fixture(scope="session")
def guard(compiled_db):
    from guard.check.engine import Guard

    return Guard.load(compiled_db, device="cpu")
