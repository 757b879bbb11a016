"""Verdicts into response JSON: guard's own shape and OpenAI's moderation result.

guard's shape is `CheckResult.to_dict()`, what `guard check --json` prints for one input:
`{"flagged": any policy flagged, "verdicts": {policy: Verdict.to_dict()}}`. The OpenAI result
carries it whole under the `guard` key, which OpenAI clients ignore.
"""

from __future__ import annotations

from collections.abc import Mapping

from guard.check.engine import CheckResult


def category_key(policy: str, label: str, single: bool) -> str:
    """A category's name: the label for one policy, `policy/label` for several (labels may repeat)."""
    return label if single else f"{policy}/{label}"


def moderation_result(
    verdicts: CheckResult, flagged_labels: Mapping[str, list[str]], input_types: list[str], single: bool
) -> dict:
    """One entry of an OpenAI `results` list.

    `flagged_labels`: each policy's labels marked `flagged: true`. Categories are those labels: true when the verdict flags that label. A score
    is the label's calibrated probability where the policy is calibrated, else its vote share.
    """
    categories: dict[str, bool] = {}
    scores: dict[str, float] = {}
    applied: dict[str, list[str]] = {}
    for name, verdict in verdicts.items():
        probabilities = verdict.calibrated or verdict.scores
        for label in flagged_labels[name]:
            key = category_key(name, label, single)
            categories[key] = verdict.flagged and verdict.label == label
            scores[key] = round(float(probabilities.get(label, 0.0)), 6)
            applied[key] = list(input_types)
    return {
        "flagged": verdicts.flagged,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied,
        "guard": verdicts.to_dict(),
    }
