"""Verdicts into response JSON: guard's own shape and OpenAI's moderation result.

guard's shape is `CheckResult.to_dict()`, what `guard check --json` prints for one input:
`{"flagged": any policy flagged, "verdicts": {policy: Verdict.to_dict()}}`. The OpenAI result
carries it under the `guard` key, which OpenAI clients ignore: without `explain`, each verdict's
label, scores and calibration only; with it, also every selected head's vote (`votes`) and the
closest exemplars (`explanation`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from guard.check.engine import CheckResult
from guard.policy import Label


def category_key(policy: str, label: str, single: bool) -> str:
    """A category's name: the label for one policy, `policy/label` for several (labels may repeat)."""
    return label if single else f"{policy}/{label}"


def moderation_result(
    verdicts: CheckResult,
    labels: Mapping[str, Sequence[Label]],
    input_types: list[str],
    single: bool,
    explain: bool = False,
) -> dict:
    """One entry of an OpenAI `results` list.

    `labels`: each policy's labels. Every flagged label is a category under guard's name (see
    `category_key`) and, when it names one (`openai_category`), under OpenAI's name too: that
    category is true when a verdict flags a label mapped to it, its score the highest of those
    labels' scores. A score is the label's calibrated probability where the policy is calibrated,
    else its vote share. OpenAI categories no served label maps are absent (the client reads None).
    """
    categories: dict[str, bool] = {}
    scores: dict[str, float] = {}
    applied: dict[str, list[str]] = {}
    for name, verdict in verdicts.items():
        probabilities = verdict.calibrated or verdict.scores
        for label in labels[name]:
            if not label.flagged:
                continue
            flagged = verdict.flagged and verdict.label == label.name
            score = round(float(probabilities.get(label.name, 0.0)), 6)
            keys = [category_key(name, label.name, single)]
            if label.openai_category and label.openai_category not in keys:
                keys.append(label.openai_category)
            for key in keys:
                categories[key] = categories.get(key, False) or flagged
                scores[key] = max(scores.get(key, 0.0), score)
                applied[key] = list(input_types)
    return {
        "flagged": verdicts.flagged,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied,
        "guard": verdicts.to_dict(votes=explain),
    }
