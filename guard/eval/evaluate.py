"""`guard eval`: a policy against a labelled file, SAV next to baselines, and sweeps.

One run, one model, one split. Every input is run through the model at most once:

- without baselines, head outputs come from the activation cache (compile put the exemplars
  there) and only inputs never seen are run, early-exit, and cached;
- with baselines, each input gets one full forward that yields the head outputs (cached inputs
  keep their cached ones), the last hidden state and the answer words' log-probabilities together.

Both go through `guard.models.features.features`, the one way from inputs to features.

SAV is fitted exactly as `guard compile` fits it (`guard.compiler.fit`, calibration included)
and judged with the runtime's own verdict code, so the SAV row is what `guard check` would say.
Sweeps re-fit from the activations in memory: `shots` draws `repeats` random subsets of n
exemplars per label (seeded), `heads` keeps the top k of the full head ranking.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from guard.check.engine import PolicyHeads
from guard.compiler import exemplar_weights, fit
from guard.errors import GuardError, PolicyError
from guard.eval import baselines, metrics
from guard.eval.attacks import attacks_for
from guard.eval.sources import (
    DEFAULT_GROUP_BY,
    Breakdown,
    check_group_by,
    embed_items,
    errors_of,
    item_groups,
    tally,
    windowed,
)
from guard.method import sav
from guard.method.fit import Classifier, Fit
from guard.models import LoadedModel, load_model
from guard.models.features import Features, features
from guard.policy import Policy, load_policy, validate_items
from guard.policy.conversation import Setting as ConversationSetting
from guard.policy.exemplars import Exemplar, read_exemplar_file
from guard.policy.loading import conversation_exemplars
from guard.store.database import Store

METHOD_TITLES = {
    "sav": "SAV",
    "sav_vote": "SAV, no thresholds",  # the policy's vote (count or margin), thresholds not applied
    "sav_paper": "SAV, paper procedure",  # in-sample head scoring, one centroid, plain vote, all layers
    "zero_shot": "zero-shot",  # log-likelihood of each label's answer word
    "linear_probe": "linear probe, all heads",
    "hidden_centroid": "centroid, last hidden",
    "embed": "sentence embedding + LR",  # --baseline embed: outside the model, on the same split
}


@dataclass
class MethodResult:
    key: str
    title: str
    predictions: list[int]
    report: metrics.Report
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"title": self.title, **self.report.to_dict(), **self.extra}


@dataclass
class SweepPoint:
    sweep: str  # "shots" or "heads"
    value: int
    method: str
    accuracies: list[float]  # one per draw

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def to_dict(self) -> dict:
        return {
            self.sweep: self.value,
            "method": self.method,
            "accuracy_mean": round(self.mean, 6),
            "accuracy_std": round(self.std, 6),
            "draws": len(self.accuracies),
        }


@dataclass
class AttackResult:
    name: str
    description: str
    flagged: int  # test items SAV flagged before the attack (the attack's targets)
    flipped: int  # of those, how many the attacked text turned into allowed

    @property
    def rate(self) -> float:
        return self.flipped / self.flagged if self.flagged else 0.0

    def to_dict(self) -> dict:
        return {
            "attack": self.name,
            "description": self.description,
            "flagged": self.flagged,
            "flipped": self.flipped,
            "flip_rate": round(self.rate, 6),
        }


@dataclass
class DepthPoint:
    max_layer: int  # heads allowed up to this layer (numbered from 0)
    deepest: int  # the deepest selected head's layer
    accuracy: float
    recall: dict[str, float]  # per flagged label
    fpr: dict[str, float]
    seconds_per_input: float | None = None  # measured forward time to `deepest` (None: not timed)

    def to_dict(self) -> dict:
        return {
            "max_layer": self.max_layer,
            "deepest_layer": self.deepest,
            "accuracy": round(self.accuracy, 6),
            "recall": {k: round(v, 6) for k, v in self.recall.items()},
            "fpr": {k: round(v, 6) for k, v in self.fpr.items()},
            "seconds_per_input": None if self.seconds_per_input is None else round(self.seconds_per_input, 6),
        }


@dataclass
class Evaluation:
    policy: str
    version: str
    model: str
    test_file: str
    labels: list[str]
    flagged: list[str]
    heads: int  # k
    exemplars: int
    total_items: int
    excluded: list[Exemplar]  # test items that are also exemplars
    methods: dict[str, MethodResult]
    sweeps: list[SweepPoint] = field(default_factory=list)
    depths: list[DepthPoint] = field(default_factory=list)
    attacks: list[AttackResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    forwards: int = 0  # inputs run through the model in this evaluation
    cached: int = 0  # inputs whose head outputs came from the cache
    answers: list[str] = field(default_factory=list)
    fit_metrics: dict = field(default_factory=dict)  # what compile reports for this fit (LOO accuracies...)
    breakdown: Breakdown | None = None  # per group of test items (--group-by)
    errors: list[dict] = field(default_factory=list)  # the test items SAV misjudged (guard.eval.sources.error_record)
    seconds: float = 0.0

    @property
    def evaluated(self) -> int:
        return self.total_items - len(self.excluded)

    @property
    def attack_flip_rate(self) -> float:
        """Flipped verdicts over attacked flagged verdicts, all attacks together."""
        targets = sum(a.flagged for a in self.attacks)
        return sum(a.flipped for a in self.attacks) / targets if targets else 0.0

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "version": self.version,
            "model": self.model,
            "test_file": self.test_file,
            "labels": self.labels,
            "flagged": self.flagged,
            "heads": self.heads,
            "exemplars": self.exemplars,
            "items": {
                "total": self.total_items,
                "evaluated": self.evaluated,
                "excluded": [{"origin": e.origin, "text": e.text, "label": e.label} for e in self.excluded],
            },
            "forwards": {"run": self.forwards, "cached": self.cached},
            "answers": self.answers,
            "fit": self.fit_metrics,
            "methods": {key: m.to_dict() for key, m in self.methods.items()},
            "sweeps": {
                kind: [p.to_dict() for p in self.sweeps if p.sweep == kind]
                for kind in ("shots", "heads")
                if any(p.sweep == kind for p in self.sweeps)
            },
            "depth": [d.to_dict() for d in self.depths],
            "attacks": {
                "results": [a.to_dict() for a in self.attacks],
                "flip_rate": round(self.attack_flip_rate, 6),
            }
            if self.attacks
            else None,
            "by_group": self.breakdown.to_dict() if self.breakdown else None,
            "errors": self.errors,
            "notes": self.notes,
            "seconds": round(self.seconds, 2),
        }


def _normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def item_key(policy: Policy, item: Exemplar, images: Sequence) -> str:
    """What makes two items the same model input: the filled prompt (case and spacing ignored)
    and the images' content (`images`: the item's decoded GuardImages; their hashes, not paths)."""
    return json.dumps([_normalised(policy.render(item.prompt_fields())), [image.sha256 for image in images]])


def read_test_items(
    policy: Policy,
    path: str | Path,
    fmt: str | None = None,
    images: str | Path | None = None,
    text: str | None = None,
    notes: list[str] | None = None,
    task: str | None = None,
) -> list[Exemplar]:
    """A labelled file (or folder) in any exemplar format, checked against the policy's labels
    and prompt. Image paths in it start at its folder, or at `images`; `text` is the folder
    format's text; `task` keeps MHaluBench items of that task_type."""
    display = str(path)
    if not Path(path).exists():
        raise PolicyError(f"{display}: test data does not exist")
    items = read_exemplar_file(
        Path(path), fmt, display, display, images=Path(images) if images else None, text=text, task=task, notes=notes
    )
    if not items:
        raise PolicyError(f"{display}: no labelled items")
    # a `messages` line is a conversation, its last turn judged (as in exemplars)
    items = conversation_exemplars(items, ConversationSetting(policy.judge, policy.context_turns))
    validate_items(items, policy.label_names, policy.prompt_fields)
    return items


