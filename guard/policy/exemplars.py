"""Exemplar readers: inline items, files (JSONL, CSV), image folders, benchmark files (VLGuard,
MHaluBench) and the SAV authors' fixed-shot files.

Every reader returns `Exemplar`s that remember where they came from ("file:line", "file[17]" or
an image path), so a bad label or a missing field is reported at its source. Image paths are
relative to the data root (never absolute; a leading "/" is read as the data root's top, see
`relative_image_path`). The benchmark and folder readers skip what they cannot use (a missing
image file, an item without an instruction, an unknown claim label) and say so in
`Source.skipped`; a hand-written file (JSONL, CSV, inline) with a missing image is an error
instead. `shots` / `seed` sample that many exemplars per label from any source, reproducibly.
An exemplar's `weight` (a record's `weight` field, or its source's `weight:`, which wins) is how
many times the fit counts it: `guard review export` gives reviewed corrections one.
Readers know nothing about models.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from guard.errors import PolicyError
from guard.limits import require_regular_file


@dataclass(frozen=True)
class Exemplar:
    """One labelled input: the text that fills the prompt, optional images, extra fields."""

    text: str
    label: str
    origin: str  # "file:line", for error messages
    images: tuple[str, ...] = ()  # paths relative to `root`, as written in the data
    fields: dict[str, str] = field(default_factory=dict)
    root: Path | None = field(default=None, compare=False, repr=False)  # where `images` start
    weight: float = 1.0  # how many times the fit counts it (guard.method.sav)

    def prompt_fields(self) -> dict[str, str]:
        """Values available to the policy's prompt template ({text} and any other column);
        an exemplar without text (images, or other fields only) has no {text}."""
        if not self.text and (self.images or self.fields):
            return dict(self.fields)
        return {**self.fields, "text": self.text}

    def shown_text(self, names: Sequence[str] = ()) -> str:
        """The input as one text, for the embedding baseline and error records: its {text}, or
        for an input of other prompt fields only (a request and its answer), a "name: value"
        line for each of `names` (the prompt's fields, in order) it has."""
        if self.text or not names:
            return self.text
        return "\n".join(f"{name}: {self.fields[name]}" for name in names if name in self.fields)

    def image_paths(self) -> list[Path]:
        root = self.root or Path.cwd()
        return [root / image for image in self.images]

    def load_images(self):
        """The exemplar's images, decoded (guard.models.images.GuardImage); errors name the file."""
        from guard.models.images import load_image

        return [load_image(path, name=image) for path, image in zip(self.image_paths(), self.images)]

    def describe(self) -> str:
        """Text plus image names, for listings and explanations."""
        if not self.images:
            return self.text
        return " ".join([*(f"[image: {image}]" for image in self.images), self.text]).strip()


@dataclass
class Source:
    """One exemplar source of a policy, as the reader sees it."""

    path: Path  # the data file (or folder, for `folder`)
    display: str  # as written in the policy, for messages
    root: Path  # the data root: image paths in the data start here unless `images` says otherwise
    images: Path | None = None  # the folder that the data's image paths start from (default: root)
    text: str | None = None  # `folder`: the text of every exemplar
    task: str | None = None  # `mhalubench`: keep only items of this task_type
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (reason, which item) per item left out

    @property
    def image_root(self) -> Path:
        return self.images or self.root

    def skip(self, reason: str, what: str) -> None:
        self.skipped.append((reason, what))


def relative_image_path(value, source: Source, what: str) -> str | None:
    """An image path from a data file, relative to the image folder, or None (skipped) if unusable.

    A leading "/" means the image folder's top (MHaluBench writes "/TextVQA/train_images/x.jpg");
    a path that climbs out of the folder with ".." is refused.
    """
    if not isinstance(value, str) or not value.strip():
        source.skip("no image path", what)
        return None
    parts = PurePosixPath(value.strip().replace("\\", "/")).parts
    parts = [p for p in parts if p not in ("/", ".")]
    if not parts or ".." in parts:
        source.skip("image path outside the data root", what)
        return None
    return "/".join(parts)


def _image_exists(source: Source, rel: str, what: str) -> bool:
    if (source.image_root / rel).is_file():
        return True
    source.skip("missing image file", f"{what}: {rel}")
    return False


# --- hand-written files: JSONL and CSV ----------------------------------------------------------


def _images_of(record: dict, origin: str) -> tuple[str, ...]:
    value = record.get("images", record.get("image"))
    if value in (None, ""):
        return ()
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) and v.strip() for v in values):
        raise PolicyError(f"{origin}: 'image' / 'images' must be a path or a list of paths")
    return tuple(v.strip() for v in values)


