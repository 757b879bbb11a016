"""Verdicts agree with the figures printed beside them (issue 20): for every vote rule and
classifier, on a few hundred random inputs, a verdict is flagged exactly when the calibrated
probability of its flagged label reaches the threshold the verdict carries."""

import random

import pytest
import yaml

from guard.check.engine import Guard
from guard.compiler import compile_policy
from tests.support.fixtures import write_policy

BAD = ["bomb", "kill", "weapon", "hurt", "attack", "steal", "poison"]
GOOD = ["bread", "poem", "sea", "cake", "garden", "music", "tea"]
FILLER = ["how", "do", "I", "make", "a", "the", "for", "my", "with", "at", "home"]


def texts(words: list[str], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(FILLER) for _ in range(rng.randint(1, 4))) + " " + rng.choice(words) for _ in range(n)]


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(FILLER + BAD + GOOD) for _ in range(rng.randint(1, 9))) for _ in range(n)]


@pytest.mark.parametrize(
    "keys",
    [
        {"heads": 5},  # count vote, centroids (the paper), odd k: no tied votes
        {"heads": 4, "vote": "margin"},
        {"heads": 4, "vote": "margin", "prototypes": 2},
        {"heads": 4, "vote": "margin", "classifier": "probe"},
        {"heads": 5, "labels": [{"name": "harmful", "flagged": True, "target": {"recall": 0.75}}]},
    ],
)
def test_verdict_follows_its_printed_threshold(tmp_path, llama_dir, llama, keys):
    path = write_policy(tmp_path, llama_dir, {"harmful": texts(BAD, 16, 1), "benign": texts(GOOD, 16, 2)})
    doc = yaml.safe_load(path.read_text())
    for label in keys.pop("labels", []):
        next(lab for lab in doc["labels"] if lab["name"] == label["name"]).update(label)
    doc.update(keys)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    db = str(tmp_path / "g.db")
    compile_policy(path, db, loaded=llama)
    verdicts = Guard.load(db, model=llama).check_batch(random_texts(300))
    flagged_seen = 0
    for v in verdicts:
        assert v.calibrated is not None and set(v.thresholds) == {"harmful"}
        assert v.flagged == (v.calibrated["harmful"] >= v.thresholds["harmful"])
        assert v.label == ("harmful" if v.flagged else "benign")
        flagged_seen += v.flagged
    assert 0 < flagged_seen < len(verdicts)  # the rule was exercised on both sides
