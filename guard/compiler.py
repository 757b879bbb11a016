"""Policy -> artifact: render exemplars, get every head's activations (cache first), fit SAV, store.

One forward per exemplar, ever: activations are cached per (model fingerprint, dtype, rendered
input), so recompiling after adding an exemplar runs the model on that exemplar only. The
artifact replaces the previous one of the same name in a single transaction at the very end, so
a compile that fails or is interrupted leaves the old artifact as it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from guard.method import calibration, sav
from guard.method.artifact import Artifact
from guard.method.fit import Fit
from guard.models import LoadedModel, load_model
from guard.models.features import dtype_name, features
from guard.policy import Policy, load_policy
from guard.store.database import Store


@dataclass
class CompileReport:
    artifact: Artifact
    exemplars: int
    computed: int  # forwards run now
    cached: int  # exemplars whose activations came from the cache
    seconds: float
    warnings: list[str] = field(default_factory=list)  # what compiled but may not do what was meant
    unchanged: bool = False  # the current revision already is this compile: nothing run, nothing added
    candidate: bool = False  # stored without becoming current (guard compile --candidate)

    def to_dict(self) -> dict:
        art = self.artifact
        return {
            **art.summary().to_dict(),
            "exemplars": self.exemplars,
            "computed": self.computed,
            "cached": self.cached,
            "selected_heads": [{"rank": r, "layer": la, "head": h} for r, (la, h) in enumerate(art.heads, start=1)],
            "metrics": art.metrics,
            "seconds": round(self.seconds, 2),
            "unchanged": self.unchanged,
        }


def fit(policy: Policy, acts: torch.Tensor, loaded: LoadedModel) -> Artifact:
    """SAV on exemplar activations: score heads, keep the top k (no deeper than max_layer),
    centroids (and prototypes), calibration and metrics."""
    names = policy.label_names
    labels = torch.tensor([names.index(ex.label) for ex in policy.exemplars])
    weights = exemplar_weights(policy)
    fit = Fit.of(policy)
    scores = fit.score_heads(acts, labels, weights)
    heads = fit.select(scores)
    selected = sav.at_heads(acts, heads)  # [N, k, D]
    # stored where the centroids go (the runtime reads it as a bank); prototypes are stored
    # beside them, so a load does not recompute them (Artifact.bank)
    cents, _ = fit.with_heads_only().bank(selected, labels, weights)
    prototype = fit.prototypes > 1 and fit.classifier == "centroid"
    prototype_bank = fit.bank(selected, labels, weights)[0] if prototype else None
    # Calibrated scores and thresholds come from cross-fitted votes with head selection redone each
    # time (guard.method.calibration); a policy with too few exemplars for that has no calibration.
    cal = None
    if calibration.can_calibrate(labels, len(names), policy.scoring):
        cal = calibration.calibrate(fit, acts, labels, policy.targets, policy.uncertain_margin, weights=weights)
    metrics = {
        "exemplars": len(labels),
        "exemplars_per_label": {n: int((labels == i).sum()) for i, n in enumerate(names)},
        "best_head_accuracy": float(scores.accuracy.max()),
        "selected_head_accuracy_mean": float(torch.stack([scores.accuracy[h] for h in heads]).mean()),
        "method": policy.method,
    }
    if weights is not None:
        metrics["weighted_exemplars"] = int((weights != 1).sum())
    art = Artifact(
        name=policy.name,
        version=policy.version,
        prompt=policy.prompt,
        labels=policy.labels,
        model_reference=loaded.source.reference,
        model_fingerprint=loaded.fingerprint,
        model_info=loaded.info,
        scoring=policy.scoring,
        heads=heads,
        head_accuracy=scores.accuracy,
        head_margin=scores.margin,
        centroids=cents,
        exemplar_vectors=selected,
        prototype_bank=prototype_bank,
        exemplar_texts=[ex.describe() for ex in policy.exemplars],
        exemplar_labels=labels.tolist(),
        metrics=metrics,
        description=policy.description,
        policy_text=policy.source_text,
        calibration=cal,
        dtype=dtype_name(loaded.dtype),
        device=loaded.device.type,
    )
    metrics.update(_accuracies(fit, art, selected, labels, cal))
    return art


def exemplar_weights(policy: Policy) -> torch.Tensor | None:
    """Each exemplar's weight `[N]` (how many times the fit counts it), or None when all are 1."""
    if all(ex.weight == 1 for ex in policy.exemplars):
        return None
    return torch.tensor([ex.weight for ex in policy.exemplars], dtype=torch.float64)


