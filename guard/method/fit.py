"""The one fit: a policy's classifier settings, and fitting them on exemplar activations.

Compile, calibration's cross-fit, eval's sweeps and leave-one-source-out, and the studies in
benchmarks/ all fit through `Fit`, so a setting added to policies changes every one of them at once.
Exemplar weights (a source's `weight:`, reviewed corrections) reach head scoring and the bank alike.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from guard.method import sav


@dataclass(frozen=True)
class Classifier:
    """A fitted classifier: the selected heads and what each compares an input with."""

    heads: list[tuple[int, int]]
    bank: torch.Tensor  # [M, k, D]
    bank_labels: torch.Tensor  # [M]
    num_labels: int
    vote: str

    def similarities(self, acts: torch.Tensor) -> torch.Tensor:
        """Every head's similarity to every label `[N, k, C]`, from all heads' activations `[N, L, H, D]`."""
        return sav.bank_similarities(sav.at_heads(acts, self.heads), self.bank, self.bank_labels, self.num_labels)

    def classify(self, acts: torch.Tensor):
        """(winner `[N]`, per-head votes `[N, k]`, vote counts `[N, C]`, label values `[N, C]`), sav.classify."""
        return sav.classify(self.similarities(acts), self.vote)

    def predict(self, acts: torch.Tensor) -> torch.Tensor:
        """The vote's winner per input (no thresholds): `[N]`."""
        return self.classify(acts)[0]


@dataclass(frozen=True)
class Fit:
    """How a policy's classifier is fitted: `k` heads scored with `scoring` (none deeper than
    `max_layer`), each comparing an input with its label centroids, `prototypes` per label, or the
    probe's vectors (`classifier`), deciding by `vote`."""

    num_labels: int
    k: int
    scoring: str = "loo"
    max_layer: int | None = None
    prototypes: int = 1
    vote: str = "count"
    classifier: str = "centroid"

    @classmethod
    def of(cls, policy) -> Fit:
        return cls(
            num_labels=len(policy.labels),
            k=policy.heads,
            scoring=policy.scoring,
            max_layer=policy.max_layer,
            prototypes=policy.prototypes,
            vote=policy.vote,
            classifier=policy.classifier,
        )

    @classmethod
    def papers(cls, num_labels: int, k: int) -> Fit:
        """The paper's SAV: in-sample head scores, label centroids, majority vote, every layer."""
        return cls(num_labels, k, scoring="in_sample")

    @property
    def exact_leave_one_out(self) -> bool:
        """Whether calibration can use exact leave-one-out votes (guard.method.calibration): centroids
        and the vote count only; other settings are cross-fitted in folds."""
        return self.prototypes == 1 and self.vote == "count" and self.classifier == "centroid"

    def with_heads_only(self) -> Fit:
        """The same fit with one bank entry per label (what compile stores; prototypes are
        recomputed from the stored exemplar vectors when the artifact loads)."""
        return replace(self, prototypes=1)

    def score_heads(
        self, acts: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
    ) -> sav.HeadScores:
        return sav.score_heads(acts, labels, self.num_labels, self.scoring, weights)

    def select(self, scores: sav.HeadScores) -> list[tuple[int, int]]:
        return sav.select_heads(scores, self.k, self.max_layer)

    def bank(
        self, selected: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(bank [M, k, D], bank_labels [M])` from exemplar vectors at the selected heads `[N, k, D]`."""
        return sav.fit_bank(selected, labels, self.num_labels, self.prototypes, self.classifier, weights)

    def __call__(
        self,
        acts: torch.Tensor,
        labels: torch.Tensor,
        heads: list[tuple[int, int]] | None = None,
        weights: torch.Tensor | None = None,
    ) -> Classifier:
        """The classifier fitted on activations `[N, L, H, D]` with labels `[N]` and optional
        exemplar weights `[N]` (heads chosen as `select` does, or the given ones)."""
        if heads is None:
            heads = self.select(self.score_heads(acts, labels, weights))
        bank, bank_labels = self.bank(sav.at_heads(acts, heads), labels, weights)
        return Classifier(heads, bank, bank_labels, self.num_labels, self.vote)