def parse_int_list(text: str | None, what: str, minimum: int = 1) -> list[int]:
    """'5,10,20' -> [5, 10, 20]; whole numbers from `minimum` (positive by default)."""
    if not text:
        return []
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise GuardError(f"{what} must be comma-separated whole numbers, like 5,10,20 (got '{text}')") from None
    if not values or any(v < minimum for v in values):
        kind = "positive whole numbers" if minimum == 1 else f"whole numbers >= {minimum}"
        raise GuardError(f"{what} must be {kind} (got '{text}')")
    return sorted(set(values))


# --- the evaluation ------------------------------------------------------------------------------


def evaluate(
    policy: Policy | str | Path,
    test_file: str | Path,
    *,
    db: str | None = None,
    store: Store | None = None,
    loaded: LoadedModel | None = None,
    device: str = "auto",
    dtype: str | None = None,
    batch_size: int = 8,
    fmt: str | None = None,
    images: str | Path | None = None,
    text: str | None = None,
    task: str | None = None,
    with_baselines: bool = False,
    shots: Sequence[int] = (),
    heads: Sequence[int] = (),
    repeats: int = 5,
    seed: int = 0,
    max_layers: Sequence[int] = (),
    attacks: bool = False,
    group_by: str | None = None,
    baseline: str | None = None,
    progress: bool = False,
) -> Evaluation:
    """`group_by`: also rates per group of test items (guard.eval.sources); `baseline`: "embed"
    or "embed:DIR", a sentence-embedding + logistic-regression row fitted on the exemplars."""
    # long: the signature is guard eval's options (25 lines); the body is one pass, items to an Evaluation
    started = time.perf_counter()
    if not isinstance(policy, Policy):
        policy = load_policy(policy)
    notes: list[str] = []
    items = read_test_items(policy, test_file, fmt, images, text, notes, task=task)
    if group_by:
        check_group_by(items, group_by)
    pairs, tests, excluded = _exemplars_then_tests(policy, items, test_file)
    embeddings = embed_items(baseline, [item for item, _ in pairs], progress, policy.field_order)

    store = store or Store.open(db, create=True)
    loaded = loaded or load_model(policy.model, policy.base_dir, device=device, dtype=dtype)
    names = policy.label_names
    answers = policy.answer_words
    n_ex = len(policy.exemplars)
    rendered, feats = _features_of(policy, pairs, loaded, store, batch_size, progress, with_baselines)
    ex_acts, test_acts = feats.z[:n_ex], feats.z[n_ex:]
    y = torch.tensor([names.index(ex.label) for ex in policy.exemplars])
    truth = [names.index(item.label) for item in tests]

    artifact = fit(policy, ex_acts, loaded)
    verdicts = PolicyHeads(artifact).verdicts(sav.at_heads(test_acts, artifact.heads))  # as guard check decides
    verdicts = windowed(policy, artifact, pairs[n_ex:], verdicts, loaded, store, batch_size)
    methods = _methods(policy, artifact, verdicts, feats, y, truth, answers, with_baselines)
    if embeddings is not None:
        methods["embed"] = _embed_row(policy, embeddings, y, truth)
    ev = Evaluation(
        policy=policy.name,
        version=policy.version,
        model=loaded.source.reference,
        test_file=str(test_file),
        labels=names,
        flagged=policy.flagged_labels,
        heads=len(artifact.heads),
        exemplars=n_ex,
        total_items=len(items),
        excluded=excluded,
        methods=methods,
        forwards=feats.computed,
        cached=feats.cached,
        answers=answers if with_baselines else [],
        fit_metrics=artifact.metrics,
        notes=notes,
    )
    _by_group(ev, policy, tests, truth, verdicts, group_by, test_file)
    if shots:
        _shots_sweep(ev, policy, feats, y, truth, shots, repeats, seed, with_baselines)
    if heads:
        _heads_sweep(ev, policy, ex_acts, y, test_acts, truth, heads)
    if max_layers:
        _depth_sweep(ev, policy, ex_acts, test_acts, truth, loaded, rendered[n_ex:], max_layers, batch_size)
    if attacks:
        targets = [pair for pair, v in zip(pairs[n_ex:], verdicts) if v.flagged]
        ev.attacks = attack_flips(policy, artifact, targets, loaded, store, batch_size, progress)
    ev.seconds = time.perf_counter() - started
    return ev