def _accuracies(fit: Fit, art: Artifact, selected: torch.Tensor, labels: torch.Tensor, cal) -> dict:
    """In-sample and cross-fitted accuracies of the compiled classifier, and the calibration's metrics."""
    metrics = {}
    num_labels = fit.num_labels
    bank, bank_labels = art.bank
    in_sample = sav.classify(sav.bank_similarities(selected, bank, bank_labels, num_labels), fit.vote)[0]
    metrics["train_accuracy"] = float((in_sample == labels).float().mean())
    if cal is not None and cal.method == calibration.CROSS_FIT_METHOD:
        metrics["loo_accuracy"] = cal.metrics["loo_vote_accuracy"]  # cross-fitted: the honest one
    elif int(torch.bincount(labels, minlength=num_labels).min()) >= 2:
        # the compile-time estimate of 0.1: heads kept, each item out of its own centroid (optimistic);
        # it needs 2 per label, and an in-sample policy (the paper's) may have 1
        loo = sav.vote(sav.exemplar_similarities(selected, labels, num_labels, "loo").permute(0, 2, 1))[0]
        metrics["loo_accuracy"] = float((loo == labels).float().mean())
    if cal is not None:
        metrics.update(cal.metrics)
        metrics["calibration_method"] = cal.method  # names the headline accuracy's estimator
    return metrics


def compile_policy(
    policy: Policy | str | Path,
    db: str | None = None,
    *,
    store: Store | None = None,
    loaded: LoadedModel | None = None,
    device: str = "auto",
    dtype: str | None = None,
    batch_size: int = 8,
    progress: bool = False,
    keep: int | None = None,
    force: bool = False,
    candidate: bool = False,
) -> CompileReport:
    """Compile a policy (object or YAML path) into the database as its next revision and return
    what was done; `keep` N deletes all but the newest N revisions afterwards. A policy whose
    current revision already is this compile (`unchanged`) adds nothing, unless `force`. A
    `candidate` is stored without becoming current (`guard promote` makes it so)."""
    started = time.perf_counter()
    if not isinstance(policy, Policy):
        policy = load_policy(policy)
    # the model first: a model that cannot load must not leave a new, empty database behind
    loaded = loaded or load_model(policy.model, policy.base_dir, device=device, dtype=dtype)
    store = store or Store.open(db, create=True)
    try:
        if not force and is_unchanged(policy, loaded, store):
            if keep is not None:
                store.prune(policy.name, keep)
            return CompileReport(
                artifact=store.load_artifact(policy.name),
                exemplars=len(policy.exemplars),
                computed=0,
                cached=0,
                seconds=time.perf_counter() - started,
                warnings=compile_warnings(policy, loaded),
                unchanged=True,
            )
        rendered = render_exemplars(policy, loaded)
        found = features(
            loaded, rendered, store=store, batch_size=batch_size, progress="exemplars" if progress else None
        )
        artifact = fit(policy, found.z, loaded)
        store.save_artifact(artifact, keep=keep, current=not candidate)
    except BaseException:
        store.discard_if_unused()
        raise
    return CompileReport(
        artifact=artifact,
        exemplars=len(rendered),
        computed=found.computed,
        cached=found.cached,
        seconds=time.perf_counter() - started,
        warnings=compile_warnings(policy, loaded),
        candidate=candidate,
    )


def is_unchanged(policy: Policy, loaded: LoadedModel, store: Store) -> bool:
    """Whether compiling would repeat the current revision: the same policy content (its version
    hash: comments, key order and descriptions do not count), on the same weights (the model's
    fingerprint, not its name) in the same dtype."""
    current = store.current_compile(policy.name)
    return current == (policy.version, loaded.fingerprint, dtype_name(loaded.dtype))


def render_exemplars(policy: Policy, loaded: LoadedModel) -> list:
    """Each exemplar as the model input compile runs (and the activation cache keys): the policy's
    prompt filled with its fields, with its images."""
    return [loaded.prepare(policy.render(ex.prompt_fields()), ex.load_images()) for ex in policy.exemplars]


def compile_warnings(policy: Policy, loaded: LoadedModel) -> list[str]:
    total = loaded.layout.num_layers * loaded.layout.num_heads
    if policy.heads > total:
        return [f"warning: 'heads: {policy.heads}' is more than the model has ({total}); all {total} heads vote"]
    return []
