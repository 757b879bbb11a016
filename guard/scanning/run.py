"""A whole scan, from Python as from `guard scan`: inputs and compiled policies in, a durable,
resumable results file out, and a report of what was done.

`run` owns what a scan's lifecycle needs around the streaming scanner (guard.scanning.scanner):
the policies loaded from the database, the columns their prompts need, the results file checked
(`resume` continues it after its last whole record, `overwrite` replaces it), the local or Ray
scan chosen, the writer opened and always closed, a progress bar on a terminal, and the Parquet
conversion at the end. SIGTERM is turned into KeyboardInterrupt while the records are written (a
polite kill keeps what was written, as Ctrl-C does; from the main thread, where Python lets a
handler be set); either raises `ScanInterrupted`, which says how to continue.

`guard.scan` stays the plain streaming function: records out, no files.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from guard.errors import GuardError
from guard.scanning.readers import Columns, count_items, detect_format, read_items
from guard.scanning.scanner import Summary
from guard.scanning.writers import (
    JsonlWriter,
    OutputError,
    Progress,
    existing,
    finish,
    output_format,
    record_schema,
    skip_done,
    staging_path,
)


class ScanInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a scan; the records written so far stay, and `resume=True` continues."""

    def __init__(self, items: int):
        super().__init__(f"interrupted after {items} items; continue with --resume")
        self.items = items


@dataclass
class ScanReport:
    """What a finished scan did: the summary of every record in the results file, how many of
    them an earlier (resumed) run wrote, and how long this run took."""

    summary: Summary
    out: str
    resumed: int = 0
    seconds: float = 0.0

    @property
    def new(self) -> int:
        return self.summary.items - self.resumed

    @property
    def rate(self) -> float:
        return self.new / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            **self.summary.to_dict(),
            "resumed": self.resumed,
            "seconds": round(self.seconds, 3),
            "items_per_second": round(self.rate, 2),
            "out": self.out,
        }


@dataclass
class RaySettings:
    """Where and how wide a Ray Data scan runs (guard.scanning.ray_data)."""

    address: str | None = None  # an existing cluster [default: start Ray locally]
    workers: int = 1  # model actors, each loading the model once
    verbose: bool = False  # Ray's own logs and progress bars on stderr


def run(
    inputs: Sequence[str],
    out: str,
    *,
    db: str | None = None,
    policies: Sequence[str] | None = None,
    columns: Columns | None = None,
    fmt: str | None = None,
    batch_size: int = 16,
    window: int | None = None,
    explain: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    device: str = "auto",
    dtype: str | None = None,
    threads: int | None = None,
    ray: RaySettings | None = None,
    engine: str | None = None,
    onnx_dir: str | None = None,
) -> ScanReport:
    """Scan `inputs` (files, folders of images, or "-" for stdin) with the compiled `policies`
    (the database's only one by default) into `out` (.jsonl or .parquet), one record per item in
    input order. `explain` adds each verdict's explanation (votes and closest exemplars);
    `progress` draws a bar on a terminal; `ray` runs the scan on Ray Data. `engine="onnx"` with
    `onnx_dir` (an export, guard.onnx) checks texts on onnxruntime instead, giving the same records."""
    output_format(out)
    kinds = {detect_format(path, fmt) for path in inputs}
    onnx = onnx_engine(engine, onnx_dir, policies, columns, images="images" in kinds, ray=ray, threads=threads)
    if "parquet" in kinds or output_format(out) == "parquet":
        from guard.scanning.readers import _pyarrow_parquet

        _pyarrow_parquet()  # fail now, not after the scan
    artifacts, columns = load(db, policies, columns or Columns(), images="images" in kinds, threads=threads, onnx=onnx)
    done = existing(out, resume, overwrite)
    started = time.monotonic()
    if ray is not None:
        batches = ray_batches(inputs, artifacts, columns, fmt, done, ray, batch_size, window, explain, device, dtype)
    else:
        batches = local_batches(
            inputs, artifacts, columns, fmt, done, batch_size, window, explain, device, dtype, onnx=onnx
        )
    show = progress and sys.stderr.isatty()
    summary = write(batches, out, done, total=count_items(inputs, fmt) if show else None, show=show)
    finish(out, record_schema({a.name: a.label_names for a in artifacts}, votes=explain, explain=explain))
    return ScanReport(summary, out, resumed=done.records, seconds=time.monotonic() - started)


