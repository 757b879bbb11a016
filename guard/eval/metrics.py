"""Classification metrics from true and predicted label indices (scikit-learn's, `guard-sav[eval]`).

Conventions (stated once, used everywhere):
- the confusion matrix is `matrix[true][predicted]`, counts;
- precision, recall and F1 of a label with no predicted (or no true) items are 0.0, never NaN,
  and macro-F1 is the plain mean of the per-label F1 over every label of the policy;
- the false-positive rate of label c is one-vs-rest: the share of items whose true label is not
  c that were predicted c (for a harmful/benign policy: benign items flagged harmful).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


def confusion_matrix(true: Sequence[int], pred: Sequence[int], num_labels: int) -> list[list[int]]:
    if len(true) != len(pred):
        raise ValueError(f"{len(true)} true labels but {len(pred)} predictions")
    if not true:
        return [[0] * num_labels for _ in range(num_labels)]
    from sklearn.metrics import confusion_matrix as sk_confusion

    return sk_confusion(list(true), list(pred), labels=list(range(num_labels))).tolist()


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


@dataclass
class LabelMetrics:
    precision: float
    recall: float
    f1: float
    support: int  # items whose true label is this one
    predicted: int  # items predicted as this label
    fpr: float  # one-vs-rest false-positive rate

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class Report:
    labels: list[str]
    items: int
    accuracy: float
    macro_f1: float
    per_label: dict[str, LabelMetrics]
    confusion: list[list[int]]  # [true][predicted]
    flagged: list[str] = field(default_factory=list)

    @property
    def fpr(self) -> dict[str, float]:
        """False-positive rate of each flagged label."""
        return {name: self.per_label[name].fpr for name in self.flagged}

    def to_dict(self) -> dict:
        return {
            "items": self.items,
            "accuracy": round(self.accuracy, 6),
            "macro_f1": round(self.macro_f1, 6),
            "per_label": {name: m.to_dict() for name, m in self.per_label.items()},
            "confusion": {"labels": self.labels, "matrix": self.confusion, "rows": "true", "columns": "predicted"},
            "fpr": {name: round(v, 6) for name, v in self.fpr.items()},
        }


def report(true: Sequence[int], pred: Sequence[int], labels: Sequence[str], flagged: Sequence[str] = ()) -> Report:
    """All metrics at once; `labels[i]` names index i, `flagged` lists the labels whose FPR matters."""
    true, pred = [int(t) for t in true], [int(p) for p in pred]
    n, num_labels = len(true), len(labels)
    matrix = confusion_matrix(true, pred, num_labels)
    per_label = {}
    if n:
        from sklearn.metrics import precision_recall_fscore_support

        prf = precision_recall_fscore_support(true, pred, labels=list(range(num_labels)), zero_division=0)
        precision, recall, f1 = (v.tolist() for v in prf[:3])
    else:
        precision = recall = f1 = [0.0] * num_labels
    for c, name in enumerate(labels):
        predicted = sum(matrix[t][c] for t in range(num_labels))
        support = sum(matrix[c])
        fp = predicted - matrix[c][c]  # one-vs-rest FPR: scikit-learn has no direct function for it
        per_label[name] = LabelMetrics(precision[c], recall[c], f1[c], support, predicted, _ratio(fp, n - support))
    correct = sum(matrix[c][c] for c in range(num_labels))
    macro_f1 = sum(m.f1 for m in per_label.values()) / num_labels if num_labels else 0.0
    return Report(list(labels), n, _ratio(correct, n), macro_f1, per_label, matrix, [f for f in flagged if f in labels])


def accuracy(true: Sequence[int], pred: Sequence[int]) -> float:
    return _ratio(sum(int(t) == int(p) for t, p in zip(true, pred)), len(true))


WILSON_Z = 1.959964  # two-sided 95%


def wilson(successes: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default); (0.0, 1.0) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
