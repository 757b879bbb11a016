"""Exemplar readers: inline items and files (JSONL, CSV).

Every reader returns `Exemplar`s that remember where they came from ("file:line"), so a bad
label or a missing field is reported at its source. Readers know nothing about models.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from guard.errors import PolicyError


@dataclass(frozen=True)
class Exemplar:
    """One labelled input: the text that fills the prompt, optional images, extra fields."""

    text: str
    label: str
    origin: str  # "file:line", for error messages
    images: tuple[str, ...] = ()
    fields: dict[str, str] = field(default_factory=dict)

    def prompt_fields(self) -> dict[str, str]:
        """Values available to the policy's prompt template ({text} and any other column)."""
        return {**self.fields, "text": self.text}


def _exemplar_from_record(record: dict, origin: str) -> Exemplar:
    if not isinstance(record, dict):
        raise PolicyError(f"{origin}: expected an object with 'text' and 'label'")
    missing = [k for k in ("text", "label") if k not in record or record[k] in (None, "")]
    if missing:
        raise PolicyError(f"{origin}: missing field {', '.join(repr(m) for m in missing)}")
    fields = {str(k): str(v) for k, v in record.items() if k not in ("text", "label", "images", "image")}
    return Exemplar(text=str(record["text"]), label=str(record["label"]), origin=origin, fields=fields)


def read_jsonl(path: Path, display: str) -> list[Exemplar]:
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        origin = f"{display}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"{origin}: invalid JSON ({exc.msg})") from None
        items.append(_exemplar_from_record(record, origin))
    return items


def read_csv(path: Path, display: str) -> list[Exemplar]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"text", "label"} <= set(reader.fieldnames):
            raise PolicyError(f"{display}:1: CSV header must have 'text' and 'label' columns")
        # Data rows start on line 2 (after the header); multi-line cells are counted by the reader.
        return [_exemplar_from_record(row, f"{display}:{reader.line_num}") for row in reader]


# format name -> reader(path, display_name). Image and benchmark formats register here too.
READERS: dict[str, Callable[[Path, str], list[Exemplar]]] = {
    "jsonl": read_jsonl,
    "csv": read_csv,
}

_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


def guess_format(path: Path) -> str | None:
    return _EXTENSIONS.get(path.suffix.lower())


def read_exemplar_file(path: Path, fmt: str | None, display: str, where: str) -> list[Exemplar]:
    """Read one exemplar file; `where` ("policy.yaml:12") locates the reference for errors."""
    fmt = fmt or guess_format(path)
    if fmt is None:
        raise PolicyError(f"{where}: cannot tell the format of '{display}'; add 'format: jsonl' or 'format: csv'")
    if fmt not in READERS:
        raise PolicyError(f"{where}: unknown format '{fmt}' (known: {', '.join(sorted(READERS))})")
    if not path.exists():
        raise PolicyError(f"{where}: exemplar file '{display}' does not exist")
    try:
        return READERS[fmt](path, display)
    except UnicodeDecodeError:
        raise PolicyError(f"{where}: '{display}' is not UTF-8 text") from None
