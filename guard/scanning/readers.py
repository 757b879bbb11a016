"""Bulk-scan inputs: readers that yield one `ScanItem` at a time, whatever the file's size.

Formats: JSONL, CSV, Parquet (pyarrow, read a batch of rows at a time), a text file (one item per
line), a folder of images, or '-' (stdin, one text per line). An item is its id (by default the
line or row number, from 1) and the prompt fields to check (a row with a `messages` column and no
text is a conversation, guard.policy.conversation), or the one-line reason it cannot be
read (an invalid JSON line, a missing column, bytes that are not UTF-8). Nothing is skipped: a
blank line is an item too, and becomes an "empty text" error record downstream, so results line
up with the inputs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from guard.errors import GuardError, need_extra
from guard.limits import LIMITS, Limits, line_too_long
from guard.models.images import SUFFIXES as IMAGE_SUFFIXES

FORMATS = ("jsonl", "csv", "parquet", "text", "images")
_BY_SUFFIX = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
PARQUET_ROWS = 1024  # rows read from a Parquet file at a time


@dataclass
class ScanItem:
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
    data_root: str | None = None  # folder image paths must stay inside [default: where they start]
    messages: str = "messages"  # a conversation (a message list; JSON text in CSV), read when a row has no text


class InputFileError(GuardError):
    """An input file cannot be read at all (missing, unknown format)."""


def detect_format(path: str, fmt: str | None = None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise InputFileError(f"unknown input format '{fmt}' (known: {', '.join(FORMATS)})")
        return fmt
    if path == "-":
        return "text"
    p = Path(path)
    if p.is_dir():
        return "images"
    if not p.exists():
        raise InputFileError(f"{path}: no such file or folder")
    return _BY_SUFFIX.get(p.suffix.lower(), "text")


@dataclass
class Shard:
    """A piece of one input that a reader can take alone: a byte range of lines (JSONL, text),
    a Parquet row group, some files of an image folder, or a whole file. `first` is the number
    of its first line, row or file (ids count from there); `skip` drops its first items (resume)."""

    path: str
    kind: str
    prefix: str = ""  # put before default ids when there are several inputs ('PATH:')
    first: int = 1
    start: int = 0  # byte offset (lines) or row group (Parquet)
    end: int | None = None  # byte offset where the next shard starts (lines)
    files: list[str] | None = None  # image folders: the files of this shard, relative to `path`
    count: int | None = None  # items in the shard, where known without reading it
    skip: int = 0


def plan(paths: Iterable[str], fmt: str | None = None, shard_bytes: int | None = None) -> list[Shard]:
    """Shards covering the inputs, in order. `shard_bytes` None: one shard per input (no
    pre-pass, so stdin works); else line files are cut at line starts about every
    `shard_bytes`, Parquet files at row groups and image folders every IMAGES_PER_SHARD files."""
    paths = list(paths)
    kinds = [detect_format(path, fmt) for path in paths]  # fail on a missing file before reading any
    shards = []
    for path, kind in zip(paths, kinds):
        prefix = f"{path}:" if len(paths) > 1 else ""
        if shard_bytes is None or kind == "csv":  # quoted CSV fields may hold newlines: no byte cuts
            shards.append(Shard(path, kind, prefix))
        elif kind == "parquet":
            shards.extend(_parquet_shards(path, prefix))
        elif kind == "images":
            files = image_files(path)
            for i in range(0, max(len(files), 1), IMAGES_PER_SHARD):
                part = files[i : i + IMAGES_PER_SHARD]
                shards.append(Shard(path, kind, prefix, first=i + 1, files=part, count=len(part)))
        else:
            shards.extend(_line_shards(path, kind, prefix, shard_bytes))
    return shards


IMAGES_PER_SHARD = 1000


def _parquet_shards(path: str, prefix: str) -> list[Shard]:
    meta = _pyarrow_parquet().ParquetFile(path).metadata
    shards, first = [], 1
    for group in range(meta.num_row_groups):
        rows = meta.row_group(group).num_rows
        shards.append(Shard(path, "parquet", prefix, first=first, start=group, count=rows))
        first += rows
    return shards


def _line_shards(path: str, kind: str, prefix: str, shard_bytes: int) -> list[Shard]:
    """Cut a line file at line starts about every `shard_bytes`; count each piece's lines."""
    shards, start, first = [], 0, 1
    with open(path, "rb") as f:
        size = f.seek(0, io.SEEK_END)
        while start < size:
            f.seek(min(start + shard_bytes, size))
            if f.tell() < size:
                _skip_line(f)  # on to the next line start (a long line is not read into memory)
            end = f.tell()
            f.seek(start)
            lines, left, last = 0, end - start, b"\n"
            while left and (chunk := f.read(min(left, 1 << 20))):
                lines, left, last = lines + chunk.count(b"\n"), left - len(chunk), chunk[-1:]
            lines += last != b"\n"
            shards.append(Shard(path, kind, prefix, first=first, start=start, end=end, count=lines))
            start, first = end, first + lines
    return shards or [Shard(path, kind, prefix, count=0)]


def read_shard(shard: Shard, columns: Columns = Columns()) -> Iterator[ScanItem]:
    """The items of one shard, with the ids the whole input would give them."""
    items = READERS[shard.kind](shard, columns)
    for n, item in enumerate(items):
        if shard.prefix and (columns.id is None or item.id is None or shard.kind == "images"):
            item.id = f"{shard.prefix}{item.id}"
        if n >= shard.skip:
            yield item


def read_items(paths: Iterable[str], columns: Columns = Columns(), fmt: str | None = None) -> Iterator[ScanItem]:
    """Every item of every input, in order. With several inputs a default id is 'PATH:N'."""
    for shard in plan(paths, fmt):
        yield from read_shard(shard, columns)


SKIP_CHUNK = 1 << 16  # bytes read at a time while throwing away the rest of an over-long line


@dataclass(frozen=True)
class TooLong:
    """What `decoded_lines` gives for a line longer than `limits.max_line_bytes` (it was thrown
    away unread); str() is the one-line reason."""

    limits: Limits = LIMITS

    def __str__(self) -> str:
        return line_too_long(self.limits)


def decoded_lines(
    stream, first: int = 1, size: int | None = None, limits: Limits = LIMITS
) -> Iterator[tuple[int, str | None | TooLong]]:
    """(line number, text without its line ending, None if not UTF-8, or TooLong), lazily, for the
    next `size` bytes (None: to the end). Bytes are decoded line by line: one bad line spoils only
    itself. Memory stays bounded whatever the input: no read asks for more than the line limit
    plus its line ending, and a longer line is thrown away in SKIP_CHUNK reads up to its newline
    (those bytes count against `size`, so byte-offset shards still end where they should)."""
    limit = limits.max_line_bytes
    number = first
    while size is None or size > 0:
        raw = stream.readline(limit + 2)  # room for the limit and "\r\n"
        if not raw:
            return
        if size is not None:
            size -= len(raw)
        cut = len(raw) == limit + 2 and not raw.endswith(b"\n")  # the line goes on
        if cut or len(raw.rstrip(b"\r\n")) > limit:
            if cut:  # the rest of the line, read and dropped a chunk at a time
                raw = None
                skipped = _skip_line(stream)
                if size is not None:
                    size -= skipped
            yield number, TooLong(limits)
        else:
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield number, None
        number += 1


def _skip_line(stream) -> int:
    """Read `stream` up to and including its next newline (or to its end) SKIP_CHUNK bytes at a
    time, keeping none of it; the number of bytes read."""
    skipped = 0
    while chunk := stream.readline(SKIP_CHUNK):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def _open_binary(path: str, start: int = 0):
    if path == "-":
        return sys.stdin.buffer
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed by the reader that owns it
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    stream.seek(start)
    return stream