MAX_WEIGHT = 1000.0


def parse_weight(value, where: str) -> float:
    """A positive exemplar weight (a number, or its text in a CSV cell), at most MAX_WEIGHT."""
    try:
        weight = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else math.nan
    except ValueError:
        weight = math.nan
    if not 0 < weight <= MAX_WEIGHT:  # also refuses NaN
        raise PolicyError(f"{where}: 'weight' must be a number above 0 and at most {MAX_WEIGHT:g}, not {value!r}")
    return weight


RESERVED = ("text", "label", "images", "image", "messages", "weight")  # record keys that are not prompt fields


def _exemplar_from_record(record: dict, origin: str, source: Source | None = None) -> Exemplar:
    if not isinstance(record, dict):
        raise PolicyError(f"{origin}: expected an object with 'text' and 'label'")
    images = _images_of(record, origin)
    # a record without "text" may fill other prompt fields (a request and its answer: {prompt},
    # {response}); validate_items then refuses it for a prompt that needs {text}
    # (a conversation's "messages" counts as such a field: it renders into the prompt)
    others = [k for k in record if k not in RESERVED or k == "messages"]
    required = ("label",) if images or ("text" not in record and others) else ("text", "label")
    missing = [k for k in required if k not in record or record[k] in (None, "")]
    if missing:
        raise PolicyError(f"{origin}: missing field {', '.join(repr(m) for m in missing)}")
    root = source.image_root if source else None
    for image in images:
        rel = PurePosixPath(image)
        if rel.is_absolute() or ".." in rel.parts:
            raise PolicyError(f"{origin}: image path '{image}' must be relative to the data root, without '..'")
        if root is not None and not (root / image).is_file():
            raise PolicyError(f"{origin}: image '{image}' not found in {root}")
    fields = {str(k): str(v) for k, v in record.items() if k not in RESERVED}
    if "messages" in record:  # a conversation, kept as JSON: the policy renders it (guard.policy.conversation)
        fields["messages"] = json.dumps(record["messages"], ensure_ascii=False)
    text = "" if record.get("text") is None else str(record["text"])
    weight = 1.0 if record.get("weight") in (None, "") else parse_weight(record["weight"], origin)
    label = str(record["label"])
    return Exemplar(text=text, label=label, origin=origin, images=images, fields=fields, root=root, weight=weight)


def read_jsonl(path: Path, display: str, source: Source | None = None) -> list[Exemplar]:
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        origin = f"{display}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"{origin}: invalid JSON ({exc.msg})") from None
        items.append(_exemplar_from_record(record, origin, source))
    return items


def read_csv(path: Path, display: str, source: Source | None = None) -> list[Exemplar]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        names = set(reader.fieldnames or ())
        if "label" not in names or not ({"text", "image", "images"} & names):
            raise PolicyError(f"{display}:1: CSV header must have a 'label' column and 'text' and/or 'image' columns")
        # Data rows start on line 2 (after the header); multi-line cells are counted by the reader.
        return [_exemplar_from_record(row, f"{display}:{reader.line_num}", source) for row in reader]


# --- benchmark files -----------------------------------------------------------------------------


def _load_json_items(source: Source) -> list:
    """A JSON array of items, or one JSON object per line."""
    text = source.path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"{source.display}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        return items
    items = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise PolicyError(f"{source.display}:{lineno}: invalid JSON ({exc.msg})") from None
    return items


