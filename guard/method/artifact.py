"""The compiled result of a policy: what `guard check` needs, and what `guard inspect` shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from guard.method.calibration import Calibration
from guard.method.fit import Fit
from guard.policy import Label, template_fields
from guard.policy.conversation import DEFAULT_JUDGE
from guard.policy.conversation import Setting as ConversationSetting


@dataclass
class Artifact:
    name: str
    version: str  # the policy's content hash
    prompt: str
    labels: list[Label]
    model_reference: str  # resolved: absolute path, hub id or bundled alias
    model_fingerprint: str
    model_info: dict
    scoring: str
    heads: list[tuple[int, int]]  # selected (layer, head), best first
    head_accuracy: torch.Tensor  # [layers, heads] score of every head
    head_margin: torch.Tensor  # [layers, heads]
    centroids: torch.Tensor  # [labels, k, head_dim] at the selected heads
    exemplar_vectors: torch.Tensor  # [exemplars, k, head_dim] at the selected heads
    exemplar_texts: list[str]
    exemplar_labels: list[int]
    metrics: dict = field(default_factory=dict)
    description: str = ""
    policy_text: str = ""
    created_at: str = ""
    calibration: Calibration | None = None  # None: compiled before calibration existed
    revision: int = 0  # its number among the stored compiles of this policy (0: not stored)
    dtype: str = ""  # the dtype it was compiled in ("" before guard recorded it)
    device: str = ""  # the device type it was compiled on (cpu, cuda, ...)
    # `prototypes: P` policies: the k-means bank `[labels x P, k, D]` compile computed, stored so a
    # load does not recompute it (None: centroids or probe, whose bank is `centroids`; or an
    # artifact stored before guard kept it, recomputed by `bank`)
    prototype_bank: torch.Tensor | None = None

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    @property
    def method(self) -> dict:
        """The classifier's settings beyond the paper's (policy keys), kept in the metrics."""
        return self.metrics.get("method", {})

    @property
    def vote(self) -> str:
        """count (majority of heads, the paper) or margin (mean similarity margin): guard.method.sav.classify."""
        return self.method.get("vote", "count")

    @property
    def prototypes(self) -> int:
        return self.method.get("prototypes", 1)

    @cached_property
    def bank(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What the selected heads compare an input with: `(bank [M, k, D], bank_labels [M])`.
        The centroids, or the k-means prototypes compile stored; for an artifact stored before
        guard kept them, recomputed from the stored exemplar vectors (the same function of the
        same float32 vectors that compile used)."""
        if self.prototypes == 1:
            return self.centroids, torch.arange(len(self.labels))
        if self.prototype_bank is not None:
            return self.prototype_bank, torch.arange(len(self.labels)).repeat_interleave(self.prototypes)
        return self.recompute_bank()

    def recompute_bank(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The prototype bank from the stored exemplar vectors, as compile computes it."""
        labels = torch.tensor(self.exemplar_labels, dtype=torch.long)
        return Fit(len(self.labels), len(self.heads), prototypes=self.prototypes).bank(self.exemplar_vectors, labels)

    @property
    def window(self) -> tuple[int, int, str] | None:
        """(units per window, stride, unit: "sentences" or "tokens") when the policy checks windows
        of {text} (guard.check.windows)."""
        method = self.method
        if method.get("window") is None:
            return None
        return (method["window"], method.get("stride", 1), method.get("window_unit", "sentences"))

    @cached_property
    def conversation(self) -> ConversationSetting:
        """Which turns of a conversation the policy judges, with how much context (guard.policy.conversation);
        kept: every input a check prepares asks for it."""
        method = self.method
        answers = {"prompt", "response"} <= template_fields(self.prompt)
        return ConversationSetting(method.get("judge", DEFAULT_JUDGE), method.get("context_turns", 0), answers)

    @property
    def aggregate(self) -> str:
        """How its windows' verdicts make one (guard.check.windows.Aggregate): any, mean or max."""
        return self.method.get("aggregate", "any")

    @property
    def escape(self) -> str:
        """How field values are escaped into the prompt (guard.policy.escape_value)."""
        return self.method.get("escape", "none")

    @property
    def deepest_layer(self) -> int:
        return max(layer for layer, _ in self.heads)

    @property
    def flagged_labels(self) -> list[str]:
        return [label.name for label in self.labels if label.flagged]

    def summary(self) -> ArtifactSummary:
        return ArtifactSummary(
            policy=self.name,
            version=self.version,
            labels=self.label_names,
            flagged=self.flagged_labels,
            model=self.model_reference,
            heads=len(self.heads),
            metrics=self.metrics,
            compiled=self.created_at,
            revision=self.revision,
        )

    def to_dict(self) -> dict:
        """Everything `guard inspect --json` shows: the summary, all compile metrics, the selected
        heads (ranks from 1) and the calibration."""
        return {
            **self.summary().to_dict(),
            "metrics": self.metrics,
            "scoring": self.scoring,
            "model_fingerprint": self.model_fingerprint,
            "selected_heads": [
                {
                    "rank": rank,
                    "layer": layer,
                    "head": head,
                    "accuracy": round(float(self.head_accuracy[layer, head]), 6),
                    "margin": round(float(self.head_margin[layer, head]), 6),
                }
                for rank, (layer, head) in enumerate(self.heads, start=1)
            ],
            "calibration": None if self.calibration is None else self.calibration.to_dict(self.label_names),
        }


# What the headline accuracy is, in plain words (compile, list and inspect lead with it), by the
# calibration's estimator (guard.method.calibration): exact leave-one-out, or 10-fold cross-fitting.
HEADLINE = (
    "cross-fitted accuracy ({estimator}): each exemplar classified by a fit made without it, heads "
    "chosen again each time; on sources the exemplars do not cover, see guard eval --leave-one-source-out"
)
ESTIMATORS = {"platt-loo": "leave-one-out", "platt-cv10": "10-fold"}


def estimator(metrics: dict) -> str:
    """How the headline accuracy of the policy these metrics came from was estimated."""
    method = metrics.get("calibration_method")
    if method is None:  # compiled before the name was stored: the variants are cross-fitted in folds
        method = "platt-loo" if set(metrics.get("method", {})) <= {"escape", "max_layer"} else "platt-cv10"
    return ESTIMATORS.get(method, method)


def headline_words(metrics: dict) -> str:
    """The headline accuracy's name and estimator, for the policy these metrics came from."""
    return HEADLINE.format(estimator=estimator(metrics))


@dataclass
class ArtifactSummary:
    """A compiled policy at a glance (`guard list`): read without its vectors."""

    policy: str
    version: str
    labels: list[str]
    flagged: list[str]
    model: str
    heads: int
    metrics: dict
    compiled: str
    revision: int = 0  # among the stored compiles of this policy (0: not stored)

    @property
    def headline_accuracy(self) -> float | None:
        """Leave-one-out accuracy with heads re-selected (None: too few exemplars to compute it)."""
        return self.metrics.get("loo_vote_accuracy")

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "version": self.version,
            "revision": self.revision,
            "labels": self.labels,
            "flagged": self.flagged,
            "model": self.model,
            "heads": self.heads,
            "loo_accuracy": self.headline_accuracy,
            "compiled": self.compiled,
        }
