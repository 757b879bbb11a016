"""Policies: the schema, reading YAML with line numbers, validation, path confinement, exemplar readers."""

from guard.policy.exemplars import Exemplar, read_exemplar_file, readers
from guard.policy.loading import load_policy, parse_policy, policy_warnings, validate_items
from guard.policy.paths import ALLOW_PATHS_ENV, DATA_ROOT_ENV, allowed_roots, confined, is_inside
from guard.policy.schema import (
    AGGREGATES,
    CLASSIFIERS,
    DEFAULT_HEADS,
    DEFAULT_MODEL,
    ESCAPES,
    SCORINGS,
    TARGET_METRICS,
    VOTES,
    Label,
    Policy,
    Scoring,
    escape_value,
    fill_prompt,
    template_fields,
)
from guard.policy.yaml_lines import MAX_POLICY_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES

__all__ = [
    "AGGREGATES",
    "ALLOW_PATHS_ENV",
    "CLASSIFIERS",
    "DATA_ROOT_ENV",
    "DEFAULT_HEADS",
    "DEFAULT_MODEL",
    "ESCAPES",
    "MAX_POLICY_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "SCORINGS",
    "TARGET_METRICS",
    "VOTES",
    "Exemplar",
    "Label",
    "Policy",
    "Scoring",
    "allowed_roots",
    "confined",
    "escape_value",
    "fill_prompt",
    "is_inside",
    "load_policy",
    "parse_policy",
    "policy_warnings",
    "read_exemplar_file",
    "readers",
    "template_fields",
    "validate_items",
]
