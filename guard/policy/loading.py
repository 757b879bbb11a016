"""Reading a policy file: validation with file:line errors, exemplar sources, warnings.

A policy says which model to use, how to phrase the prompt, which labels exist (and which are
flagged), and which labelled exemplars define them. Nothing here imports torch or SQL.

Exemplar files and images are found under the policy's *data root*: the policy file's folder,
or, when the policy says `data_root: DIR`, that folder; a relative DIR starts at the folder
given by `--data-root` / `GUARD_DATA_ROOT` (where your datasets live) or else at the policy's
folder. So `data_root: VLGuard` with `GUARD_DATA_ROOT=~/datasets` reads `~/datasets/VLGuard`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from guard.errors import InputError, PolicyError
from guard.limits import LIMITS, read_regular_file
from guard.policy.conversation import JUDGES, MAX_TURNS, NO_CONTEXT, exemplar_fields
from guard.policy.conversation import Setting as ConversationSetting
from guard.policy.exemplars import MAX_WEIGHT, Exemplar, read_exemplar_file, readers
from guard.policy.paths import DATA_ROOT_ENV, allowed_roots, confined
from guard.policy.schema import (
    AGGREGATES,
    CLASSIFIERS,
    DEFAULT_HEADS,
    DEFAULT_MODEL,
    ESCAPES,
    OPENAI_CATEGORIES,
    SCORINGS,
    TARGET_METRICS,
    VOTES,
    WINDOW_UNITS,
    Label,
    Policy,
    template_fields,
)
from guard.policy.shipped import is_bare_name, shipped_names, shipped_policy
from guard.policy.yaml_lines import MAX_POLICY_BYTES, _Map, _Seq, parse_yaml

_TOP_KEYS = {
    "name",
    "description",
    "model",
    "prompt",
    "labels",
    "exemplars",
    "heads",
    "scoring",
    "data_root",
    "uncertain_margin",
    "escape",
    "max_layer",
    "prototypes",
    "vote",
    "classifier",
    "window",
    "stride",
    "window_unit",
    "aggregate",
    "judge",
    "context_turns",
}
_LABEL_KEYS = {"name", "description", "flagged", "answer", "target", "openai_category"}
_INLINE_KEYS = {"text", "label", "image", "images", "messages", "context", "weight"}
_SOURCE_KEYS = {"from", "format", "shots", "seed", "images", "text", "task_type", "weight"}


class _Checker:
    def __init__(self, display: str):
        self.display = display
        self.roots: list[Path] = []  # folders exemplar files may come from (resolved)

    def fail(self, line: int, message: str):
        raise PolicyError(f"{self.display}:{line}: {message}")

    def mapping(self, value, line: int, what: str) -> _Map:
        if not isinstance(value, _Map):
            self.fail(getattr(value, "line", line), f"{what} must be a mapping")
        return value

    def known_keys(self, mapping: _Map, allowed: set[str], what: str):
        for key in mapping:
            if key not in allowed:
                self.fail(
                    mapping.key_lines[key], f"unknown key '{key}' in {what} (allowed: {', '.join(sorted(allowed))})"
                )

    def string(self, mapping: _Map, key: str, required: bool = True, default: str = "") -> str:
        if key not in mapping:
            if required:
                self.fail(mapping.line, f"missing required key '{key}'")
            return default
        value = mapping[key]
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) or str(value).strip() == "":
            self.fail(mapping.key_lines[key], f"'{key}' must be a non-empty string")
        return str(value)


def validate_items(items: list[Exemplar], label_names: list[str], fields: set[str]) -> None:
    """Each item's label is one of the policy's and it has a value for every prompt field;
    errors name the item's origin ("file:line")."""
    for item in items:
        if item.label not in label_names:
            raise PolicyError(f"{item.origin}: label '{item.label}' is not one of: {', '.join(label_names)}")
        missing = fields - set(item.prompt_fields())
        if missing:
            raise PolicyError(
                f"{item.origin}: no value for prompt field {', '.join('{' + m + '}' for m in sorted(missing))}"
            )


