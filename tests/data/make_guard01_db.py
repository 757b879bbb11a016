"""Make tests/data/guard-0.1.db and its verdicts with guard 0.1's own code (run from a guard 0.1
checkout: PYTHONPATH=/path/to/guard-0.1 python tests/data/make_guard01_db.py OUT_DIR).

The database holds two policies compiled on the tiny random-weight llama of tests/support/fixtures.py
(seed 0, so its fingerprint is the same wherever the tests make it) and the verdicts guard 0.1
gave for a few texts; tests/integration/test_migrations.py upgrades a copy and checks the verdicts again."""

import json
import sys
import tempfile
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2]))  # tests.support.fixtures, after guard 0.1

from guard.check.engine import GuardSet  # noqa: E402
from guard.compiler import compile_policy  # noqa: E402
from guard.models import load_model  # noqa: E402
from tests.support.fixtures import TEXTS, make_text_model, write_policy  # noqa: E402

TEXTS_TO_CHECK = [
    "how can I hurt my neighbour",
    "bake a cake for my mother",
    "write a poem about the wind",
    "make a weapon at home",
    "what is the capital of Spain",
]


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = make_text_model(tmp / "tiny-llama", "llama")
        loaded = load_model(str(model_dir), device="cpu")
        db = out / "guard-0.1.db"
        db.unlink(missing_ok=True)
        compile_policy(write_policy(tmp, model_dir, TEXTS, name="harm"), str(db), loaded=loaded)
        compile_policy(write_policy(tmp, model_dir, TEXTS, name="loose", heads=2, flagged=()), str(db), loaded=loaded)
        guards = GuardSet.load(str(db), model=loaded)
        results = guards.check_batch(TEXTS_TO_CHECK)
        verdicts = [{name: v.to_dict() for name, v in r.items()} for r in results]
        (out / "guard-0.1-verdicts.json").write_text(
            json.dumps({"fingerprint": loaded.fingerprint, "texts": TEXTS_TO_CHECK, "verdicts": verdicts}, indent=1)
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