def _features_of(policy, pairs, loaded, store, batch_size, progress, with_baselines):
    """(rendered model inputs, their features) for (item, images) pairs; with baselines, the
    last hidden state and the answer words' log-probabilities too."""
    answer_ids = baselines.answer_token_ids(loaded, policy.answer_words) if with_baselines else None
    rendered = [loaded.prepare(policy.render(item.prompt_fields()), imgs) for item, imgs in pairs]
    feats = features(
        loaded,
        rendered,
        store=store,
        batch_size=batch_size,
        progress="model inputs" if progress else None,
        hidden=with_baselines,
        answer_ids=answer_ids,
    )
    return rendered, feats


def _embed_row(policy: Policy, embeddings: torch.Tensor, y: torch.Tensor, truth: list[int]) -> MethodResult:
    """The sentence-embedding baseline fitted on the exemplars' embeddings (the first len(y)),
    predicting the test items'."""
    pred = baselines.logistic_regression(embeddings[: len(y)], y, embeddings[len(y) :])[0].tolist()
    report = metrics.report(truth, pred, policy.label_names, policy.flagged_labels)
    return MethodResult("embed", METHOD_TITLES["embed"], pred, report)


def _exemplars_then_tests(policy: Policy, items: list[Exemplar], test_file) -> tuple[list, list, list]:
    """(exemplars then kept test items, each with its decoded images; kept test items; test items
    dropped because they are also exemplars). Each image is read and decoded once."""
    exemplar_images = [ex.load_images() for ex in policy.exemplars]
    item_images = [item.load_images() for item in items]
    exemplar_keys = {item_key(policy, ex, imgs) for ex, imgs in zip(policy.exemplars, exemplar_images)}
    item_keys = [item_key(policy, item, imgs) for item, imgs in zip(items, item_images)]
    kept = [i for i, key in enumerate(item_keys) if key not in exemplar_keys]
    if not kept:
        raise GuardError(f"{test_file}: every item is also an exemplar of '{policy.name}'; nothing left to evaluate")
    excluded = [item for item, key in zip(items, item_keys) if key in exemplar_keys]
    pairs = [*zip(policy.exemplars, exemplar_images), *((items[i], item_images[i]) for i in kept)]
    return pairs, [items[i] for i in kept], excluded


