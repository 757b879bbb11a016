"""Start `guard serve`: load the policies and the model once, then run the app under uvicorn.

Everything that can fail on the operator's input (database, policy names, model, keys) fails
before the port is opened, with a one-line GuardError. SIGTERM or Ctrl-C stops accepting
connections, lets in-flight requests finish (up to `shutdown_timeout`), then finishes the queue
and the audit log.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

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


def serve(
    *,
    db: str | None,
    policies: Sequence[str] | None,
    host: str | None,
    port: int,
    device: str,
    dtype: str | None,
    config,
    log_level: str = "info",
    shutdown_timeout: float = 30.0,
    engine: str | None = None,
    onnx_dir: str | None = None,
) -> None:
    from guard.onnx.choice import wants_onnx

    onnx = wants_onnx(engine, onnx_dir)  # a bad choice fails before anything loads
    for module in ("uvicorn", "fastapi", "prometheus_client"):
        need_extra(module, "guard serve", "serve")
    import uvicorn

    from guard.serve.app import create_app
    from guard.serve.logs import setup_logging
    from guard.serve.protocol import protocol_class
    from guard.serve.service import Service

    setup_logging(log_level)
    if host is None:
        host = LOOPBACK
    elif not config.keys and not is_loopback(host):
        log.warning(
            "serving without API keys on a non-loopback address: anyone who can reach it can use it",
            extra={"host": host},
        )
    from guard.models import set_threads

    set_threads(config.threads)  # checks --threads / GUARD_THREADS now; the worker sets it again for itself
    store, guards = load_guards(
        db, policies, device, dtype, onnx_dir=onnx_dir if onnx else None, threads=config.threads
    )
    service = Service(guards, config, store=store)
    app = create_app(service)
    warn_if_readable(store)
    _log_start(host, port, guards, config, "onnx" if onnx else "torch")
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=shutdown_timeout,
            server_header=False,
            http=protocol_class(config.header_timeout_s, config.max_connections),
            timeout_keep_alive=config.keep_alive_s,
        )
    )
    server.run()


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