def onnx_engine(engine, onnx_dir, policies, columns: Columns | None, *, images: bool, ray, threads):
    """The ONNX export to scan with (guard.onnx.engine.OnnxGuard), or None for the torch engine;
    what it cannot do (images, Ray) refused before anything is read."""
    from guard.onnx.choice import wants_onnx

    if not wants_onnx(engine, onnx_dir):
        return None
    if images or (columns is not None and columns.image is not None):
        raise GuardError("the ONNX engine checks text only; scan images with the torch engine")
    if ray is not None:
        raise GuardError("--ray runs the torch engine; scan an ONNX export without --ray")
    from guard.onnx.engine import open_export

    return open_export(onnx_dir, policies, threads=threads)


def load(db, policies, columns: Columns, *, images: bool, threads: int | None, onnx=None):
    """The compiled policies (from the database, or the ONNX export's), and the columns with the
    prompt fields they need besides {text}."""
    from guard.models import set_threads
    from guard.policy import template_fields
    from guard.store.database import Store

    artifacts = onnx.artifacts if onnx is not None else Store.open(db).load_artifacts(policies)
    set_threads(threads)
    needed = set().union(*(template_fields(art.prompt) for art in artifacts))
    if images and "text" in needed and columns.prompt is None:
        raise GuardError("the policy prompt has {text}: add --prompt TEXT to go with each image")
    return artifacts, dataclasses.replace(columns, extra=tuple(sorted(needed - {"text"})))


def local_batches(inputs, artifacts, columns, fmt, done, batch_size, window, explain, device, dtype, onnx=None):
    """The scan's windows of records on this machine, on the ONNX export when given, else on the
    policies' torch model."""
    from guard.check.engine import GuardSet
    from guard.scanning.scanner import scan_windows

    items = skip_done(read_items(inputs, columns, fmt), done)
    guards = onnx if onnx is not None else GuardSet.with_model(artifacts, device=device, dtype=dtype)
    return scan_windows(items, guards, batch_size=batch_size, window=window, votes=explain, explain=explain)


def ray_batches(inputs, artifacts, columns, fmt, done, ray, batch_size, window, explain, device, dtype):
    from guard.scanning.ray_data import ray_scan_windows

    return ray_scan_windows(
        inputs,
        artifacts,
        columns,
        fmt=fmt,
        progress=done,
        address=ray.address,
        workers=ray.workers,
        verbose=ray.verbose,
        batch_size=batch_size,
        window=window,
        votes=explain,
        explain=explain,
        device=device,
        dtype=dtype,
    )


def write(batches: Iterator[list[dict]], out: str, done: Progress, *, total=None, show: bool = False) -> Summary:
    """Write each window's records as it completes (after what `done` holds), with a progress
    bar when `show`; returns the summary of all records. The writer is closed however it ends."""
    from tqdm.auto import tqdm

    summary = done.summary
    writer = JsonlWriter(staging_path(out))
    try:
        with (
            polite_sigterm(),
            tqdm(total=total, initial=done.records, unit="item", disable=not show, file=sys.stderr) as bar,
        ):
            for records in batches:
                writer.write(records)
                for record in records:
                    summary.add(record)
                bar.update(len(records))
    except KeyboardInterrupt:
        writer.close()
        raise ScanInterrupted(summary.items) from None
    except OSError as exc:  # a full disk, say: what was written stays, and resume continues it
        raise OutputError(f"cannot write {out} ({exc.strerror or exc}); continue with --resume once fixed") from None
    finally:
        writer.close()
    return summary


@contextmanager
def polite_sigterm():
    """SIGTERM raises KeyboardInterrupt inside the block (main thread only), as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt
