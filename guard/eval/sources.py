"""Evaluation by source: items grouped by a field, leave-one-source-out folds, per-group rates, errors.

A group is where an item came from: by default its record's `source` field, else its file (the
`from:` file of an exemplar, the policy file for inline exemplars, the test file for test items);
any other record field may be named instead. `guard eval --leave-one-source-out` holds each group
of exemplars out whole, fits the policy on the others exactly as compile does (`guard.compiler.fit`,
calibration included) and judges the held-out group as `guard check` would. Head outputs of every
exemplar come from `guard.models.features.features` once; each fold re-fits from them in memory, and the
embedding baseline (`--baseline embed`) re-fits on the same folds from embeddings computed once.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from guard.check.engine import PolicyHeads, Verdict
from guard.check.windows import window_verdicts
from guard.compiler import fit, render_exemplars
from guard.errors import GuardError
from guard.eval import baselines, metrics
from guard.method import sav
from guard.models import LoadedModel, load_model
from guard.models.features import features
from guard.policy import Policy, load_policy
from guard.policy.exemplars import Exemplar
from guard.store.database import Store

DEFAULT_GROUP_BY = "source"  # the record's `source` field, else its file
NO_GROUP = "(none)"  # items without the named field
METHOD_NAMES = {"sav": "SAV", "embed": "embedding + LR"}


# --- groups ---------------------------------------------------------------------------------------


def source_files(policy: Policy) -> list[str]:
    """The `from:` files of the policy's exemplar sources, as written in its YAML."""
    try:
        doc = yaml.safe_load(policy.source_text) if policy.source_text else None
    except yaml.YAMLError:
        return []
    entries = doc.get("exemplars") if isinstance(doc, dict) else None
    return [str(e["from"]) for e in entries or [] if isinstance(e, dict) and "from" in e]


def origin_file(origin: str, files: Sequence[str] = ()) -> str:
    """The file an item's origin ("file:line", "file[index]", a folder's image path) names."""
    for name in sorted(files, key=len, reverse=True):
        if origin == name or origin.startswith((f"{name}:", f"{name}[", f"{name}/")):
            return name
    found = re.match(r"(.+?)(?::\d+|\[\d+\])", origin)
    return found.group(1) if found else origin


def item_group(item: Exemplar, group_by: str, file: str) -> str:
    """The item's group: `source` (its record's source field, else `file`), `file`, `label`, or
    the value of any other record field (NO_GROUP when it has none)."""
    if group_by == "file":
        return file
    if group_by == "label":
        return item.label
    if group_by == "source":
        return item.fields.get("source") or file
    return item.fields.get(group_by) or NO_GROUP


def exemplar_groups(policy: Policy, group_by: str) -> list[str]:
    """Each exemplar's group; an inline exemplar's file is the policy file (by name)."""
    files = source_files(policy)
    inline = policy.path.name if policy.path else policy.name

    def file_of(ex: Exemplar) -> str:
        found = origin_file(ex.origin, files)
        return found if found in files else inline

    return [item_group(ex, group_by, file_of(ex)) for ex in policy.exemplars]


def item_groups(items: Sequence[Exemplar], group_by: str, file: str | Path) -> list[str]:
    """Groups of a labelled file's items; the file's own group is its name."""
    return [item_group(item, group_by, Path(file).name) for item in items]


def check_group_by(items: Sequence[Exemplar], group_by: str) -> None:
    """Refuse a field that no item has (a typo would put everything in one group)."""
    if group_by in ("source", "file", "label") or any(group_by in item.fields for item in items):
        return
    known = sorted({name for item in items for name in item.fields})
    have = f"the records' fields: {', '.join(known)}" if known else "the records have no fields beyond text and label"
    raise GuardError(f"--group-by {group_by}: no item has a '{group_by}' field (source, file, label, or {have})")


# --- rates per group ------------------------------------------------------------------------------


def share(k: int, n: int) -> dict | None:
    """A proportion with its 95% Wilson interval (None when there is nothing to count)."""
    if not n:
        return None
    low, high = metrics.wilson(k, n)
    return {"k": k, "n": n, "value": round(k / n, 6), "low": round(low, 6), "high": round(high, 6)}


