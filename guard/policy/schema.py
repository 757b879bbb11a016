"""The policy: its labels and settings, the prompt template and how values fill it, its version hash.

A policy says which model to use, how to phrase the prompt, which labels exist (and which are
flagged), and which labelled exemplars define them. Nothing here imports torch or SQL.
"""

from __future__ import annotations

import hashlib
import html
import json
import string
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal, get_args

from guard.models.images import file_hash
from guard.policy.exemplars import Exemplar

Scoring = Literal["loo", "in_sample"]  # head scoring: leave-one-out (default) or in-sample (the paper)
SCORINGS: tuple[str, ...] = get_args(Scoring)
VOTES = ("count", "margin")  # the rules of guard.method.sav.label_values
CLASSIFIERS = ("centroid", "probe")  # guard.method.sav.BANKS
AGGREGATES = ("any", "mean", "max")  # guard.check.windows.Aggregate
WINDOW_UNITS = ("sentences", "tokens")  # guard.check.windows.UNITS
ESCAPES = ("none", "xml")
DEFAULT_MODEL = "smollm2-135m"
DEFAULT_HEADS = 20


TARGET_METRICS = ("recall", "fpr")

# OpenAI's moderation categories (its /v1/moderations `categories`), for a label's `openai_category`:
# guard's moderation responses fill `categories.<name>` and `category_scores.<name>` from the label.
OPENAI_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


def escape_value(value: str, escape: str) -> str:
    """A field value as the prompt shows it. `xml` escapes &, < and >, so user text can neither
    close the prompt's <tag> block around it nor spell the chat template's <|special|> tokens."""
    if escape == "xml":
        return html.escape(value, quote=False)
    return value


def fill_prompt(template: str, values: dict, escape: str = "none") -> str:
    """The prompt template filled with `values`, each escaped as the policy says."""
    return template.format_map({key: escape_value(str(value), escape) for key, value in values.items()})