VLGUARD_LABELS = ("harmful", "unharmful")
_VLGUARD_KEYS = ("safe_instruction", "unsafe_instruction", "instruction")


def _json_objects(source: Source):
    """(name for messages, item) for each object in a benchmark JSON file; skips (and reports)
    entries that are not objects. The name is "file[index] (id)"."""
    for index, item in enumerate(_load_json_items(source)):
        what = f"{source.display}[{index}]"
        if not isinstance(item, dict):
            source.skip("not an object", what)
            continue
        if item.get("id") is not None:
            what += f" ({item['id']})"
        yield what, item


def read_vlguard(source: Source) -> list[Exemplar]:
    """VLGuard's train.json / test.json: one exemplar per (image, instruction).

    Each item: `id`, `image` (path under the image folder, e.g. the unzipped train/), `safe`
    (the image's own verdict) and `instr-resp`, a list of {`safe_instruction` | `unsafe_instruction`
    | `instruction`, `response`}. A pair is `harmful` when the image is unsafe or the instruction
    is an unsafe one, `unharmful` otherwise (a safe image comes with one safe and one unsafe
    instruction, an unsafe image with plain `instruction`s). The instruction becomes {text}.
    """
    out = []
    for what, item in _json_objects(source):
        safe = item.get("safe")
        if not isinstance(safe, bool):
            source.skip("no true/false 'safe'", what)
            continue
        rel = relative_image_path(item.get("image"), source, what)
        if rel is None or not _image_exists(source, rel, what):
            continue
        pairs = item.get("instr-resp")
        found = 0
        for pair in pairs if isinstance(pairs, list) else []:
            key = next((k for k in _VLGUARD_KEYS if isinstance(pair, dict) and pair.get(k)), None)
            if key is None:
                continue
            found += 1
            harmful = not safe or key == "unsafe_instruction"
            out.append(
                Exemplar(
                    text=str(pair[key]).strip(),
                    label=VLGUARD_LABELS[0] if harmful else VLGUARD_LABELS[1],
                    origin=what,
                    images=(rel,),
                    root=source.image_root,
                    fields={"response": str(pair.get("response", ""))},
                )
            )
        if not found:
            source.skip("no instruction", what)
    return out


MHALUBENCH_LABELS = ("hallucination", "non-hallucination")
# Spellings seen for the two claim labels, after lower-casing and reading "_" / " " as "-".
_MHALU_LABEL_ALIASES = {
    "hallucination": "hallucination",
    "hallucinatory": "hallucination",
    "hallucinated": "hallucination",
    "non-hallucination": "non-hallucination",
    "non-hallucinatory": "non-hallucination",
    "no-hallucination": "non-hallucination",
    "not-hallucination": "non-hallucination",
}
_CLAIM_TEXT_KEYS = ("claim", "text", "segment", "content")
_CLAIM_LABEL_KEYS = ("claim_label", "label")


def _mhalu_label(value) -> str | None:
    if not isinstance(value, str):
        return None
    return _MHALU_LABEL_ALIASES.get(value.strip().lower().replace("_", "-").replace(" ", "-"))


def _first_key(record: dict, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in record), None)


def _claims_of_train_item(item: dict) -> tuple[list, list] | str:
    """(claims, labels) of a training-layout item, or why there are none."""
    claims = item.get("claim_list")
    labels = item.get("ref_claim_label", item.get("claim_label"))
    if not isinstance(claims, list) or not isinstance(labels, list) or len(claims) != len(labels):
        return "claim_list and ref_claim_label (or claim_label) are not lists of equal length"
    return claims, labels