@dataclass
class Rates:
    """One method on one group: accuracy (exact label); recall = items of a flagged label that
    were flagged (as any flagged label); FPR = items of an allowed label that were flagged."""

    n: int = 0
    correct: int = 0
    flagged_items: int = 0
    caught: int = 0
    allowed_items: int = 0
    false_positives: int = 0

    def add(self, truth: int, pred: int, flagged: set[int]) -> None:
        self.n += 1
        self.correct += truth == pred
        if truth in flagged:
            self.flagged_items += 1
            self.caught += pred in flagged
        else:
            self.allowed_items += 1
            self.false_positives += pred in flagged

    def __add__(self, other: Rates) -> Rates:
        return Rates(*(a + b for a, b in zip(self.__dict__.values(), other.__dict__.values())))

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "accuracy": share(self.correct, self.n),
            "recall": share(self.caught, self.flagged_items),
            "fpr": share(self.false_positives, self.allowed_items),
        }


@dataclass
class Breakdown:
    """Per-group rates of each method on one split: `file` (a labelled file, fitted on all
    exemplars) or `loso` (each group of exemplars held out of its own fit)."""

    group_by: str
    split: str
    rows: dict[str, dict[str, Rates]]  # group -> method -> rates
    methods: list[str]
    skipped: dict[str, str] = field(default_factory=dict)  # loso groups not evaluated, and why

    @property
    def pooled(self) -> dict[str, Rates]:
        return {m: sum((row[m] for row in self.rows.values()), Rates()) for m in self.methods}

    def to_dict(self) -> dict:
        return {
            "group_by": self.group_by,
            "split": self.split,
            "methods": {m: METHOD_NAMES[m] for m in self.methods},
            "groups": [{"group": g, **{m: row[m].to_dict() for m in self.methods}} for g, row in self.rows.items()],
            "pooled": {m: r.to_dict() for m, r in self.pooled.items()},
            "skipped": [{"group": g, "why": why} for g, why in self.skipped.items()],
        }


def tally(groups: Sequence[str], truth: Sequence[int], preds: dict[str, Sequence[int]], flagged: set[int]):
    """group -> method -> Rates, groups in first-seen order."""
    rows: dict[str, dict[str, Rates]] = {}
    for i, group in enumerate(groups):
        row = rows.setdefault(group, {m: Rates() for m in preds})
        for method, pred in preds.items():
            row[method].add(int(truth[i]), int(pred[i]), flagged)
    return rows


def error_record(
    item: Exemplar, group: str, verdict: Verdict, embed_label: str | None = None, names: Sequence[str] = ()
) -> dict:
    """One misjudged item for `--errors`: what it is, what SAV said and why (scores, votes);
    `names`: the prompt's fields, shown for an item without a {text}."""
    v = verdict.to_dict(votes=True)
    out = {"text": item.shown_text(names), "origin": item.origin, "group": group, "label": item.label}
    out.update(predicted=verdict.label, flagged=verdict.flagged, scores=v["scores"], calibrated=v["calibrated"])
    out.update(margin=v["margin"], uncertain=v["uncertain"], votes=v["votes"])
    if item.images:
        out["images"] = list(item.images)
    if verdict.window is not None:  # a windowed policy: the part of the text the verdict is about
        out["window"] = verdict.window
    if embed_label is not None:
        out["embed_predicted"] = embed_label
    return out


def errors_of(items, groups, truth, verdicts, names, embed_pred=None, fields: Sequence[str] = ()) -> list[dict]:
    """Error records of the items SAV misjudged (`verdicts` in item order)."""
    return [
        error_record(item, groups[i], verdicts[i], None if embed_pred is None else names[int(embed_pred[i])], fields)
        for i, item in enumerate(items)
        if names.index(verdicts[i].label) != truth[i]
    ]


def write_errors(path: str | Path, errors: Sequence[dict]) -> None:
    Path(path).write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors), encoding="utf-8")


# --- the embedding baseline -----------------------------------------------------------------------