def _lines(shard: Shard, stream, limits: Limits = LIMITS) -> Iterator[tuple[int, str | None | TooLong]]:
    size = None if shard.end is None else shard.end - shard.start
    return decoded_lines(stream, shard.first, size, limits)


def document_limits(limits: Limits = LIMITS) -> Limits:
    """The limits of one JSONL line or CSV field: a whole document (guard.check.documents) may
    arrive as one record, so a record may hold `max_document_chars` characters, not one check's."""
    return replace(limits, max_line_bytes=limits.max_document_bytes)


def read_text(shard: Shard, columns: Columns = Columns()) -> Iterator[ScanItem]:
    """One text per line; the id is the line number."""
    stream = _open_binary(shard.path, shard.start)
    try:
        for number, line in _lines(shard, stream):
            if line is None:
                yield ScanItem(number, error="not valid UTF-8")
            elif isinstance(line, TooLong):
                yield ScanItem(number, error=str(line))
            else:
                yield ScanItem(number, {"text": line})
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def read_jsonl(shard: Shard, columns: Columns = Columns()) -> Iterator[ScanItem]:
    """One JSON object per line; a blank line is an item with empty text."""
    base = Path(shard.path).parent
    stream = _open_binary(shard.path, shard.start)
    try:
        for number, line in _lines(shard, stream, document_limits()):
            where = f"line {number}"
            if line is None:
                yield unreadable(number, where, "not valid UTF-8", columns)
            elif isinstance(line, TooLong):
                yield unreadable(number, where, str(line), columns)
            elif not line.strip():
                yield unreadable(number, where, "empty text: nothing to check", columns)
            else:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield unreadable(number, where, f"not valid JSON ({exc.msg})", columns)
                    continue
                yield row_item(row, number, where, columns, base)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def read_csv(shard: Shard, columns: Columns = Columns()) -> Iterator[ScanItem]:
    """A CSV file with a header row; the id is the data row number (the header is row 0)."""
    path = shard.path
    stream = _open_binary(path)
    try:
        # surrogateescape keeps undecodable bytes as lone surrogates, caught per row below
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
        csv.field_size_limit(max(csv.field_size_limit(), LIMITS.max_document_bytes))  # a document per field
        reader = csv.DictReader(text)
        for number, row in enumerate(reader, start=1):
            where = f"row {number}"
            if any(_has_surrogates(value) for value in row.values()):
                yield unreadable(number, where, "not valid UTF-8", columns)
            else:
                yield row_item(row, number, where, columns, Path(path).parent)
    except csv.Error as exc:
        raise InputFileError(f"{path}: not a readable CSV file ({exc})") from None
    finally:
        stream.close()


def _has_surrogates(value) -> bool:
    if isinstance(value, list):  # DictReader puts a row's extra cells under the None key
        return any(_has_surrogates(v) for v in value)
    return isinstance(value, str) and any("\udc80" <= ch <= "\udcff" for ch in value)


def read_parquet(shard: Shard, columns: Columns = Columns()) -> Iterator[ScanItem]:
    """A Parquet file (or one row group of it), read PARQUET_ROWS rows at a time (only the columns used)."""
    path = shard.path
    pq = _pyarrow_parquet()
    try:
        file = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise InputFileError(f"{path}: not a readable Parquet file ({exc})") from None
    present = set(file.schema_arrow.names)
    wanted = [
        c for c in (columns.id, columns.text, columns.image, columns.messages, *columns.extra) if c and c in present
    ]
    groups = None if shard.count is None else [shard.start]  # a planned shard is one row group
    rows = file.metadata.num_rows if groups is None else shard.count
    number = shard.first - 1
    batches = file.iter_batches(batch_size=PARQUET_ROWS, row_groups=groups, columns=sorted(set(wanted)))
    for batch in batches if wanted else ():
        for row in batch.to_pylist():
            number += 1
            yield row_item(row, number, f"row {number}", columns, Path(path).parent)
    if not wanted:  # no column wanted (all missing): still one item per row, each saying so
        for number in range(shard.first, shard.first + rows):
            yield row_item({}, number, f"row {number}", columns, Path(path).parent)


