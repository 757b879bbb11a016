"""Verdicts into response JSON: guard's own shape and OpenAI's moderation result.

guard's shape is the one `guard check --json` prints for one input: `{"flagged": any policy
flagged, "verdicts": {policy: Verdict.to_dict()}}`. The OpenAI result carries it whole under the
`guard` key, which OpenAI clients ignore.
"""

from __future__ import annotations

from collections.abc import Mapping

from guard.runtime import Verdict


def check_result(verdicts: Mapping[str, Verdict], explanations: Mapping[str, dict] | None = None) -> dict:
    """`{"flagged", "verdicts": {name: verdict dict (+ "explanation")}}` for one input."""
    out = {}
    for name, verdict in verdicts.items():
        record = verdict.to_dict()
        if explanations is not None and name in explanations:
            record["explanation"] = explanations[name]
        out[name] = record
    return {"flagged": any(v.flagged for v in verdicts.values()), "verdicts": out}


def category_key(policy: str, label: str, single: bool) -> str:
    """A category's name: the label for one policy, `policy/label` for several (labels may repeat)."""
    return label if single else f"{policy}/{label}"


def moderation_result(
    verdicts: Mapping[str, Verdict], flagged_labels: Mapping[str, list[str]], input_types: list[str], single: bool
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
        "flagged": any(v.flagged for v in verdicts.values()),
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied,
        "guard": check_result(verdicts),
    }