def template_fields(template: str, keep_empty: bool = False) -> set[str]:
    """The {field} names a prompt template uses (raises ValueError on unbalanced braces);
    `keep_empty` keeps a bare "{}" as "" so validation can refuse it."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name or (keep_empty and name == "")}


@dataclass(frozen=True)
class Label:
    name: str
    flagged: bool = False
    description: str = ""
    answer: str = ""  # the word the model would answer for this label (zero-shot baseline)
    target: tuple[str, float] | None = None  # flagged labels: ("recall", 0.95) or ("fpr", 0.05)
    openai_category: str | None = None  # flagged labels: the OpenAI moderation category it answers for

    def stored(self) -> dict:
        """What a compiled artifact keeps of the label (the store's JSON column, the ONNX manifest);
        `openai_category` only when set, so older readers see the shape they know."""
        row = {"name": self.name, "flagged": self.flagged, "description": self.description}
        if self.openai_category:
            row["openai_category"] = self.openai_category
        return row


@dataclass
class Policy:
    name: str
    model: str
    prompt: str
    labels: list[Label]
    exemplars: list[Exemplar]
    heads: int = DEFAULT_HEADS
    scoring: Scoring = "loo"
    description: str = ""
    uncertain_margin: float = 0.0  # verdicts whose vote margin is below this are marked uncertain
    escape: str = "none"  # how field values are escaped into the prompt (escape_value)
    max_layer: int | None = None  # no selected head deeper than this layer (numbered from 0)
    prototypes: int = 1  # per label and head: 1 = the centroid (the paper), more = k-means prototypes
    vote: str = "count"  # count: majority of heads (the paper); margin: mean similarity margin
    classifier: str = "centroid"  # what the heads compare with: centroids/prototypes, or "probe" (guard.method.sav)
    window: int | None = None  # also check runs of this many sentences (or tokens) of {text} (guard.check.windows)
    stride: int = 1  # a window starts every `stride` units
    window_unit: str = "sentences"  # what `window` and `stride` count: sentences or tokens
    aggregate: str = "any"  # windows' verdicts -> one: flagged when the whole text or any window is
    judge: str = "last_user"  # which turns of a conversation get a verdict (guard.policy.conversation)
    context_turns: int = 0  # how many turns before the judged one fill {context}
    source_text: str = ""  # the YAML as written, stored with the artifact
    path: Path | None = None
    base_dir: Path = field(default_factory=Path.cwd)  # relative model paths start here
    data_root: Path | None = None  # exemplar files and images are read from here (default: base_dir)
    notes: list[str] = field(default_factory=list)  # what the readers skipped and sampled

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    @property
    def flagged_labels(self) -> list[str]:
        return [label.name for label in self.labels if label.flagged]

    @property
    def answer_words(self) -> list[str]:
        """Each label's answer word: its `answer`, else Yes (flagged) / No (not flagged) when the
        policy has one label of each, else the label's name."""
        binary = len(self.labels) == 2 and len(self.flagged_labels) == 1
        return [label.answer or (("Yes" if label.flagged else "No") if binary else label.name) for label in self.labels]

    @property
    def targets(self) -> dict[int, tuple[str, float]]:
        """Label index -> (metric, value) for flagged labels with a threshold target."""
        return {i: label.target for i, label in enumerate(self.labels) if label.target is not None}

    @property
    def prompt_fields(self) -> set[str]:
        return template_fields(self.prompt)

    @property
    def field_order(self) -> list[str]:
        """The prompt's {field} names in the order the template first uses them."""
        return list(dict.fromkeys(name for _, name, _, _ in string.Formatter().parse(self.prompt) if name))

    def render(self, values: dict[str, str]) -> str:
        """Fill the prompt template; `values` must hold every {field} the template names."""
        return fill_prompt(self.prompt, values, self.escape)

    @property
    def method(self) -> dict:
        """The classifier settings beyond the paper's, only those set (absent: the paper's, and
        what policies before 0.2 had); the compiled artifact keeps them (Artifact.method)."""
        method: dict = {}
        if self.escape != "none":
            method["escape"] = self.escape
        if self.max_layer is not None:
            method["max_layer"] = self.max_layer
        if self.prototypes != 1:
            method["prototypes"] = self.prototypes
        if self.vote != "count":
            method["vote"] = self.vote
        if self.classifier != "centroid":
            method["classifier"] = self.classifier
        if self.window is not None:
            method.update(window=self.window, stride=self.stride, aggregate=self.aggregate)
            if self.window_unit != "sentences":  # absent for sentences: policies before token windows
                method["window_unit"] = self.window_unit
        if self.judge != "last_user":
            method["judge"] = self.judge
        if self.context_turns:
            method["context_turns"] = self.context_turns
        return method

    @cached_property
    def version(self) -> str:
        """Content hash of everything that changes the compiled result (not comments or order of
        keys; images count by their content, not their paths)."""
        canonical = {
            "name": self.name,
            "model": self.model,
            "prompt": self.prompt,
            "labels": [[lab.name, lab.flagged] for lab in self.labels],
            "heads": self.heads,
            "scoring": self.scoring,
            "exemplars": [
                [e.text, e.label, [file_hash(p) for p in e.image_paths()], sorted(e.fields.items())]
                for e in self.exemplars
            ],
        }
        # Added after 0.1; present only when set, so older policies keep their version.
        if self.targets:
            canonical["targets"] = {self.labels[i].name: list(t) for i, t in self.targets.items()}
        if self.uncertain_margin:
            canonical["uncertain_margin"] = self.uncertain_margin
        weights = {str(i): e.weight for i, e in enumerate(self.exemplars) if e.weight != 1}
        if weights:  # exemplar weights (0.3): absent when every exemplar counts once
            canonical["exemplar_weights"] = weights
        categories = {lab.name: lab.openai_category for lab in self.labels if lab.openai_category}
        if categories:  # stored with the artifact: a new mapping is a new compile
            canonical["openai_categories"] = categories
        canonical.update(self.method)
        blob = json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:12]
