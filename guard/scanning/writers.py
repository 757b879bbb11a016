"""Bulk-scan results: JSONL or Parquet files written as records come, durable, resumable.

JSONL: one record per line, appended as each window completes, flushed at once and fsynced at
least every `SYNC_SECONDS`, so a crash loses at most the window in flight. Parquet cannot be
appended to, and a killed writer leaves no footer; so records go to `RESULTS.partial.jsonl`
first and are converted to Parquet (streamed in chunks, written to a temporary file, then renamed)
when the scan completes.

Resume: the records already written are the first N of the complete output (records come in
input order), so a resumed scan skips the first N items. The last line is cut off if a kill left
it half-written, and the N-th input item's id must match the last record's, or the inputs
changed and resuming would mix two scans.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from guard.errors import GuardError
from guard.scanning.scanner import Summary

SYNC_SECONDS = 2.0
PARQUET_CHUNK = 4096  # records converted to Parquet at a time


class OutputError(GuardError):
    """The results file cannot be written or resumed."""


def output_format(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise OutputError(f"{path}: results go to .jsonl or .parquet (the extension says which)")


def staging_path(path: str) -> str:
    """Where records go while the scan runs."""
    return path + ".partial.jsonl" if output_format(path) == "parquet" else path


@dataclass
class Progress:
    """What the results file already holds: records, the last id, their summary."""

    records: int = 0
    last_id: object = None
    summary: Summary = field(default_factory=Summary)


def existing(path: str, resume: bool, overwrite: bool) -> Progress:
    """Check the results path before a scan; with `resume`, what it already holds."""
    staging = staging_path(path)
    present = [p for p in dict.fromkeys((path, staging)) if os.path.exists(p)]
    if not resume:
        if present and not overwrite:
            raise OutputError(f"{present[0]} exists: add --resume to continue that scan, or --overwrite to start again")
        for p in present:
            os.remove(p)
        return Progress()
    if staging != path and os.path.exists(path) and not os.path.exists(staging):
        raise OutputError(f"{path} is a finished scan: nothing to resume (use --overwrite to scan again)")
    if not os.path.exists(staging):
        return Progress()
    return read_progress(staging)


def read_progress(path: str) -> Progress:
    """Count the complete records of a JSONL results file, cutting off a torn last line."""
    progress = Progress()
    good_end = 0
    with open(path, "r+b") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # torn by a kill mid-write: dropped below, re-checked on resume
            try:
                record = json.loads(line)
            except ValueError:
                raise OutputError(f"{path}: record {progress.records + 1} is not valid JSON; cannot resume") from None
            progress.records += 1
            progress.last_id = record.get("id")
            progress.summary.add(record)
            good_end += len(line)
        f.truncate(good_end)
    return progress


def skip_done(items: Iterator, progress: Progress) -> Iterator:
    """The items left to check: all but the first `progress.records`, after making sure the
    last of those is the item the results file ends with."""
    items = iter(items)
    item = None
    for _ in range(progress.records):
        item = next(items, None)
        if item is None:
            raise OutputError("the results hold more records than the inputs have items: not the same inputs")
    if item is not None and json.dumps(item.id) != json.dumps(progress.last_id):
        raise OutputError(
            f"the results' record {progress.records} is id {progress.last_id!r}, but input item "
            f"{progress.records} is id {item.id!r}: not the same inputs (start again with --overwrite)"
        )
    yield from items


class JsonlWriter:
    """Append records as JSON lines; flush on every write, fsync every SYNC_SECONDS and on close."""

    def __init__(self, path: str):
        try:
            self.file = open(path, "ab")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
        self.path = path
        self.synced = time.monotonic()

    def write(self, records: list[dict]) -> None:
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        self.file.write(data)
        self.file.flush()
        if time.monotonic() - self.synced >= SYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        os.fsync(self.file.fileno())
        self.synced = time.monotonic()

    def close(self) -> None:
        if not self.file.closed:
            self.file.flush()
            self.sync()
            self.file.close()


def iter_jsonl(path: str) -> Iterator[dict]:
    with open(path, "rb") as f:
        for line in f:
            yield json.loads(line)


def finish(path: str, schema=None) -> None:
    """After a complete scan: convert the staged records to Parquet (a no-op for JSONL)."""
    staging = staging_path(path)
    if staging == path:
        return
    write_parquet(iter_jsonl(staging), path, schema, ids_are_ints=_all_int_ids(staging))
    os.remove(staging)


def _all_int_ids(path: str) -> bool:
    ids = (r.get("id") for r in iter_jsonl(path))
    return all(i is None or (isinstance(i, int) and not isinstance(i, bool)) for i in ids)


def record_schema(labels: dict[str, list[str]], votes: bool = False, ids_are_ints: bool = True, explain: bool = False):
    """The Parquet schema of scan records for policies {name: label names}; with `votes`, each
    head's vote; with `explain`, each verdict's explanation (guard.check.explain.explain)."""
    import pyarrow as pa

    turn = pa.struct([("index", pa.int64()), ("role", pa.string())])  # conversations: the judged turn

    def verdict_type(names, nested: bool = False):
        columns = [
            ("policy", pa.string()),
            ("version", pa.string()),
            ("flagged", pa.bool_()),
            ("label", pa.string()),
            ("scores", _per_label(names, pa.float64())),
        ]
        if votes and not nested:
            columns.append(("votes", pa.list_(_vote_type(names))))
        columns += [
            ("calibrated", _per_label(names, pa.float64())),
            ("margin", pa.float64()),
            ("uncertain", pa.bool_()),
            ("turn", turn),
        ]
        if not nested:  # `judge: every_turn`: every turn's verdict, without votes
            columns.append(("turns", pa.list_(verdict_type(names, nested=True))))
        if explain and not nested:
            columns.append(("explanation", _explanation_type(names)))
        return pa.struct(columns)

    return pa.schema(
        [
            ("id", pa.int64() if ids_are_ints else pa.string()),
            ("flagged", pa.bool_()),
            ("verdicts", pa.struct([(name, verdict_type(names)) for name, names in labels.items()])),
            ("error", pa.string()),
        ]
    )


def _per_label(names, kind):
    import pyarrow as pa

    return pa.struct([(n, kind) for n in names])


def _vote_type(names):
    import pyarrow as pa

    return pa.struct(
        [
            ("rank", pa.int64()),
            ("layer", pa.int64()),
            ("head", pa.int64()),
            ("label", pa.string()),
            ("similarity", pa.float64()),
            ("similarities", _per_label(names, pa.float64())),
            ("margin", pa.float64()),
        ]
    )


def _explanation_type(names):
    """guard.check.explain.explain's dict: the votes, and the closest exemplars at the top heads."""
    import pyarrow as pa

    exemplar = pa.struct(
        [("index", pa.int64()), ("text", pa.string()), ("label", pa.string()), ("similarity", pa.float64())]
    )
    nearest = pa.struct(
        [
            ("rank", pa.int64()),
            ("layer", pa.int64()),
            ("head", pa.int64()),
            ("voted", pa.string()),
            ("exemplars", pa.list_(exemplar)),
        ]
    )
    return pa.struct([("votes", pa.list_(_vote_type(names))), ("nearest_exemplars", pa.list_(nearest))])


