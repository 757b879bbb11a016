"""The compiled result of a policy: what `guard check` needs, and what `guard inspect` shows."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from guard.calibration import Calibration
from guard.policy import Label


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

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    @property
    def deepest_layer(self) -> int:
        return max(layer for layer, _ in self.heads)
