"""`guard scan --ray`: the same scan on Ray Data, for corpora one machine cannot take in time.

The inputs are planned into shards (`guard.scanning.readers.plan`: line files cut at line starts,
Parquet row groups, slices of image folders); a Ray dataset of those shards is read by Ray
tasks (`flat_map(read_shard)`: each worker reads its own piece of the files, which must be on
storage every node sees), then `map_batches` runs an actor pool in which each actor loads the
model and the compiled policies once and calls `check_window`, the same per-window function as
the local scan. The driver takes the records back in input order (`preserve_order`) and writes
them with the same writer, so the results equal a local run's, record for record.

The policies travel to the actors as compiled artifacts (no database access on the workers);
the model is loaded on each actor from the policy's model reference (a path every node has, or
the bundled default model).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Sequence

from guard.errors import GuardError, need_extra
from guard.scanning.readers import Columns, ScanItem, Shard, plan, read_shard
from guard.scanning.writers import OutputError, Progress

SHARD_BYTES = 64 << 20  # a line file is cut into pieces of about this size
RAY_LOGGERS = ("ray", "ray.data", "ray.serve")


def _ray():
    need_extra("ray", "--ray", "ray")
    import ray
    import ray.data  # noqa: F401

    return ray


def resume_shards(shards: list[Shard], progress: Progress, columns: Columns) -> list[Shard]:
    """The shards left after the first `progress.records` items: whole shards dropped where
    their item count is known, the first partly-done one told how many items to skip. The last
    skipped item's id is checked against the results' last id, as the local resume does."""
    left = progress.records
    if not left:
        return shards
    for i, shard in enumerate(shards):
        if shard.count is not None and shard.count < left:
            left -= shard.count
            continue
        # this shard holds the last written item: read its first `left` items to check the id
        head = list(read_shard(dataclasses.replace(shard, skip=0), columns))[:left] if left else []
        if len(head) < left:
            raise OutputError("the results hold more records than the inputs have items: not the same inputs")
        if head and json.dumps(head[-1].id) != json.dumps(progress.last_id):
            raise OutputError(
                f"the results' record {progress.records} is id {progress.last_id!r}, but input item "
                f"{progress.records} is id {head[-1].id!r}: not the same inputs (start again with --overwrite)"
            )
        return [dataclasses.replace(shard, skip=left), *shards[i + 1 :]]
    if left:
        raise OutputError("the results hold more records than the inputs have items: not the same inputs")
    return []


class ScanActor:
    """One model replica: loads the model and the policies once, then checks windows."""

    def __init__(self, artifacts, batch_size: int, votes: bool, device: str, dtype: str | None, explain: bool = False):
        from guard.check.engine import GuardSet

        self.guards = GuardSet.with_model(artifacts, device=device, dtype=dtype)
        self.batch_size = batch_size
        self.votes = votes
        self.explain = explain

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from guard.scanning.scanner import check_window

        items = [ScanItem(**json.loads(raw)) for raw in batch["item"]]
        records = check_window(self.guards, items, self.batch_size, self.votes, explain=self.explain)
        return {"record": np.array([json.dumps(r, ensure_ascii=False) for r in records], dtype=object)}


def _read(shard_row: dict, columns: Columns) -> list[dict]:
    shard = Shard(**json.loads(shard_row["shard"]))
    return [{"item": json.dumps(dataclasses.asdict(item))} for item in read_shard(shard, columns)]


def ray_scan_windows(
    inputs: Sequence[str],
    artifacts: Sequence,
    columns: Columns,
    *,
    fmt: str | None = None,
    progress: Progress | None = None,
    address: str | None = None,
    workers: int = 1,
    batch_size: int = 16,
    window: int | None = None,
    votes: bool = False,
    explain: bool = False,
    device: str = "auto",
    dtype: str | None = None,
    shard_bytes: int = SHARD_BYTES,
    verbose: bool = False,
) -> Iterator[list[dict]]:
    """Records of the inputs (after the first `progress.records` items), a block at a time, in
    input order, computed by `workers` Ray actors. Uses the Ray instance already started in this
    process, else connects to `address`, else starts one locally (and stops it at the end).
    Ray's own logs and progress bars show only when `verbose`."""
    if "-" in inputs:
        raise GuardError("--ray reads files every worker can open: save stdin to a file first")
    ray = _ray()
    from guard.scanning.scanner import WINDOW_BATCHES

    shards = resume_shards(plan(inputs, fmt, shard_bytes), progress or Progress(), columns)
    started = _start(ray, address, verbose)
    try:
        dataset = _dataset(
            ray,
            shards,
            columns,
            actor_kwargs={
                "artifacts": list(artifacts),
                "batch_size": batch_size,
                "votes": votes,
                "explain": explain,
                "device": device,
                "dtype": dtype,
            },
            rows=window or batch_size * WINDOW_BATCHES,
            workers=workers,
            verbose=verbose,
        )
        if not shards:
            return
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                yield [json.loads(raw) for raw in batch["record"]]
        except ray.exceptions.RayError as exc:  # the scan itself failed (a worker could not load the model, say)
            lines = [line for line in str(exc).splitlines() if line.strip()]
            raise GuardError(f"the Ray scan failed: {lines[-1] if lines else type(exc).__name__}") from None
    finally:
        if started:
            ray.shutdown()


def _start(ray, address: str | None, verbose: bool) -> bool:
    """Start (or join) Ray unless this process already runs it; True if started here. Ray's own
    logs reach stderr only when `verbose`: guard reports progress and failures itself."""
    level = logging.INFO if verbose else logging.ERROR
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=verbose, logging_level=level)
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    return started


def _dataset(ray, shards, columns: Columns, *, actor_kwargs: dict, rows: int, workers: int, verbose: bool):
    """The Ray Data pipeline: one read task per shard, then `workers` scan actors, in input order."""
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # records come back in input order
    context.enable_progress_bars = verbose  # guard draws its own; Ray's too with --verbose
    context.print_on_execution_start = verbose  # Ray Data's plan, printed when a dataset runs
    gpus = ray.cluster_resources().get("GPU", 0)
    return (
        ray.data.from_items([{"shard": json.dumps(dataclasses.asdict(s))} for s in shards])
        .repartition(max(len(shards), 1))  # one read task per shard
        .flat_map(_read, fn_kwargs={"columns": columns})
        .map_batches(
            ScanActor,
            fn_constructor_kwargs=actor_kwargs,
            batch_size=rows,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_gpus=min(1.0, gpus / workers) if gpus else 0,
        )
    )
