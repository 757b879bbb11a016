"""Bulk-scan inputs: readers that yield one `Item` at a time, whatever the file's size.

Formats: JSONL, CSV, Parquet (pyarrow, read a batch of rows at a time), a text file (one item per
line), a folder of images, or '-' (stdin, one text per line). An item is its id (by default the
line or row number, from 1) and the prompt fields to check, or the one-line reason it cannot be
read (an invalid JSON line, a missing column, bytes that are not UTF-8). Nothing is skipped: a
blank line is an item too, and becomes an "empty text" error record downstream, so results line
up with the inputs.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from guard.errors import GuardError
from guard.images import SUFFIXES as IMAGE_SUFFIXES

FORMATS = ("jsonl", "csv", "parquet", "text", "images")
_BY_SUFFIX = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
PARQUET_ROWS = 1024  # rows read from a Parquet file at a time


@dataclass
class Item:
    """One input: `fields` fill the policy prompt ("text", other {fields}, "images": [paths]),
    or `error` says in one line why it cannot be checked."""

    id: object
    fields: dict = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Columns:
    """Which columns of a JSONL/CSV/Parquet row fill what."""

    id: str | None = None  # None: the row number
    text: str = "text"
    image: str | None = None  # a column naming an image file (relative to the manifest's folder or `images`)
    extra: tuple[str, ...] = ()  # other prompt {fields}, taken from the columns of the same name
    prompt: str | None = None  # the text that goes with every image (image folders, image manifests)
    images: str | None = None  # folder image paths start from [default: the manifest's folder]


class InputError(GuardError):
    """An input file cannot be read at all (missing, unknown format)."""


def detect_format(path: str, fmt: str | None = None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise InputError(f"unknown input format '{fmt}' (known: {', '.join(FORMATS)})")
        return fmt
    if path == "-":
        return "text"
    p = Path(path)
    if p.is_dir():
        return "images"
    if not p.exists():
        raise InputError(f"{path}: no such file or folder")
    return _BY_SUFFIX.get(p.suffix.lower(), "text")


def read_items(paths: Iterable[str], columns: Columns = Columns(), fmt: str | None = None) -> Iterator[Item]:
    """Every item of every input, in order. With several inputs a default id is 'PATH:N'."""
    paths = list(paths)
    formats = [detect_format(path, fmt) for path in paths]  # fail on a missing file before reading any
    for path, kind in zip(paths, formats):
        prefix = f"{path}:" if len(paths) > 1 else ""
        for item in READERS[kind](path, columns):
            if prefix and (columns.id is None or item.id is None or kind == "images"):
                item.id = f"{prefix}{item.id}"
            yield item


def decoded_lines(stream: io.RawIOBase | io.BufferedIOBase) -> Iterator[tuple[int, str | None]]:
    """(line number from 1, text without its line ending, or None if not UTF-8), lazily.
    Bytes are decoded line by line, so one bad line spoils only itself."""
    for number, raw in enumerate(stream, start=1):
        try:
            yield number, raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            yield number, None


def _open_binary(path: str):
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the reader that owns it
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_text(path: str, columns: Columns = Columns()) -> Iterator[Item]:
    """One text per line; the id is the line number."""
    stream = _open_binary(path)
    try:
        for number, line in decoded_lines(stream):
            if line is None:
                yield Item(number, error="not valid UTF-8")
            else:
                yield Item(number, {"text": line})
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def read_jsonl(path: str, columns: Columns = Columns()) -> Iterator[Item]:
    """One JSON object per line; a blank line is an item with empty text."""
    stream = _open_binary(path)
    try:
        for number, line in decoded_lines(stream):
            where = f"line {number}"
            if line is None:
                yield unreadable(number, where, "not valid UTF-8", columns)
            elif not line.strip():
                yield unreadable(number, where, "empty text: nothing to check", columns)
            else:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield unreadable(number, where, f"not valid JSON ({exc.msg})", columns)
                    continue
                yield row_item(row, number, where, columns, Path(path).parent)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def read_csv(path: str, columns: Columns = Columns()) -> Iterator[Item]:
    """A CSV file with a header row; the id is the data row number (the header is row 0)."""
    stream = _open_binary(path)
    try:
        # surrogateescape keeps undecodable bytes as lone surrogates, caught per row below
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
        reader = csv.DictReader(text)
        for number, row in enumerate(reader, start=1):
            where = f"row {number}"
            if any(_has_surrogates(value) for value in row.values()):
                yield unreadable(number, where, "not valid UTF-8", columns)
            else:
                yield row_item(row, number, where, columns, Path(path).parent)
    except csv.Error as exc:
        raise InputError(f"{path}: not a readable CSV file ({exc})") from None
    finally:
        stream.close()


def _has_surrogates(value) -> bool:
    if isinstance(value, list):  # DictReader puts a row's extra cells under the None key
        return any(_has_surrogates(v) for v in value)
    return isinstance(value, str) and any("\udc80" <= ch <= "\udcff" for ch in value)


def read_parquet(path: str, columns: Columns = Columns()) -> Iterator[Item]:
    """A Parquet file, read PARQUET_ROWS rows at a time (only the columns used)."""
    pq = _pyarrow_parquet()
    try:
        file = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    present = set(file.schema_arrow.names)
    wanted = [c for c in (columns.id, columns.text, columns.image, *columns.extra) if c and c in present]
    number = 0
    for batch in file.iter_batches(batch_size=PARQUET_ROWS, columns=sorted(set(wanted))):
        for row in batch.to_pylist():
            number += 1
            yield row_item(row, number, f"row {number}", columns, Path(path).parent)
    if number == 0 and file.metadata.num_rows:  # no columns wanted: still one item per row
        for number in range(1, file.metadata.num_rows + 1):
            yield row_item({}, number, f"row {number}", columns, Path(path).parent)


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("Parquet needs pyarrow: pip install 'guard[parquet]'") from None
    return pq


def read_image_folder(path: str, columns: Columns = Columns()) -> Iterator[Item]:
    """Every image file under a folder (by name, recursively); the id is its path inside it."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    text = {} if columns.prompt is None else {"text": columns.prompt}
    for file in files:
        yield Item(file.relative_to(root).as_posix(), {**text, "images": [str(file)]})