def policy_warnings(labels: list[Label], exemplars: list[Exemplar], fields: set[str], display: str) -> list[str]:
    """What compiles but probably does not do what was meant, one line each."""
    warnings = []
    if not any(label.flagged for label in labels):
        warnings.append(f"{display}: warning: no label is flagged, so no input will ever be flagged")
    seen: dict[tuple, Exemplar] = {}
    for ex in exemplars:
        values = ex.prompt_fields()
        key = (tuple(sorted((f, values.get(f)) for f in fields)), ex.images)
        first = seen.setdefault(key, ex)
        if first.label != ex.label:
            warnings.append(
                f"{ex.origin}: warning: the same exemplar as {first.origin} under another label "
                f"('{ex.label}' vs '{first.label}'); the model sees identical inputs"
            )
    return warnings


def parse_policy(
    text: str,
    display: str = "<policy>",
    base_dir: Path | None = None,
    data_root: str | Path | None = None,
    allow_paths: Sequence[str | Path] = (),
) -> Policy:
    """Validate policy YAML text; the model path resolves against `base_dir`, exemplar files and
    images against the data root (see the module docstring; `data_root` is --data-root)."""
    base_dir = base_dir or Path.cwd()
    check = _Checker(display)
    doc = check.mapping(parse_yaml(text, display), 1, "the policy")
    check.known_keys(doc, _TOP_KEYS, "the policy")
    root = _data_root(doc, check, base_dir, data_root)
    check.roots = allowed_roots(base_dir, root, allow_paths)

    name = check.string(doc, "name")
    model = check.string(doc, "model", required=False, default=DEFAULT_MODEL)
    prompt = check.string(doc, "prompt")
    description = check.string(doc, "description", required=False)
    fields = _prompt_fields(doc, check, prompt)
    labels = _parse_labels(doc, check)
    settings = _parse_settings(doc, check, labels)
    settings.update(_parse_windows(doc, check, fields))
    settings.update(_parse_conversation(doc, check, fields))

    notes: list[str] = []
    conversation = ConversationSetting(settings["judge"], settings["context_turns"], {"prompt", "response"} <= fields)
    exemplars = conversation_exemplars(_parse_exemplars(doc, check, root, notes), conversation)
    validate_items(exemplars, [label.name for label in labels], fields)
    if not fields and not any(ex.images for ex in exemplars):
        check.fail(
            doc.key_lines["prompt"],
            "the prompt has no {text} (or other {field}) and no exemplar has images: every input would "
            "give the model the same prompt, and so the same verdict",
        )
    notes.extend(policy_warnings(labels, exemplars, fields, display))
    _check_counts(doc, check, labels, exemplars, settings["scoring"], notes)
    return Policy(
        name=name,
        model=model,
        prompt=prompt,
        labels=labels,
        exemplars=exemplars,
        description=description,
        source_text=text,
        base_dir=base_dir,
        data_root=root,
        notes=notes,
        **settings,
    )


def _prompt_fields(doc: _Map, check: _Checker, prompt: str) -> set[str]:
    try:
        fields = template_fields(prompt, keep_empty=True)
    except ValueError as exc:
        check.fail(doc.key_lines["prompt"], f"prompt template is invalid ({exc}); write literal braces as {{{{ }}}}")
    if any(not f.isidentifier() for f in fields):
        check.fail(doc.key_lines["prompt"], "prompt placeholders must be plain names like {text}")
    return fields


def _choice(doc: _Map, check: _Checker, key: str, default: str, choices, why: str = ""):
    """The value of `key` (`default` when absent), refused with its line unless one of `choices`."""
    value = doc.get(key, default)
    if value not in choices:
        check.fail(
            doc.key_lines.get(key, doc.line),
            f"'{key}' must be one of: {', '.join(choices)}" + (f" ({why})" if why else ""),
        )
    return value