def _by_group(ev: Evaluation, policy: Policy, tests, truth, verdicts, group_by: str | None, test_file) -> None:
    """The errors (each with its group) and, with `group_by`, the rates per group of test items."""
    groups = item_groups(tests, group_by or DEFAULT_GROUP_BY, test_file)
    names = policy.label_names
    embed = ev.methods.get("embed")
    ev.errors = errors_of(
        tests, groups, truth, verdicts, names, embed.predictions if embed else None, policy.field_order
    )
    if group_by:
        preds = {key: ev.methods[key].predictions for key in ("sav", "embed") if key in ev.methods}
        flagged = {i for i, label in enumerate(policy.labels) if label.flagged}
        ev.breakdown = Breakdown(group_by, "file", tally(groups, truth, preds, flagged), list(preds))


def _methods(policy, artifact, verdicts, feats: Features, y, truth, answers, with_baselines) -> dict[str, MethodResult]:
    """SAV as `guard check` decides (and its plain vote when thresholds apply), then the baselines."""
    names, flagged, n_ex = policy.label_names, policy.flagged_labels, len(y)
    ex_acts, test_acts = feats.z[:n_ex], feats.z[n_ex:]

    def result(key: str, pred: Sequence[int], extra: dict | None = None) -> MethodResult:
        title = METHOD_TITLES[key]
        if key == "sav":
            title += f", k={len(artifact.heads)}"
        if key == "zero_shot":
            title += f" {'/'.join(answers)}"
        pred = [int(p) for p in pred]
        return MethodResult(key, title, pred, metrics.report(truth, pred, names, flagged), extra or {})

    quality = _calibration_quality(verdicts, truth, names, flagged)
    methods = {"sav": result("sav", [names.index(v.label) for v in verdicts], quality)}
    if artifact.calibration is not None and artifact.calibration.thresholds:
        bank, bank_labels = artifact.bank
        compiled = Classifier(artifact.heads, bank, bank_labels, len(names), policy.vote)
        methods["sav_vote"] = result("sav_vote", compiled.predict(test_acts).tolist())
    if with_baselines and is_variant(policy):
        paper = Fit.papers(len(names), policy.heads)(ex_acts, y)
        methods["sav_paper"] = result("sav_paper", paper.predict(test_acts).tolist())
    if with_baselines:
        hidden = feats.hidden
        methods["zero_shot"] = result("zero_shot", baselines.zero_shot(feats.answer_logprobs[n_ex:]).tolist())
        methods["linear_probe"] = result("linear_probe", baselines.linear_probe(ex_acts, y, test_acts).tolist())
        methods["hidden_centroid"] = result(
            "hidden_centroid", baselines.nearest_centroid(hidden[:n_ex], y, len(names), hidden[n_ex:]).tolist()
        )
    return methods