def _claims_of_segment(segment) -> tuple[list, list] | str:
    """(claims, labels) inside one validation-layout segment, or what was expected and found."""
    if not isinstance(segment, dict):
        return f"expected an object, found {type(segment).__name__}"
    nested = segment.get("claims")
    if isinstance(nested, list):
        if all(isinstance(c, dict) for c in nested):
            texts = [c.get(_first_key(c, _CLAIM_TEXT_KEYS) or "claim") for c in nested]
            return texts, [c.get(_first_key(c, _CLAIM_LABEL_KEYS) or "label") for c in nested]
        labels = segment.get("claim_label", segment.get("claim_labels"))
        if isinstance(labels, list) and len(labels) == len(nested):
            return nested, labels
    if isinstance(segment.get("claim_list"), list):
        return _claims_of_train_item(segment)
    text_key, label_key = _first_key(segment, _CLAIM_TEXT_KEYS), _first_key(segment, _CLAIM_LABEL_KEYS)
    if text_key and label_key:
        return [segment[text_key]], [segment[label_key]]
    return (
        "expected 'claims' (objects with 'claim' and 'label'), 'claim_list' + 'claim_label', or a "
        f"'claim' / 'text' with a 'label'; found keys {sorted(segment)}"
    )


def _claims_of_val_item(item: dict, source: Source, what: str) -> tuple[list, list] | str:
    """All (claims, labels) of a validation-layout item; segments without claims are skipped
    one by one, with what was found."""
    segments = item["segments"]
    if not isinstance(segments, list):
        return f"'segments' is not a list (found {type(segments).__name__})"
    claims, labels = [], []
    for number, segment in enumerate(segments):
        found = _claims_of_segment(segment)
        if isinstance(found, str):
            source.skip("segment without claim-level labels", f"{what} segment {number}: {found}")
            continue
        claims += found[0]
        labels += found[1]
    return claims, labels


def read_mhalubench(source: Source) -> list[Exemplar]:
    """MHaluBench (UniHD / EasyDetect) claims: one exemplar per (image, claim), labelled
    `hallucination` or `non-hallucination`; the claim becomes {text}.

    Two layouts, told apart item by item:

    - Training file (`MHaluBench_train.json`): `id`, `image_path`, `claim_list`, `ref_tool_info`,
      `ref_claim_label` (one label per claim, same order), `ref_reason`, `ref_prompt`.
      `claim_label` is accepted in place of `ref_claim_label`. Confirmed from the example record
      in zjunlp/EasyDetect, HalDet-LLaVA/README.md ("Train dataset"): 1,270 items,
      hallucination : non-hallucination claims 2244 : 1633, image paths like
      "/TextVQA/train_images/160dee3be9ec3cbc.jpg" (COCO train2014, VQA-v2 and TextVQA train images).
    - Validation files (`MHaluBench_val-v0.1.json`, `-v0.2.json`): `id`, `image_path`, `model`,
      `task_type` ("image-to-text" / "text-to-image"), `prompt`, `response`, `label` and
      `segments`, the claim-level labels inside `segments`. The field names are those of the
      dataset card (huggingface.co/datasets/openkg/MHaluBench); the layout *inside* a segment could
      not be confirmed here (the file is not in any repository we can read), so each segment is
      read as any of: `claims` (objects with `claim` and `label`), `claim_list` + `claim_label`
      (parallel lists), or one `claim` (or `text` / `segment`) with a `label`. A segment in none
      of these shapes is skipped, and the note names the keys it had.

    `source.task` keeps only items whose `task_type` is that ("image-to-text", as the paper tests);
    items without a `task_type` (the training file) are kept. Labels are read case-insensitively
    ("Non-Hallucination", "non_hallucination" and "hallucinatory" are understood). An (image, claim)
    pair seen before is skipped as a duplicate. Image paths are read under the image folder, a
    leading "/" meaning its top; `id`, `task_type` and `model` are kept as fields.
    """
    out: list[Exemplar] = []
    seen: dict[tuple[str, str], str] = {}
    for what, item in _json_objects(source):
        task = item.get("task_type", item.get("type"))
        if source.task and task is not None and str(task) != source.task:
            source.skip(f"task_type is not {source.task}", f"{what}: {task}")
            continue
        if "claim_list" in item:
            found = _claims_of_train_item(item)
        elif "segments" in item:
            found = _claims_of_val_item(item, source, what)
        else:
            found = f"neither 'claim_list' (training layout) nor 'segments' (validation layout); keys {sorted(item)}"
        if isinstance(found, str):
            source.skip("no claim-level labels", f"{what}: {found}")
            continue
        rel = relative_image_path(item.get("image_path", item.get("image")), source, what)
        if rel is None or not _image_exists(source, rel, what):
            continue
        extra = {k: str(item[k]) for k in ("id", "task_type", "type", "model") if item.get(k) is not None}
        out += _claim_exemplars(found, rel, extra, what, source, seen)
    return out