def _pyarrow_parquet():
    need_extra("pyarrow", "Parquet", "parquet", InputFileError)
    import pyarrow.parquet as pq

    return pq


def image_files(path: str) -> list[str]:
    """The image files under a folder, recursively, as sorted paths relative to it."""
    root = Path(path)
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def read_image_folder(shard: Shard, columns: Columns = Columns()) -> Iterator[ScanItem]:
    """Every image file under a folder (by name, recursively); the id is its path inside it."""
    files = image_files(shard.path) if shard.files is None else shard.files
    text = {} if columns.prompt is None else {"text": columns.prompt}
    for name in files:
        yield ScanItem(name, {**text, "images": [str(Path(shard.path) / name)]})


def unreadable(number: int, where: str, reason: str, columns: Columns) -> ScanItem:
    """An error item; its id is the row number unless ids come from a column (then unknown: None,
    and the reason says where the row is)."""
    return ScanItem(None, error=f"{where}: {reason}") if columns.id else ScanItem(number, error=reason)


def row_item(row, number: int, where: str, columns: Columns, base: Path) -> ScanItem:
    """The ScanItem of one JSONL/CSV/Parquet row: its id, and the prompt fields from its columns."""
    if not isinstance(row, dict):
        return unreadable(number, where, "not a JSON object", columns)
    if columns.id:
        item_id = row.get(columns.id)
        if item_id is None or item_id == "":
            return unreadable(number, where, f"no '{columns.id}' (the id field)", columns)
    else:
        item_id = number
    fields = {}
    if columns.messages in row and columns.text not in row and not columns.image:
        value = row[columns.messages]
        if isinstance(value, str):  # a CSV cell holds the list as JSON text
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                return ScanItem(item_id, error=f"{where}: '{columns.messages}' is not valid JSON ({exc.msg})")
        return ScanItem(item_id, {"messages": value})  # validated when prepared
    if columns.image:
        name = row.get(columns.image)
        if not name:
            return ScanItem(item_id, error=f"{where}: no '{columns.image}' (the image field)")
        start = Path(columns.images or base)
        path = start / str(name)
        if not image_under_root(path, Path(columns.data_root or start)):
            # one answer for a file outside the data root and for one missing inside it: the
            # records of a scan say nothing of what exists elsewhere on the machine
            return ScanItem(item_id, error=f"{where}: image '{name}' is not a file under the data root")
        fields["images"] = [str(path)]
        if columns.prompt is not None:
            fields["text"] = columns.prompt
    if columns.text in row or not columns.image:
        value = row.get(columns.text)
        if value is None and columns.text not in row:
            return ScanItem(item_id, error=f"{where}: no '{columns.text}' (the text field)")
        fields["text"] = "" if value is None else str(value)
    for name in columns.extra:
        if row.get(name) is not None:
            fields[name] = str(row[name])
    return ScanItem(item_id, fields)


def image_under_root(path: Path, root: Path) -> bool:
    """Whether a manifest's image path is a regular file inside `root` (symlinks followed), by
    the policy loader's confinement (guard.policy.paths.is_inside)."""
    import stat

    from guard.policy import is_inside

    if not is_inside(path, [root.expanduser().resolve()]):
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


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
            total += len(image_files(path))
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


_OLD_NAMES = {"Item": ScanItem, "InputError": InputFileError}  # guard 0.2's names, until 0.4


def __getattr__(name):
    if name in _OLD_NAMES:
        import warnings

        new = _OLD_NAMES[name]
        warnings.warn(f"{__name__}.{name} is now {new.__name__}", DeprecationWarning, stacklevel=2)
        return new
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