def embed_items(
    spec: str | None, items: Sequence[Exemplar], progress: bool = False, fields: Sequence[str] = ()
) -> torch.Tensor | None:
    """Sentence embeddings of the items' texts for `--baseline SPEC` (None without a baseline);
    `fields`: the prompt's fields, embedded for an item without a {text} (Exemplar.shown_text)."""
    if spec is None:
        return None
    model_dir = baselines.embed_model_dir(spec)
    if any(item.images for item in items):
        raise GuardError("--baseline embed reads text only; this policy or its data has images")
    return baselines.embed_texts(model_dir, [item.shown_text(fields) for item in items], progress=progress)


# --- leave one source out -------------------------------------------------------------------------


def loso_folds(groups: Sequence[str]) -> list[tuple[str, list[int], list[int]]]:
    """(group, indices fitted, indices held out) for each group, in first-seen order."""
    order = list(dict.fromkeys(groups))
    return [
        (g, [i for i, x in enumerate(groups) if x != g], [i for i, x in enumerate(groups) if x == g]) for g in order
    ]


def fold_problem(policy: Policy, labels: torch.Tensor) -> str | None:
    """Why the exemplars left after holding out a group cannot be fitted (None: they can)."""
    need = 2 if policy.scoring == "loo" else 1
    counts = torch.bincount(labels, minlength=len(policy.labels)).tolist()
    short = [f"'{name}' ({n})" for name, n in zip(policy.label_names, counts) if n < need]
    if short:
        return f"without it, too few exemplars remain of {', '.join(short)} (the fit needs {need} per label)"
    return None


def fit_fold(policy: Policy, acts: torch.Tensor, train: Sequence[int], loaded: LoadedModel):
    """The policy fitted as compile fits it, on the exemplars at `train` only."""
    sub = replace(policy, exemplars=[policy.exemplars[i] for i in train])
    return fit(sub, acts[list(train)], loaded)


def windowed(policy, artifact, pairs, verdicts, loaded, store, batch_size: int = 8):
    """The verdicts of (Exemplar, images) `pairs` as a windowed policy's check gives them
    (guard.check.windows.window_verdicts), from their whole texts' `verdicts`; windows go through
    the activation cache. Unchanged for a policy without windows."""
    judge = PolicyHeads(artifact)

    def run(wanted):
        rendered = [
            loaded.prepare(policy.render({**pairs[i][0].prompt_fields(), "text": text}), pairs[i][1])
            for i, text in wanted
        ]
        acts = features(loaded, rendered, store=store, batch_size=batch_size).z
        return judge.verdicts(sav.at_heads(acts, artifact.heads))

    return window_verdicts(artifact, [item.text for item, _ in pairs], verdicts, run, loaded.token_spans)


@dataclass
class FoldOutput:
    held_out: list[int]  # exemplar indices
    verdicts: list[Verdict]
    embed_pred: list[int] | None


def run_folds(
    policy, acts, groups, loaded, embeddings=None, progress=False, store=None
) -> tuple[list[FoldOutput], dict]:
    """Each group held out of a fit on the others: SAV verdicts (and the baseline's predictions)
    for its exemplars; groups that cannot be held out are returned with the reason."""
    y = torch.tensor([policy.label_names.index(ex.label) for ex in policy.exemplars])
    outputs, skipped = [], {}
    folds = loso_folds(groups)
    for group, train, test in tqdm(folds, desc="folds", unit="fold", disable=not progress, leave=False):
        problem = fold_problem(policy, y[train])
        if problem:
            skipped[group] = problem
            continue
        art = fit_fold(policy, acts, train, loaded)
        verdicts = PolicyHeads(art).verdicts(sav.at_heads(acts[test], art.heads))
        if policy.window is not None:  # each held-out exemplar judged whole and by its windows
            pairs = [(policy.exemplars[i], policy.exemplars[i].load_images()) for i in test]
            verdicts = windowed(policy, art, pairs, verdicts, loaded, store)
        embed_pred = None
        if embeddings is not None:
            embed_pred = baselines.logistic_regression(embeddings[train], y[train], embeddings[test])[0].tolist()
        outputs.append(FoldOutput(test, verdicts, embed_pred))
    return outputs, skipped