def _whole(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _parse_settings(doc: _Map, check: _Checker, labels: list[Label]) -> dict:
    """The classifier's keys (heads, scoring, max_layer, prototypes, vote, classifier, escape,
    uncertain_margin), checked, as Policy's keyword arguments."""
    line = doc.key_lines.get
    heads = doc.get("heads", DEFAULT_HEADS)
    if not _whole(heads, 1):
        check.fail(line("heads", doc.line), "'heads' must be a positive integer (the number of heads that vote)")
    scoring = _choice(doc, check, "scoring", "loo", SCORINGS)
    max_layer = doc.get("max_layer")
    if max_layer is not None and not _whole(max_layer, 0):
        check.fail(
            line("max_layer"),
            "'max_layer' must be a whole number >= 0 (the deepest layer a selected head may be in, from 0)",
        )
    prototypes = doc.get("prototypes", 1)
    if not _whole(prototypes, 1):
        check.fail(
            line("prototypes"), "'prototypes' must be a whole number >= 1 (per label and head; 1 is the centroid)"
        )
    vote = _choice(doc, check, "vote", "count", VOTES, "count: majority of heads; margin: mean similarity margin")
    why = "probe: a logistic regression over the heads"
    classifier = _choice(doc, check, "classifier", "centroid", CLASSIFIERS, why)
    if classifier == "probe" and (len(labels) != 2 or prototypes != 1 or vote != "margin"):
        check.fail(
            line("classifier"),
            "'classifier: probe' needs two labels, 'vote: margin' and no 'prototypes' (it is one pair per head)",
        )
    why = "xml: user text cannot close the prompt's <tag> block"
    escape = _choice(doc, check, "escape", "none", ESCAPES, why)
    uncertain_margin = doc.get("uncertain_margin", 0.0)
    if not _is_number(uncertain_margin) or not 0 <= uncertain_margin <= 1:
        check.fail(
            line("uncertain_margin", doc.line),
            "'uncertain_margin' must be a number from 0 to 1 (a share of the heads' votes)",
        )
    return {
        "heads": heads,
        "scoring": scoring,
        "max_layer": max_layer,
        "prototypes": prototypes,
        "vote": vote,
        "classifier": classifier,
        "escape": escape,
        "uncertain_margin": float(uncertain_margin),
    }


def _parse_windows(doc: _Map, check: _Checker, fields: set[str]) -> dict:
    """The window keys (window, window_unit, stride, aggregate; guard.check.windows), checked, as
    Policy's keyword arguments."""
    unit = _choice(doc, check, "window_unit", "sentences", WINDOW_UNITS, "what 'window' and 'stride' count")
    window = doc.get("window")
    if window is not None and not _whole(window, 1):
        check.fail(doc.key_lines["window"], f"'window' must be a whole number >= 1 ({unit} per window)")
    if unit == "tokens" and window is not None and window > LIMITS.max_text_tokens:
        check.fail(
            doc.key_lines["window"],
            f"'window' must be at most {LIMITS.max_text_tokens:,} tokens (GUARD_MAX_TEXT_TOKENS: one check's tokens)",
        )
    for key in ("stride", "aggregate", "window_unit"):
        if key in doc and window is None:
            check.fail(doc.key_lines[key], f"'{key}' needs 'window' (the {unit} per window)")
    stride = doc.get("stride", 1)
    if not _whole(stride, 1):
        check.fail(doc.key_lines["stride"], f"'stride' must be a whole number >= 1 ({unit} between window starts)")
    if unit == "tokens" and window is not None and stride > window:
        check.fail(
            doc.key_lines["stride"],
            f"'stride' must be at most 'window' ({window}): tokens between windows would go unchecked",
        )
    why = "any: flagged when the whole text or any window is; mean, max: of the windows' calibrated probabilities"
    aggregate = _choice(doc, check, "aggregate", "any", AGGREGATES, why)
    if window is not None and "text" not in fields:
        check.fail(doc.key_lines["window"], "'window' splits {text}, and the prompt has no {text}")
    return {"window": window, "stride": stride, "window_unit": unit, "aggregate": aggregate}


def _parse_conversation(doc: _Map, check: _Checker, fields: set[str]) -> dict:
    """The conversation keys (judge, context_turns; guard.policy.conversation), checked, as
    Policy's keyword arguments."""
    judge = _choice(doc, check, "judge", "last_user", JUDGES, "which turns of a conversation get a verdict")
    context_turns = doc.get("context_turns", 0)
    if not _whole(context_turns, 0) or context_turns > MAX_TURNS:
        check.fail(
            doc.key_lines["context_turns"],
            f"'context_turns' must be a whole number from 0 to {MAX_TURNS} (turns before the judged one, in {{context}})",
        )
    if context_turns and "context" not in fields:
        check.fail(doc.key_lines["context_turns"], "'context_turns' fills {context}, and the prompt has no {context}")
    if "context" in fields and not context_turns:
        check.fail(
            doc.key_lines["prompt"],
            "the prompt's {context} needs 'context_turns: N' (how many turns before the judged one it shows)",
        )
    if ("judge" in doc or context_turns) and "text" not in fields and not {"prompt", "response"} <= fields:
        check.fail(
            doc.key_lines.get("judge", doc.line),
            "a conversation's judged turn fills {text} (or {response}, with its request in {prompt}); the prompt has neither",
        )
    return {"judge": judge, "context_turns": context_turns}


def conversation_exemplars(items: list[Exemplar], setting: ConversationSetting) -> list[Exemplar]:
    """Exemplars given as conversations (a `messages` field) as the prompt fields the policy
    renders: the last turn in {text}, the turns before it in {context} (guard.policy.conversation).
    A plain text, given to a policy that shows context, is a conversation of one turn."""
    out = []
    for item in items:
        if "messages" not in item.fields:
            alone = setting.context_turns and "context" not in item.fields and item.text
            out.append(replace(item, fields={**item.fields, "context": NO_CONTEXT}) if alone else item)
            continue
        rest = {k: v for k, v in item.fields.items() if k != "messages"}
        try:
            values = exemplar_fields(item.fields["messages"], setting, item.origin)
        except InputError as exc:
            raise PolicyError(str(exc)) from None
        out.append(replace(item, text=values.pop("text"), fields={**rest, **values}))
    return out


def _check_counts(doc: _Map, check: _Checker, labels: list[Label], exemplars, scoring: str, notes: list[str]) -> None:
    """Enough exemplars per label for the scoring (and a target's thresholds), else a failure that
    says why the data gave so few."""
    counts = {label.name: sum(ex.label == label.name for ex in exemplars) for label in labels}
    for label in labels:
        need = 2 if scoring == "loo" else 1
        if label.target is not None:
            need += 1  # thresholds come from leave-one-out votes, which leave one more out
        if counts[label.name] < need:
            extra = " (leave-one-out scoring needs at least 2)" if need == 2 and counts[label.name] == 1 else ""
            if label.target is not None:
                extra = f" (a 'target' needs at least {need}: thresholds are fitted on leave-one-out votes)"
            skipped = [note for note in notes if ": skipped " in note]
            if skipped:  # say why the data gave so few, or the user is left guessing
                extra += f"; {skipped[0]}" + (f" (and {len(skipped) - 1} more reasons)" if len(skipped) > 1 else "")
            check.fail(doc.key_lines["labels"], f"label '{label.name}' has {counts[label.name]} exemplar(s){extra}")


def _data_root(doc: _Map, check: _Checker, base_dir: Path, override: str | Path | None) -> Path:
    if "data_root" not in doc:
        return base_dir
    declared = Path(check.string(doc, "data_root")).expanduser()
    origin = override or os.environ.get(DATA_ROOT_ENV) or None
    start = Path(origin).expanduser() if origin else base_dir
    root = declared if declared.is_absolute() else start / declared
    if not root.is_dir():
        how = f"--data-root / {DATA_ROOT_ENV} is {origin}" if origin else f"{DATA_ROOT_ENV} is not set"
        check.fail(
            doc.key_lines["data_root"],
            f"data root '{root}' does not exist ({how}); put the dataset there or point "
            f"--data-root or {DATA_ROOT_ENV} at the folder that holds '{declared}'",
        )
    return root.resolve()


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
        answer = check.string(item, "answer", required=False)
        target = _parse_target(item, check, flagged) if "target" in item else None
        category = _parse_openai_category(item, check, flagged) if "openai_category" in item else None
        labels.append(
            Label(
                name=name,
                flagged=flagged,
                description=check.string(item, "description", required=False),
                answer=answer,
                target=target,
                openai_category=category,
            )
        )
    if len(labels) < 2:
        check.fail(doc.key_lines["labels"], f"a policy needs at least 2 labels, got {len(labels)}")
    return labels


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_openai_category(item: _Map, check: _Checker, flagged: bool) -> str:
    line = item.key_lines["openai_category"]
    if not flagged:
        check.fail(line, "'openai_category' is only for flagged labels (OpenAI's categories are what is flagged)")
    category = item["openai_category"]
    if category not in OPENAI_CATEGORIES:
        check.fail(line, f"'openai_category' must be one of OpenAI's categories: {', '.join(OPENAI_CATEGORIES)}")
    return category


def _parse_target(item: _Map, check: _Checker, flagged: bool) -> tuple[str, float]:
    line = item.key_lines["target"]
    if not flagged:
        check.fail(line, "'target' is only for flagged labels (it sets the threshold for flagging)")
    target = item["target"]
    shape = "'target' must be one of {recall: R} or {fpr: F}, e.g. {recall: 0.95}"
    if not isinstance(target, _Map) or len(target) != 1:
        check.fail(line, shape)
    ((metric, value),) = target.items()
    if metric not in TARGET_METRICS:
        check.fail(target.key_lines[metric], shape)
    if not _is_number(value) or not 0 <= value <= 1 or (metric == "recall" and value == 0):
        check.fail(
            target.key_lines[metric],
            f"'{metric}' target must be a number in {'(0, 1]' if metric == 'recall' else '[0, 1]'}",
        )
    return (metric, float(value))


def _parse_exemplars(doc: _Map, check: _Checker, root: Path, notes: list[str]) -> list[Exemplar]:
    if "exemplars" not in doc:
        check.fail(doc.line, "missing required key 'exemplars'")
    raw = doc["exemplars"]
    if not isinstance(raw, _Seq):
        check.fail(
            doc.key_lines["exemplars"], "'exemplars' must be a list of {text, label} items or {from: FILE} entries"
        )
    exemplars: list[Exemplar] = []
    for item, line in zip(raw, raw.item_lines):
        item = check.mapping(item, line, "an exemplar")
        where = f"{check.display}:{item.line}"
        if "from" in item:
            exemplars.extend(_read_source(item, check, root, where, notes))
        else:
            check.known_keys(item, _INLINE_KEYS, "an inline exemplar (or use 'from: FILE')")
            images = _image_list(item, check, root)
            text = check.string(item, "text", required=not images and "messages" not in item)
            label = check.string(item, "label")
            fields = {"context": check.string(item, "context")} if "context" in item else {}
            if "messages" in item:  # a conversation, rendered with the policy's keys (conversation_exemplars)
                fields["messages"] = json.dumps(item["messages"], ensure_ascii=False)
            weight = _weight(item, check)
            exemplars.append(
                Exemplar(
                    text=text, label=label, origin=where, images=images, root=root, fields=fields, weight=weight or 1.0
                )
            )
    return exemplars


def _read_source(item: _Map, check: _Checker, root: Path, where: str, notes: list[str]) -> list[Exemplar]:
    check.known_keys(item, _SOURCE_KEYS, "an exemplar source")
    rel = check.string(item, "from")
    fmt = check.string(item, "format", required=False) or None
    options: dict = {"root": root, "notes": notes}
    for key in ("shots", "seed"):
        if key in item:
            value = item[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "shots" else 0):
                what = "a positive integer (exemplars per label)" if key == "shots" else "a non-negative integer"
                check.fail(item.key_lines[key], f"'{key}' must be {what}")
            options[key] = value
    if "seed" in item and "shots" not in item:
        check.fail(item.key_lines["seed"], "'seed' chooses which exemplars 'shots' samples; add 'shots: N'")
    options["weight"] = _weight(item, check)
    if "images" in item:
        options["images"] = root / check.string(item, "images")
    known = readers()
    for key, flag, option in (("text", "takes_text", "text"), ("task_type", "takes_task", "task")):
        if key in item:
            if fmt not in known or not getattr(known[fmt], flag):
                formats = " | ".join(sorted(name for name, reader in known.items() if getattr(reader, flag)))
                check.fail(item.key_lines[key], f"'{key}' applies to 'format: {formats}' sources only")
            options[option] = check.string(item, key)
    path = confined(root, rel, check.roots, lambda why: check.fail(item.key_lines["from"], why))
    if "images" in options:
        options["images"] = confined(
            root, check.string(item, "images"), check.roots, lambda why: check.fail(item.key_lines["images"], why)
        )
    if fmt in known and known[fmt].folder and "images" in item:
        check.fail(
            item.key_lines["images"], f"'images' is for data files; 'format: {fmt}' reads images from its folder"
        )
    return read_exemplar_file(path, fmt, rel, where, **options)


def _weight(item: _Map, check: _Checker) -> float | None:
    """An exemplar's or a source's `weight:` (how many times the fit counts each item), if given."""
    if "weight" not in item:
        return None
    value = item["weight"]
    if not _is_number(value) or not 0 < value <= MAX_WEIGHT:
        check.fail(item.key_lines["weight"], f"'weight' must be a number above 0 and at most {MAX_WEIGHT:g}")
    return float(value)


def _image_list(item: _Map, check: _Checker, root: Path) -> tuple[str, ...]:
    if "image" in item and "images" in item:
        check.fail(item.key_lines["images"], "give 'image' or 'images', not both")
    key = "image" if "image" in item else "images" if "images" in item else None
    if key is None:
        return ()
    value = item[key]
    values = value if isinstance(value, _Seq) else [value]
    line = item.key_lines[key]
    if not values or not all(isinstance(v, str) and v.strip() for v in values):
        check.fail(line, f"'{key}' must be an image path or a list of image paths")
    for image in values:
        if Path(image).is_absolute() or ".." in Path(image).parts:
            check.fail(line, f"image path '{image}' must be relative to the data root, without '..'")
        confined(root, image, check.roots, lambda why: check.fail(line, why))
        if not (root / image).is_file():
            check.fail(line, f"image '{image}' not found in {root}")
    return tuple(values)


def load_policy(
    path: str | Path, data_root: str | Path | None = None, allow_paths: Sequence[str | Path] = ()
) -> Policy:
    """Read and validate a policy file; exemplar files are resolved relative to it, or to its
    data root (`data_root` is --data-root: where a relative `data_root:` key starts;
    `allow_paths` are further folders that exemplar files may come from, see `allowed_roots`)."""
    path = Path(path)
    display = str(path)
    if not path.exists():
        # a bare name (`text-harm`) is a policy shipped with guard, found as well after `pip install`
        shipped = shipped_policy(display)
        if shipped is None:
            names = shipped_names() if is_bare_name(display) else []
            hint = f" (policies shipped with guard, by name: {', '.join(names)})" if names else ""
            raise PolicyError(f"{display}: policy file does not exist{hint}")
        path, display = shipped, str(shipped)
    if path.is_dir():
        raise PolicyError(f"{display}: is a directory, not a policy file")
    data = read_regular_file(path, MAX_POLICY_BYTES, PolicyError, display)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{display}: policy file is not UTF-8 text") from None
    policy = parse_policy(text, display, base_dir=path.resolve().parent, data_root=data_root, allow_paths=allow_paths)
    policy.path = path
    return policy