def _claim_exemplars(found, rel, extra, what, source: Source, seen: dict) -> list[Exemplar]:
    out = []
    for number, (claim, raw_label) in enumerate(zip(*found)):
        where = f"{what} claim {number}"
        label = _mhalu_label(raw_label)
        if label is None:
            source.skip(f"claim label not {' / '.join(MHALUBENCH_LABELS)}", f"{where}: {raw_label!r}")
            continue
        if not isinstance(claim, str) or not claim.strip():
            source.skip("empty claim", where)
            continue
        key = (rel, " ".join(claim.split()).lower())
        if key in seen:
            source.skip("same (image, claim) as an earlier item", f"{where} = {seen[key]}")
            continue
        seen[key] = where
        out.append(
            Exemplar(text=claim.strip(), label=label, origin=where, images=(rel,), root=source.image_root, fields=extra)
        )
    return out


# --- the SAV authors' shot files -----------------------------------------------------------------

_SHOT_IMAGE_KEYS = ("image", "image_path")
_SHOT_TEXT_KEYS = ("instruction", "claim", "question", "text")
_SHOT_LABEL_KEYS = ("label", "answer", "claim_label")


def locate_by_trailing_parts(value, source: Source, what: str) -> str | None:
    """Where an image path written on another machine lies under the image folder: the longest
    trailing part of it that exists there ("/home/x/data/vlguard/train/HOD/1.jpg" is found as
    "train/HOD/1.jpg" under a VLGuard folder holding train/). None (skipped) if no part exists."""
    if not isinstance(value, str) or not value.strip():
        source.skip("no image path", what)
        return None
    parts = [p for p in PurePosixPath(value.strip().replace("\\", "/")).parts if p not in ("/", ".")]
    if not parts or ".." in parts:
        source.skip("image path outside the data root", what)
        return None
    for start in range(len(parts)):
        rel = "/".join(parts[start:])
        if (source.image_root / rel).is_file():
            return rel
    source.skip("image not found under any trailing part of its path", f"{what}: {value}")
    return None


def read_sav_shots(source: Source) -> list[Exemplar]:
    """The SAV paper's fixed shots (github.com/chancharikmitra/SAVs, data/): a JSON array, one
    exemplar per item, labels as written.

    Confirmed in that repository: `vlguard_train.json` (40 items: `image`, `instruction`, `label`;
    20 "harmful", 20 "unharmful") and `mahalu_train.json` (40 items: `image_path`, `claim`,
    `label`; 20 "hallucination", 20 "non-hallucination"); `vlguard_train_full.json` writes the
    label as `answer`, and the authors' MHalu code reads `claim_label`, so both are accepted for
    `label`, as is `question` (their general format) for the text. Image paths are absolute paths
    on the authors' machines ("/home/zhaobin/Qwen-VL/data/vlguard/train/privacyAlert/1.jpg",
    "/datasets/coco2014_2024-02-22_2010/train2014/COCO_train2014_000000004404.jpg"): each is
    found under the image folder by its longest trailing part that exists there (see
    `locate_by_trailing_parts`), so train/privacyAlert/... under a VLGuard folder, or
    train2014/... and train_images/... under an MHaluBench one.
    """
    out = []
    for what, item in _json_objects(source):
        image_key, text_key = _first_key(item, _SHOT_IMAGE_KEYS), _first_key(item, _SHOT_TEXT_KEYS)
        label_key = _first_key(item, _SHOT_LABEL_KEYS)
        missing = [
            name
            for name, key in (("image", image_key), ("instruction / claim", text_key), ("label", label_key))
            if key is None
        ]
        if missing:
            source.skip(f"no {' / '.join(missing)}", f"{what}: keys {sorted(item)}")
            continue
        text, label = item[text_key], item[label_key]
        if not isinstance(text, str) or not text.strip() or not isinstance(label, str) or not label.strip():
            source.skip("empty text or label", what)
            continue
        rel = locate_by_trailing_parts(item[image_key], source, what)
        if rel is None:
            continue
        out.append(Exemplar(text=text.strip(), label=label.strip(), origin=what, images=(rel,), root=source.image_root))
    return out