def is_variant(policy: Policy) -> bool:
    """Does the policy classify other than the paper does (in-sample scoring, centroids, vote count, all layers)?"""
    return (policy.scoring, policy.prototypes, policy.vote, policy.max_layer) != ("in_sample", 1, "count", None)


def fit_and_predict(
    policy: Policy, ex_acts, y, test_acts, heads: list[tuple[int, int]] | None = None, weights=None
) -> list[int]:
    """Fit the policy's classifier on `ex_acts` (heads chosen as compile does, or `heads`; the
    exemplars' `weights`) and predict `test_acts` with its vote: what the sweeps re-fit."""
    return Fit.of(policy)(ex_acts, y, heads, weights).predict(test_acts).tolist()


RELIABILITY_BINS = 5


def _calibration_quality(verdicts, truth: list[int], names: list[str], flagged: list[str]) -> dict:
    """On the test items: Brier score per label of the calibrated scores and of the raw vote
    shares, and for each flagged label a reliability table (calibrated score in 5 equal bins:
    items, mean score, observed share of the label)."""
    if not verdicts or verdicts[0].calibrated is None:
        return {}
    out: dict = {}
    reliability = {}
    for name in flagged:
        c = names.index(name)
        bins = [[0, 0.0, 0] for _ in range(RELIABILITY_BINS)]
        for v, t in zip(verdicts, truth):
            p = v.calibrated[name]
            b = bins[min(int(p * RELIABILITY_BINS), RELIABILITY_BINS - 1)]
            b[0], b[1], b[2] = b[0] + 1, b[1] + p, b[2] + (t == c)
        reliability[name] = [
            {
                "low": i / RELIABILITY_BINS,
                "high": (i + 1) / RELIABILITY_BINS,
                "items": n,
                "mean_score": round(total / n, 6) if n else None,
                "observed": round(hits / n, 6) if n else None,
            }
            for i, (n, total, hits) in enumerate(bins)
        ]
    from sklearn.metrics import brier_score_loss

    for source in ("calibrated", "scores"):
        out[f"brier_{'calibrated' if source == 'calibrated' else 'vote_share'}"] = {
            name: round(
                float(
                    brier_score_loss(
                        [t == c for t in truth], [getattr(v, source)[name] for v in verdicts], pos_label=True
                    )
                ),
                6,
            )
            for c, name in enumerate(names)
        }
    out["reliability"] = reliability
    out["uncertain"] = sum(v.uncertain for v in verdicts)
    return out


def _shots_sweep(ev, policy, feats: Features, y, truth, shots, repeats, seed, with_baselines) -> None:
    n_ex = len(y)
    ex_acts, test_acts = feats.z[:n_ex], feats.z[n_ex:]
    num_labels = len(policy.labels)
    weights = exemplar_weights(policy)
    members = [(y == c).nonzero().flatten() for c in range(num_labels)]
    fewest = min(len(m) for m in members)
    need = 2 if policy.scoring == "loo" else 1
    generator = torch.Generator().manual_seed(seed)
    for n in shots:
        if n > fewest:
            ev.notes.append(f"shots {n}: skipped, a label has only {fewest} exemplars")
            continue
        if n < need:
            ev.notes.append(f"shots {n}: skipped, {policy.scoring} head scoring needs at least {need} per label")
            continue
        draws = 1 if all(len(m) == n for m in members) else repeats
        found: dict[str, list[float]] = {}
        for _ in range(draws):
            idx = torch.cat([m[torch.randperm(len(m), generator=generator)[:n]] for m in members])
            sub_y = y[idx]
            found.setdefault("sav_vote", []).append(
                metrics.accuracy(
                    truth,
                    fit_and_predict(
                        policy, ex_acts[idx], sub_y, test_acts, weights=None if weights is None else weights[idx]
                    ),
                )
            )
            if with_baselines:
                probe = baselines.linear_probe(ex_acts[idx], sub_y, test_acts)
                found.setdefault("linear_probe", []).append(metrics.accuracy(truth, probe.tolist()))
                near = baselines.nearest_centroid(feats.hidden[idx], sub_y, num_labels, feats.hidden[n_ex:])
                found.setdefault("hidden_centroid", []).append(metrics.accuracy(truth, near.tolist()))
        ev.sweeps.extend(SweepPoint("shots", n, method, accs) for method, accs in found.items())


