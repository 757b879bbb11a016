"""Start `guard serve`: load the policies and the model once, then run the app under uvicorn.

Everything that can fail on the operator's input (database, policy names, model, keys) fails
before the port is opened, with a one-line GuardError. SIGTERM or Ctrl-C stops accepting
connections, lets in-flight requests finish (up to `shutdown_timeout`), then finishes the queue
and the audit log.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from guard.errors import GuardError, need_extra

log = logging.getLogger("guard.serve")

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_guards(
    db: str | None,
    policies: Sequence[str] | None,
    device: str,
    dtype: str | None,
    *,
    onnx_dir: str | None = None,
    threads: int | None = None,
):
    """The chosen policies (all of the database's by default; they must share one model) on their
    model, or with `onnx_dir` the ONNX export there (one policy, on onnxruntime with `threads`);
    the database holds the audit log either way."""
    from guard.check.engine import GuardSet
    from guard.store.database import Store

    store = Store.open(db)
    if onnx_dir is not None:
        from guard.onnx.engine import open_export

        return store, open_export(onnx_dir, policies, threads=threads)
    artifacts = store.load_artifacts(policies, every=True)
    models = {art.model_fingerprint: art.model_reference for art in artifacts}
    if len(models) > 1:
        listing = "; ".join(
            f"{ref}: {', '.join(a.name for a in artifacts if a.model_fingerprint == fp)}" for fp, ref in models.items()
        )
        raise GuardError(f"the policies run on {len(models)} models ({listing}); choose those of one with -p NAME")
    return store, GuardSet.with_model(artifacts, device=device, dtype=dtype)


@dataclass
class ServeSettings:
    """Everything one server process needs to start: picklable, so it travels to a spawned worker
    (guard.serve.workers)."""

    db: str | None
    policies: list[str] | None
    host: str
    port: int
    device: str
    dtype: str | None
    config: object  # guard.serve.service.ServeConfig
    log_level: str = "info"
    shutdown_timeout: float = 30.0
    engine: str | None = None  # torch or onnx (guard.onnx.choice)
    onnx_dir: str | None = None  # the ONNX export a server runs on


def serve(settings: ServeSettings) -> None:
    """Serve in this process until SIGTERM or Ctrl-C (`--workers 1`)."""
    start_logging(settings)
    build_server(settings).run()


def start_logging(settings: ServeSettings) -> None:
    """Check the serve extra is installed, start the JSON logs, warn of an open address, and fix
    the torch threads of each model worker (config.threads) before anything loads."""
    from guard.onnx.choice import wants_onnx

    wants_onnx(settings.engine, settings.onnx_dir)  # a bad choice fails before anything loads
    for module in ("uvicorn", "fastapi", "prometheus_client"):
        need_extra(module, "guard serve", "serve")
    from guard.serve.logs import setup_logging

    setup_logging(settings.log_level)
    config = settings.config
    if not config.keys and not is_loopback(settings.host):
        log.warning(
            "serving without API keys on a non-loopback address: anyone who can reach it can use it",
            extra={"host": settings.host},
        )
    from guard.models import set_threads

    if config.threads is None and not os.environ.get("GUARD_THREADS"):
        config.threads = threads_per_worker(config.workers)
    set_threads(config.threads)  # checks --threads / GUARD_THREADS now; the worker sets it again for itself


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """torch threads for each model worker when neither --threads nor GUARD_THREADS says: the
    cores this process may use less one, shared out among the workers, at least one each.

    The core kept back is the HTTP side's (event loop, JSON, tokenising): with every core in
    torch's threads, they spin against it (issue 21: on 2 cores, --threads 1 answered 2.5-4.3x the
    requests/s of torch's default of 2; BENCHMARKS.md, "serve: threads and workers")."""
    if cores is None:
        cores = available_cores()
    return max(1, (cores - 1) // max(1, workers))


def available_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may run on, bounded by a cgroup v2 CPU quota (a container's CPU
    limit: it sees every core of its node but gets only its quota's worth of time)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, math.ceil(int(quota) / int(period))))


def prepare_shared(settings: ServeSettings) -> None:
    """What the workers share, made once before any starts: the database migrated and its policies
    found (a bad name fails here, with one line), and the audit log's secret file created."""
    from guard.store.audit import AuditKey
    from guard.store.database import Store

    store = Store.open(settings.db)
    if settings.onnx_dir is None:  # an ONNX server's policy is the export's, not the database's
        store.load_artifacts(settings.policies, every=True)
    if settings.config.audit:
        AuditKey.for_store(store, settings.config.audit_secret)


def build_server(settings: ServeSettings):
    """The uvicorn server of one process: policies and model loaded, service and app made."""
    import uvicorn

    from guard.serve.app import create_app
    from guard.serve.protocol import protocol_class
    from guard.serve.service import Service

    config = settings.config
    # the choice was checked by start_logging: an export folder means the ONNX engine
    store, guards = load_guards(
        settings.db,
        settings.policies,
        settings.device,
        settings.dtype,
        onnx_dir=settings.onnx_dir,
        threads=config.threads,
    )
    service = Service(guards, config, store=store)
    app = create_app(service)
    warn_if_readable(store)
    _log_start(settings.host, settings.port, guards, config, "torch" if settings.onnx_dir is None else "onnx")
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=settings.shutdown_timeout,
            server_header=False,
            http=protocol_class(config.header_timeout_s, config.max_connections),
            timeout_keep_alive=config.keep_alive_s,
        )
    )


def _log_start(host: str, port: int, guards, config, engine: str = "torch") -> None:
    log.info(
        "serving",
        extra={
            "host": host,
            "port": port,
            "policies": guards.names,
            "api_keys": len(config.keys),
            "api_key_ids": config.keys.ids,  # keyed hashes, as the audit log records them
            "audit": config.audit,
            "max_batch": config.max_batch,
            "forward_batch": config.forward_batch,
            "max_wait_ms": config.max_wait_ms,
            "max_queue": config.max_queue,
            "threads": config.threads,
            "worker": config.worker,
            "versions": {art.name: art.version for art in guards.artifacts},
            "engine": engine,
            "reload": "policies compiled while serving are picked up only at restart",
        },
    )


def warn_if_readable(store) -> None:
    """A warning when the SQLite database (policies, and with --audit the audit log) can be read
    by other users: guard creates it 0600, an older guard or a copy may have left it 0644."""
    from guard.store.database import sqlite_file

    path = sqlite_file(str(store.engine.url))
    try:
        mode = path.stat().st_mode if path is not None else 0
    except OSError:
        return
    if mode & 0o077:
        log.warning("the database is readable by other users: chmod 600 it", extra={"path": str(path)})