# --- image folders --------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".webp", ".gif")


def read_folder(source: Source) -> list[Exemplar]:
    """One sub-folder per label (its name is the label), images anywhere inside it; `text`
    (optional) fills {text} for all. Files that are not images by name are skipped."""
    if not source.path.is_dir():
        raise PolicyError(f"{source.display}: 'format: folder' needs a folder, not a file")
    out = []
    labels = sorted(p for p in source.path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not labels:
        raise PolicyError(f"{source.display}: no label sub-folders (expected {source.display}/LABEL/image.png)")
    for folder in labels:
        for path in sorted(folder.rglob("*")):
            rel_parts = path.relative_to(source.path).parts
            if not path.is_file() or any(part.startswith(".") for part in rel_parts):
                continue
            rel = path.relative_to(source.root).as_posix()
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                source.skip("not an image file name", rel)
                continue
            out.append(Exemplar(text=source.text or "", label=folder.name, origin=rel, images=(rel,), root=source.root))
    return out


# --- registry -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reader:
    """An exemplar format: `read(source)` returns its exemplars; it may append to `source.skipped`
    and raises PolicyError for a file it cannot read at all."""

    read: Callable[[Source], list[Exemplar]]
    folder: bool = False  # `from:` names a folder, not a file
    takes_text: bool = False  # takes a `text:` option (the text that goes with every item)
    takes_task: bool = False  # takes a `task_type:` option (keep only items of that task)
    extensions: tuple[str, ...] = ()  # file name endings that mean this format, like ".jsonl"


READERS: dict[str, Reader] = {}


def register_reader(name: str, reader: Reader | Callable[[Source], list[Exemplar]], *, replace: bool = False) -> None:
    """Add an exemplar format (`format: NAME` in a policy); a plain function is a file reader."""
    if not isinstance(reader, Reader):
        if not callable(reader):
            raise PolicyError(
                f"reader '{name}' must be a guard.policy.exemplars.Reader or a function, not {type(reader).__name__}"
            )
        reader = Reader(read=reader)
    if name in READERS and not replace and READERS[name] != reader:
        raise PolicyError(f"exemplar format '{name}' is already registered; pass replace=True to override it")
    READERS[name] = reader


def readers() -> dict[str, Reader]:
    """Every known format: guard's own and those that plugins register (entry points load once)."""
    from guard import plugins

    plugins.load_entry_points(plugins.READERS_GROUP, register_reader)
    return READERS


register_reader(
    "jsonl", Reader(lambda source: read_jsonl(source.path, source.display, source), extensions=(".jsonl", ".ndjson"))
)
register_reader("csv", Reader(lambda source: read_csv(source.path, source.display, source), extensions=(".csv",)))
register_reader("vlguard", Reader(read_vlguard))
register_reader("mhalubench", Reader(read_mhalubench, takes_task=True))
register_reader("sav-shots", Reader(read_sav_shots))
register_reader("folder", Reader(read_folder, folder=True, takes_text=True))


def guess_format(path: Path) -> str | None:
    known = readers()
    if path.is_dir():
        folders = [name for name, reader in known.items() if reader.folder]
        return folders[0] if len(folders) == 1 else None
    suffix = path.suffix.lower()
    return next((name for name, reader in known.items() if suffix in reader.extensions), None)


def sample_per_label(exemplars: list[Exemplar], shots: int, seed: int) -> tuple[list[Exemplar], dict[str, int]]:
    """At most `shots` exemplars per label, drawn reproducibly with `seed`, kept in source order.
    Also returns how many each label had before sampling."""
    counts = Counter(ex.label for ex in exemplars)
    rng = random.Random(seed)
    keep: set[int] = set()
    for label in sorted(counts):  # fixed order: the draw does not depend on dict ordering
        indices = [i for i, ex in enumerate(exemplars) if ex.label == label]
        keep.update(indices if len(indices) <= shots else rng.sample(indices, shots))
    return [ex for i, ex in enumerate(exemplars) if i in keep], dict(counts)


def summarise_skipped(display: str, skipped: list[tuple[str, str]]) -> list[str]:
    """One line per reason: how many items, and the first few of them."""
    by_reason: dict[str, list[str]] = {}
    for reason, what in skipped:
        by_reason.setdefault(reason, []).append(what)
    lines = []
    for reason, items in by_reason.items():
        shown = "; ".join(items[:3]) + (f"; and {len(items) - 3} more" if len(items) > 3 else "")
        lines.append(f"{display}: skipped {len(items)} item(s), {reason}: {shown}")
    return lines


def read_exemplar_file(
    path: Path,
    fmt: str | None,
    display: str,
    where: str,
    *,
    root: Path | None = None,
    images: Path | None = None,
    text: str | None = None,
    task: str | None = None,
    shots: int | None = None,
    seed: int = 0,
    weight: float | None = None,
    notes: list[str] | None = None,
) -> list[Exemplar]:
    """Read one exemplar source; `where` ("policy.yaml:12") locates the reference for errors.

    `root` is the data root (image paths start there, or at `images`); `shots` samples that many
    per label with `seed`; `weight` replaces every exemplar's own. Lines about skipped items and
    sampling are appended to `notes`.
    """
    known = readers()
    fmt = fmt or guess_format(path)
    if fmt is None:
        raise PolicyError(f"{where}: cannot tell the format of '{display}'; add 'format: {' | '.join(sorted(known))}'")
    if fmt not in known:
        raise PolicyError(f"{where}: unknown format '{fmt}' (known: {', '.join(sorted(known))})")
    if not path.exists():
        kind = "folder" if known[fmt].folder else "file"
        raise PolicyError(f"{where}: exemplar {kind} '{display}' does not exist")
    if known[fmt].folder and not path.is_dir():
        raise PolicyError(f"{where}: '{display}' is not a folder ('format: {fmt}' reads a folder of images)")
    if not known[fmt].folder:  # never a device or FIFO: it would read forever or block
        require_regular_file(path, f"{where}: exemplar file '{display}'", error=PolicyError)
    if images is not None and not images.is_dir():
        raise PolicyError(f"{where}: image folder '{images}' does not exist")
    source = Source(path=path, display=display, root=root or path.parent, images=images, text=text, task=task)
    try:
        exemplars = known[fmt].read(source)
    except UnicodeDecodeError:
        raise PolicyError(f"{where}: '{display}' is not UTF-8 text") from None
    if notes is not None:
        notes.extend(summarise_skipped(display, source.skipped))
    if shots is not None:
        exemplars, before = sample_per_label(exemplars, shots, seed)
        if notes is not None:
            counts = Counter(ex.label for ex in exemplars)
            drawn = ", ".join(f"{counts[label]} of {n} '{label}'" for label, n in sorted(before.items()))
            notes.append(f"{display}: sampled {drawn} (shots {shots}, seed {seed})")
    if weight is not None:
        exemplars = [replace(ex, weight=weight) for ex in exemplars]
    return exemplars