def _heads_sweep(ev, policy, ex_acts, y, test_acts, truth, heads) -> None:
    num_labels = len(policy.labels)
    weights = exemplar_weights(policy)
    ranking = sav.rank_heads(sav.score_heads(ex_acts, y, num_labels, policy.scoring, weights), policy.max_layer)
    for k in heads:
        if k > len(ranking):
            where = "" if policy.max_layer is None else f" up to layer {policy.max_layer}"
            ev.notes.append(f"heads {k}: skipped, the model has {len(ranking)} heads{where}")
            continue
        pred = fit_and_predict(policy, ex_acts, y, test_acts, ranking[:k], weights)
        ev.sweeps.append(SweepPoint("heads", k, "sav_vote", [metrics.accuracy(truth, pred)]))


DEPTH_TIMING_ITEMS = 32  # test inputs timed at each depth
DEPTH_TIMING_REPEATS = 3  # timed passes per depth; the fastest is reported


def _depth_sweep(ev, policy, ex_acts, test_acts, truth, loaded, rendered, max_layers, batch_size) -> None:
    """Re-fit with heads no deeper than each max_layer (as compile would, calibration included),
    judge as `guard check` would, and time a forward that stops at the deepest selected head."""
    num_layers = ex_acts.shape[1]
    sample = rendered[:DEPTH_TIMING_ITEMS]
    names, flagged = policy.label_names, policy.flagged_labels
    for depth in max_layers:
        if depth >= num_layers:
            ev.notes.append(f"max_layer {depth}: skipped, the model has layers 0-{num_layers - 1}")
            continue
        art = fit(replace(policy, max_layer=depth), ex_acts, loaded)
        verdicts = PolicyHeads(art).verdicts(sav.at_heads(test_acts, art.heads))
        report = metrics.report(truth, [names.index(v.label) for v in verdicts], names, flagged)
        features(loaded, sample[:1], layers=[art.deepest_layer], batch_size=1)  # warm-up
        runs = []
        for _ in range(DEPTH_TIMING_REPEATS):  # the fastest run: the least disturbed by other work
            started = time.perf_counter()
            features(loaded, sample, layers=[art.deepest_layer], batch_size=batch_size)
            runs.append((time.perf_counter() - started) / max(len(sample), 1))
        seconds = min(runs)
        ev.depths.append(
            DepthPoint(
                depth,
                art.deepest_layer,
                report.accuracy,
                {n: report.per_label[n].recall for n in flagged},
                {n: report.per_label[n].fpr for n in flagged},
                seconds,
            )
        )


def attack_flips(policy, artifact, targets, loaded, store, batch_size: int = 8, progress: bool = False):
    """Each attack of `guard.eval.attacks` applied to the text of every flagged item in `targets`
    ((Exemplar, images) pairs): how many verdicts turn to allowed. Head outputs are cached."""
    judge = PolicyHeads(artifact)
    results = []
    for attack in attacks_for(policy.prompt):
        items = [(item, images) for item, images in targets if item.text]
        rendered = [
            loaded.prepare(policy.render({**item.prompt_fields(), "text": attack.apply(item.text)}), images)
            for item, images in items
        ]
        flipped = 0
        if rendered:
            title = f"attack {attack.name}" if progress else None
            acts = features(loaded, rendered, store=store, batch_size=batch_size, progress=title).z
            verdicts = judge.verdicts(sav.at_heads(acts, artifact.heads))
            attacked = [(replace(item, text=attack.apply(item.text)), images) for item, images in items]
            verdicts = windowed(policy, artifact, attacked, verdicts, loaded, store, batch_size)
            flipped = sum(not v.flagged for v in verdicts)
        results.append(AttackResult(attack.name, attack.description, len(items), flipped))
    return results
