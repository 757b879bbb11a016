"""`guard review diff NAME`: a candidate version against the current one, on reviewed items it
was not fitted on (the held-out share `guard review export` keeps back).

Both versions check the same held-out texts on one loaded model; the report counts the items
the candidate fixes (the current version was wrong, the candidate is right) and breaks (the
reverse), and each version's recall (items of a flagged label that were flagged) and FPR (items
of an allowed label that were flagged), with 95% Wilson intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

from guard.errors import GuardError
from guard.eval.sources import share
from guard.store.database import Store
from guard.store.reviews import HOLD_OUT, Reviews, decide, export


@dataclass
class ReviewDiff:
    policy: str
    current: dict  # {"revision", "version"}
    candidate: dict
    items: int
    fixed: list[dict]  # {"text", "label", "current", "candidate"}
    broken: list[dict]
    rates: dict  # version name -> {"recall": share, "fpr": share, "accuracy": share}

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "current": self.current,
            "candidate": self.candidate,
            "held_out_items": self.items,
            "fixed": self.fixed,
            "broken": self.broken,
            "rates": self.rates,
        }


def candidate_spec(store: Store, name: str, candidate: str | None) -> str:
    """`NAME@REVISION` of the candidate: the one named, else the newest revision if it is not current."""
    if candidate is not None:
        return f"{name}@{candidate}"
    versions = store.versions(name)
    if versions[0]["current"]:
        raise GuardError(
            f"'{name}' has no candidate: its newest revision is the current one "
            "(compile one with 'guard compile POLICY.yaml --candidate', or name a revision)"
        )
    return f"{name}@{versions[0]['revision']}"


def review_diff(
    db: str | Store | None,
    name: str,
    candidate: str | None = None,
    *,
    hold_out: float = HOLD_OUT,
    device: str = "auto",
    dtype: str | None = None,
    loaded=None,
) -> ReviewDiff:
    """The candidate (`candidate` revision, else the newest if it is not current) against the current
    version of `name` on the held-out reviewed items of `db` (a path or URL, or an open Store), on
    `loaded` (a LoadedModel; else the stored model reference is loaded)."""
    from guard.check.engine import GuardSet

    store = db if isinstance(db, Store) else Store.open(db)
    current = store.load_artifact(name)
    other = store.load_artifact(candidate_spec(store, name, candidate))
    held = export(decide(Reviews(store).all(name)), hold_out).held_out
    texts = [d.text for d in held]
    truth = [d.label for d in held]
    flagged = {label.name for label in current.labels if label.flagged}
    old_set = GuardSet.with_model([current], loaded, device=device, dtype=dtype)
    new_set = GuardSet([other], old_set.loaded)
    old = [r[name].label for r in old_set.check_batch(texts)] if texts else []
    new = [r[name].label for r in new_set.check_batch(texts)] if texts else []
    fixed, broken = [], []
    for text, want, was, now in zip(texts, truth, old, new):
        record = {"text": text, "label": want, "current": was, "candidate": now}
        if was != want and now == want:
            fixed.append(record)
        elif was == want and now != want:
            broken.append(record)
    rates = {"current": _rates(truth, old, flagged), "candidate": _rates(truth, new, flagged)}
    return ReviewDiff(
        policy=name,
        current={"revision": current.revision, "version": current.version},
        candidate={"revision": other.revision, "version": other.version},
        items=len(texts),
        fixed=fixed,
        broken=broken,
        rates=rates,
    )


def _rates(truth: list[str], predicted: list[str], flagged: set[str]) -> dict:
    harmful = [p for t, p in zip(truth, predicted) if t in flagged]
    allowed = [p for t, p in zip(truth, predicted) if t not in flagged]
    return {
        "recall": share(sum(p in flagged for p in harmful), len(harmful)),
        "fpr": share(sum(p in flagged for p in allowed), len(allowed)),
        "accuracy": share(sum(t == p for t, p in zip(truth, predicted)), len(truth)),
    }