@dataclass
class SourceEvaluation:
    """`guard eval --leave-one-source-out`: per held-out group, SAV (and the baseline) fitted without it."""

    policy: str
    version: str
    model: str
    exemplars: int
    breakdown: Breakdown
    errors: list[dict]
    forwards: int = 0
    cached: int = 0
    baseline: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "version": self.version,
            "model": self.model,
            "split": "loso",
            "exemplars": self.exemplars,
            "forwards": {"run": self.forwards, "cached": self.cached},
            "baseline": self.baseline,
            "by_group": self.breakdown.to_dict(),
            "errors": self.errors,
            "notes": self.notes,
            "seconds": round(self.seconds, 2),
        }


def leave_one_source_out(
    policy: Policy | str | Path,
    *,
    group_by: str = DEFAULT_GROUP_BY,
    db: str | None = None,
    store: Store | None = None,
    loaded: LoadedModel | None = None,
    device: str = "auto",
    dtype: str | None = None,
    batch_size: int = 8,
    baseline: str | None = None,
    progress: bool = False,
) -> SourceEvaluation:
    """Hold each group of the policy's exemplars out of a fit on the others and judge it."""
    started = time.perf_counter()
    policy = policy if isinstance(policy, Policy) else load_policy(policy)
    check_group_by(policy.exemplars, group_by)
    groups = exemplar_groups(policy, group_by)
    if len(set(groups)) < 2:
        raise GuardError(
            f"leave-one-source-out needs exemplars from two or more groups; all of '{policy.name}' "
            f"are in '{groups[0]}' (--group-by another field, e.g. one its records carry)"
        )
    # before the model: a missing extra fails fast
    embeddings = embed_items(baseline, policy.exemplars, progress, policy.field_order)
    store = store or Store.open(db, create=True)
    loaded = loaded or load_model(policy.model, policy.base_dir, device=device, dtype=dtype)
    rendered = render_exemplars(policy, loaded)
    feats = features(loaded, rendered, store=store, batch_size=batch_size, progress="exemplars" if progress else None)
    outputs, skipped = run_folds(policy, feats.z, groups, loaded, embeddings, progress, store)
    if not outputs:
        raise GuardError("leave-one-source-out: no group can be held out (" + "; ".join(skipped.values()) + ")")
    breakdown, errors = _loso_breakdown(policy, groups, outputs, group_by, baseline is not None)
    breakdown.skipped = skipped
    return SourceEvaluation(
        policy=policy.name,
        version=policy.version,
        model=loaded.source.reference,
        exemplars=len(policy.exemplars),
        breakdown=breakdown,
        errors=errors,
        forwards=feats.computed,
        cached=feats.cached,
        baseline=baseline,
        notes=[*policy.notes, *duplicate_notes(groups, rendered)],
        seconds=time.perf_counter() - started,
    )


def _loso_breakdown(policy, groups, outputs: list[FoldOutput], group_by, with_embed) -> tuple[Breakdown, list[dict]]:
    names, flagged = policy.label_names, {i for i, lab in enumerate(policy.labels) if lab.flagged}
    idx = [i for out in outputs for i in out.held_out]
    verdicts = [v for out in outputs for v in out.verdicts]
    truth = [names.index(policy.exemplars[i].label) for i in idx]
    preds = {"sav": [names.index(v.label) for v in verdicts]}
    if with_embed:
        preds["embed"] = [p for out in outputs for p in out.embed_pred]
    held = [groups[i] for i in idx]
    rows = tally(held, truth, preds, flagged)
    items = [policy.exemplars[i] for i in idx]
    errors = errors_of(items, held, truth, verdicts, names, preds.get("embed"), policy.field_order)
    return Breakdown(group_by, "loso", rows, list(preds)), errors


def duplicate_notes(groups: Sequence[str], rendered: Sequence) -> list[str]:
    """A note per group whose exemplars also appear, as the same model input, in another group
    (those items are not truly held out)."""
    from guard.models.features import cache_key

    keys = [cache_key(r) for r in rendered]
    where: dict[str, set[str]] = {}
    for key, group in zip(keys, groups):
        where.setdefault(key, set()).add(group)
    shared: dict[str, int] = {}
    for key, group in zip(keys, groups):
        if len(where[key]) > 1:
            shared[group] = shared.get(group, 0) + 1
    return [
        f"{g}: {n} exemplar(s) also appear in another group, so the fit without {g} still sees them"
        for g, n in shared.items()
    ]
