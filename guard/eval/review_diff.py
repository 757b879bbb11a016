"""`guard review diff NAME`: a candidate version against the current one, on reviewed items it
was not fitted on (the held-out share `guard review export` keeps back).

Both versions check the same held-out texts on one loaded model; the report counts the items
the candidate fixes (the current version was wrong, the candidate is right) and breaks (the
reverse), and each version's recall (items of a flagged label that were flagged) and FPR (items
of an allowed label that were flagged), with 95% Wilson intervals. With `heldout`, the same on
the policy's own held-out file (JSONL or CSV of text and label), next to the reviews' share:
corrections that fix the reviewed traffic must not break what the policy got right before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from guard.errors import GuardError, InputError, PolicyError
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
    heldout: dict | None = field(default=None)  # the same on the policy's held-out file (`--heldout`)

    def to_dict(self) -> dict:
        out = {
            "policy": self.policy,
            "current": self.current,
            "candidate": self.candidate,
            "held_out_items": self.items,
            "fixed": self.fixed,
            "broken": self.broken,
            "rates": self.rates,
        }
        if self.heldout is not None:
            out["heldout"] = self.heldout
        return out


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
    heldout: str | Path | None = None,
) -> ReviewDiff:
    """The candidate (`candidate` revision, else the newest if it is not current) against the current
    version of `name` on the held-out reviewed items of `db` (a path or URL, or an open Store), on
    `loaded` (a LoadedModel; else the stored model reference is loaded); with `heldout`, also on
    that file of text and label."""
    from guard.check.engine import GuardSet

    store = db if isinstance(db, Store) else Store.open(db)
    current = store.load_artifact(name)
    other = store.load_artifact(candidate_spec(store, name, candidate))
    held = export(decide(Reviews(store).all(name)), hold_out).held_out
    file_items = None if heldout is None else read_heldout(heldout, current.label_names)
    old_set = GuardSet.with_model([current], loaded, device=device, dtype=dtype)
    new_set = GuardSet([other], old_set.loaded)
    flagged = {label.name for label in current.labels if label.flagged}
    texts = [d.text for d in held]
    fixed, broken, rates = _compare(name, texts, [d.label for d in held], old_set, new_set, flagged)
    on_file = None
    if file_items is not None:
        file_texts = [text for text, _ in file_items]
        truth = [label for _, label in file_items]
        file_fixed, file_broken, file_rates = _compare(name, file_texts, truth, old_set, new_set, flagged)
        on_file = {"file": str(heldout), "items": len(file_items), "fixed": file_fixed, "broken": file_broken}
        on_file["rates"] = file_rates
    return ReviewDiff(
        policy=name,
        current={"revision": current.revision, "version": current.version},
        candidate={"revision": other.revision, "version": other.version},
        items=len(texts),
        fixed=fixed,
        broken=broken,
        rates=rates,
        heldout=on_file,
    )


def read_heldout(path: str | Path, labels: list[str]) -> list[tuple[str, str]]:
    """(text, label) of each item of a held-out file (JSONL or CSV with text and label, as exemplar
    files are read); InputError, one line naming the item, for a label the policy does not have."""
    from guard.policy.exemplars import read_exemplar_file

    path = Path(path)
    try:
        items = read_exemplar_file(path, None, str(path), f"--heldout {path}")
    except PolicyError as exc:
        raise InputError(str(exc)) from None
    for item in items:
        if item.label not in labels:
            raise InputError(f"{item.origin}: label '{item.label}' is not one of: {', '.join(labels)}")
    return [(item.text, item.label) for item in items]


def _compare(name: str, texts: list[str], truth: list[str], old_set, new_set, flagged: set[str]):
    """(fixed, broken, rates of both versions) of the two GuardSets on these texts."""
    old = [r[name].label for r in old_set.check_batch(texts)] if texts else []
    new = [r[name].label for r in new_set.check_batch(texts)] if texts else []
    fixed, broken = [], []
    for text, want, was, now in zip(texts, truth, old, new):
        record = {"text": text, "label": want, "current": was, "candidate": now}
        if was != want and now == want:
            fixed.append(record)
        elif was == want and now != want:
            broken.append(record)
    return fixed, broken, {"current": _rates(truth, old, flagged), "candidate": _rates(truth, new, flagged)}


def _rates(truth: list[str], predicted: list[str], flagged: set[str]) -> dict:
    harmful = [p for t, p in zip(truth, predicted) if t in flagged]
    allowed = [p for t, p in zip(truth, predicted) if t not in flagged]
    return {
        "recall": share(sum(p in flagged for p in harmful), len(harmful)),
        "fpr": share(sum(p in flagged for p in allowed), len(allowed)),
        "accuracy": share(sum(t == p for t, p in zip(truth, predicted)), len(truth)),
    }
