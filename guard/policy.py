"""The policy file: YAML schema, validation with file:line errors, prompt rendering, version hash.

A policy says which model to use, how to phrase the prompt, which labels exist (and which are
flagged), and which labelled exemplars define them. Nothing here imports torch or SQL.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from guard.data import Exemplar, read_exemplar_file
from guard.errors import PolicyError

SCORINGS = ("loo", "in_sample")
DEFAULT_MODEL = "smollm2-135m"
DEFAULT_HEADS = 20


@dataclass(frozen=True)
class Label:
    name: str
    flagged: bool = False
    description: str = ""


@dataclass
class Policy:
    name: str
    model: str
    prompt: str
    labels: list[Label]
    exemplars: list[Exemplar]
    heads: int = DEFAULT_HEADS
    scoring: str = "loo"
    description: str = ""
    source_text: str = ""  # the YAML as written, stored with the artifact
    path: Path | None = None
    base_dir: Path = field(default_factory=Path.cwd)  # relative model and data paths start here

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    @property
    def flagged_labels(self) -> list[str]:
        return [label.name for label in self.labels if label.flagged]

    @property
    def prompt_fields(self) -> set[str]:
        return {name for _, name, _, _ in string.Formatter().parse(self.prompt) if name}

    def render(self, values: dict[str, str]) -> str:
        """Fill the prompt template; `values` must hold every {field} the template names."""
        return self.prompt.format_map(values)

    @property
    def version(self) -> str:
        """Content hash of everything that changes the compiled result (not comments or order of keys)."""
        canonical = {
            "name": self.name,
            "model": self.model,
            "prompt": self.prompt,
            "labels": [[lab.name, lab.flagged] for lab in self.labels],
            "heads": self.heads,
            "scoring": self.scoring,
            "exemplars": [[e.text, e.label, list(e.images), sorted(e.fields.items())] for e in self.exemplars],
        }
        blob = json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# --- YAML with line numbers -------------------------------------------------------------------


class _Map(dict):
    """A mapping that remembers the line of itself and of each key."""

    line: int
    key_lines: dict


class _Seq(list):
    line: int
    item_lines: list


def _build(node, loader, display):
    if isinstance(node, yaml.MappingNode):
        result = _Map()
        result.line, result.key_lines = node.start_mark.line + 1, {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in result:
                raise PolicyError(f"{display}:{key_node.start_mark.line + 1}: duplicate key '{key}'")
            result[key] = _build(value_node, loader, display)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        result = _Seq(_build(item, loader, display) for item in node.value)
        result.line = node.start_mark.line + 1
        result.item_lines = [item.start_mark.line + 1 for item in node.value]
        return result
    return loader.construct_object(node, deep=True)


def _parse_yaml(text: str, display: str):
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise PolicyError(f"{display}:1: the policy file is empty")
        return _build(node, loader, display)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise PolicyError(f"{display}:{line}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{display}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()


# --- validation -------------------------------------------------------------------------------

_TOP_KEYS = {"name", "description", "model", "prompt", "labels", "exemplars", "heads", "scoring"}
_LABEL_KEYS = {"name", "description", "flagged"}
_INLINE_KEYS = {"text", "label"}
_SOURCE_KEYS = {"from", "format"}


class _Checker:
    def __init__(self, display: str):
        self.display = display

    def fail(self, line: int, message: str):
        raise PolicyError(f"{self.display}:{line}: {message}")

    def mapping(self, value, line: int, what: str) -> _Map:
        if not isinstance(value, _Map):
            self.fail(getattr(value, "line", line), f"{what} must be a mapping")
        return value

    def known_keys(self, mapping: _Map, allowed: set[str], what: str):
        for key in mapping:
            if key not in allowed:
                self.fail(mapping.key_lines[key], f"unknown key '{key}' in {what} (allowed: {', '.join(sorted(allowed))})")

    def string(self, mapping: _Map, key: str, required: bool = True, default: str = "") -> str:
        if key not in mapping:
            if required:
                self.fail(mapping.line, f"missing required key '{key}'")
            return default
        value = mapping[key]
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) or str(value).strip() == "":
            self.fail(mapping.key_lines[key], f"'{key}' must be a non-empty string")
        return str(value)


def parse_policy(text: str, display: str = "<policy>", base_dir: Path | None = None) -> Policy:
    """Validate policy YAML text; file references resolve against `base_dir`."""
    base_dir = base_dir or Path.cwd()
    check = _Checker(display)
    doc = check.mapping(_parse_yaml(text, display), 1, "the policy")
    check.known_keys(doc, _TOP_KEYS, "the policy")

    name = check.string(doc, "name")
    model = check.string(doc, "model", required=False, default=DEFAULT_MODEL)
    prompt = check.string(doc, "prompt")
    description = check.string(doc, "description", required=False)
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(prompt) if name is not None}
    except ValueError as exc:
        check.fail(doc.key_lines["prompt"], f"prompt template is invalid ({exc}); write literal braces as {{{{ }}}}")
    if any(not f.isidentifier() for f in fields):
        check.fail(doc.key_lines["prompt"], "prompt placeholders must be plain names like {text}")

    labels = _parse_labels(doc, check)
    label_names = [label.name for label in labels]

    heads = doc.get("heads", DEFAULT_HEADS)
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        check.fail(doc.key_lines.get("heads", doc.line), "'heads' must be a positive integer (the number of heads that vote)")
    scoring = doc.get("scoring", "loo")
    if scoring not in SCORINGS:
        check.fail(doc.key_lines.get("scoring", doc.line), f"'scoring' must be one of: {', '.join(SCORINGS)}")

    exemplars = _parse_exemplars(doc, check, base_dir)
    for ex in exemplars:
        if ex.label not in label_names:
            raise PolicyError(f"{ex.origin}: label '{ex.label}' is not one of: {', '.join(label_names)}")
        missing = fields - set(ex.prompt_fields())
        if missing:
            raise PolicyError(f"{ex.origin}: no value for prompt field {', '.join('{' + m + '}' for m in sorted(missing))}")
    counts = {n: sum(ex.label == n for ex in exemplars) for n in label_names}
    for label in labels:
        need = 2 if scoring == "loo" else 1
        if counts[label.name] < need:
            line = doc.key_lines["labels"]
            extra = " (leave-one-out scoring needs at least 2)" if need == 2 and counts[label.name] == 1 else ""
            check.fail(line, f"label '{label.name}' has {counts[label.name]} exemplar(s){extra}")

    return Policy(
        name=name,
        model=model,
        prompt=prompt,
        labels=labels,
        exemplars=exemplars,
        heads=heads,
        scoring=scoring,
        description=description,
        source_text=text,
        base_dir=base_dir,
    )


def _parse_labels(doc: _Map, check: _Checker) -> list[Label]:
    if "labels" not in doc:
        check.fail(doc.line, "missing required key 'labels'")
    raw = doc["labels"]
    if not isinstance(raw, _Seq):
        check.fail(doc.key_lines["labels"], "'labels' must be a list of {name, flagged, description}")
    labels: list[Label] = []
    for item, line in zip(raw, raw.item_lines):
        if isinstance(item, str):  # shorthand: "- benign"
            item = _Map(name=item)
            item.line, item.key_lines = line, {"name": line}
        item = check.mapping(item, line, "a label")
        check.known_keys(item, _LABEL_KEYS, "a label")
        name = check.string(item, "name")
        flagged = item.get("flagged", False)
        if not isinstance(flagged, bool):
            check.fail(item.key_lines["flagged"], "'flagged' must be true or false")
        if name in [lab.name for lab in labels]:
            check.fail(item.key_lines["name"], f"label '{name}' is defined twice")
        labels.append(Label(name=name, flagged=flagged, description=check.string(item, "description", required=False)))
    if len(labels) < 2:
        check.fail(doc.key_lines["labels"], f"a policy needs at least 2 labels, got {len(labels)}")
    return labels


def _parse_exemplars(doc: _Map, check: _Checker, base_dir: Path) -> list[Exemplar]:
    if "exemplars" not in doc:
        check.fail(doc.line, "missing required key 'exemplars'")
    raw = doc["exemplars"]
    if not isinstance(raw, _Seq):
        check.fail(doc.key_lines["exemplars"], "'exemplars' must be a list of {text, label} items or {from: FILE} entries")
    exemplars: list[Exemplar] = []
    for item, line in zip(raw, raw.item_lines):
        item = check.mapping(item, line, "an exemplar")
        where = f"{check.display}:{item.line}"
        if "from" in item:
            check.known_keys(item, _SOURCE_KEYS, "an exemplar source")
            rel = check.string(item, "from")
            fmt = item.get("format")
            exemplars.extend(read_exemplar_file(base_dir / rel, fmt, rel, where))
        else:
            check.known_keys(item, _INLINE_KEYS, "an inline exemplar (or use 'from: FILE')")
            text, label = check.string(item, "text"), check.string(item, "label")
            exemplars.append(Exemplar(text=text, label=label, origin=where))
    return exemplars


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; exemplar files are resolved relative to it."""
    path = Path(path)
    display = str(path)
    if not path.exists():
        raise PolicyError(f"{display}: policy file does not exist")
    if path.is_dir():
        raise PolicyError(f"{display}: is a directory, not a policy file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{display}: policy file is not UTF-8 text") from None
    policy = parse_policy(text, display, base_dir=path.resolve().parent)
    policy.path = path
    return policy