def write_parquet(records, path: str, schema, ids_are_ints: bool = True) -> None:
    """Stream records into a Parquet file (a temporary name, renamed when complete)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not ids_are_ints:
        schema = schema.set(0, pa.field("id", pa.string()))
    tmp = path + ".tmp"
    with pq.ParquetWriter(tmp, schema) as writer:
        chunk = []
        for record in records:
            chunk.append(record if ids_are_ints or record.get("id") is None else {**record, "id": str(record["id"])})
            if len(chunk) == PARQUET_CHUNK:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                chunk = []
        if chunk:
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
    os.replace(tmp, path)


def read_records(path: str) -> Iterator[dict]:
    """Records back from a results file (JSONL or Parquet), as the scan wrote them."""
    if output_format(path) == "jsonl":
        yield from iter_jsonl(path)
        return
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_CHUNK):
        for row in batch.to_pylist():
            if row["error"] is not None:
                yield {"id": row["id"], "error": row["error"]}
            else:
                verdicts = {name: _without_absent(v) for name, v in row["verdicts"].items()}
                yield {"id": row["id"], "flagged": row["flagged"], "verdicts": verdicts}


def _without_absent(verdict: dict) -> dict:
    """A verdict read from Parquet without the conversation keys its record did not have (the
    schema holds them for every verdict; JSONL records only where they apply)."""
    out = {k: v for k, v in verdict.items() if not (k in ("turn", "turns") and v is None)}
    if out.get("turns"):
        out["turns"] = [_without_absent(v) for v in out["turns"]]
    return out