def unreadable(number: int, where: str, reason: str, columns: Columns) -> Item:
    """An error item; its id is the row number unless ids come from a column (then unknown: None,
    and the reason says where the row is)."""
    return Item(None, error=f"{where}: {reason}") if columns.id else Item(number, error=reason)


def row_item(row, number: int, where: str, columns: Columns, base: Path) -> Item:
    """The Item of one JSONL/CSV/Parquet row: its id, and the prompt fields from its columns."""
    if not isinstance(row, dict):
        return unreadable(number, where, "not a JSON object", columns)
    if columns.id:
        item_id = row.get(columns.id)
        if item_id is None or item_id == "":
            return unreadable(number, where, f"no '{columns.id}' (the id field)", columns)
    else:
        item_id = number
    fields = {}
    if columns.image:
        name = row.get(columns.image)
        if not name:
            return Item(item_id, error=f"{where}: no '{columns.image}' (the image field)")
        fields["images"] = [str(Path(columns.images or base) / str(name))]
        if columns.prompt is not None:
            fields["text"] = columns.prompt
    if columns.text in row or not columns.image:
        value = row.get(columns.text)
        if value is None and columns.text not in row:
            return Item(item_id, error=f"{where}: no '{columns.text}' (the text field)")
        fields["text"] = "" if value is None else str(value)
    for name in columns.extra:
        if row.get(name) is not None:
            fields[name] = str(row[name])
    return Item(item_id, fields)


READERS = {
    "jsonl": read_jsonl,
    "csv": read_csv,
    "parquet": read_parquet,
    "text": read_text,
    "images": read_image_folder,
}


def count_items(paths: Iterable[str], fmt: str | None = None) -> int | None:
    """How many items the inputs hold, cheaply (for the progress bar's ETA); None if unknown
    (stdin). Lines are counted in 1 MiB reads; CSV counts lines, so quoted newlines overcount."""
    total = 0
    for path in paths:
        kind = detect_format(path, fmt)
        if path == "-":
            return None
        if kind == "images":
            total += sum(1 for p in Path(path).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif kind == "parquet":
            total += _pyarrow_parquet().ParquetFile(path).metadata.num_rows
        else:
            total += _count_lines(path) - (1 if kind == "csv" else 0)
    return total


def _count_lines(path: str) -> int:
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")
