"""`guard serve --workers N`: N model processes behind one listening socket, and their supervisor.

The supervisor (the process the operator started) binds the port, then starts N workers with
the spawn method (a fresh interpreter each: no torch or OpenMP state copied across a fork). Each
worker loads the policies and the model, warms it up and serves the shared socket with its own
event loop, micro-batcher and audit writer; the kernel hands each new connection to one of them.
They share the database: SQLite in WAL mode with a busy timeout (guard.store.database) takes
their audit commits one at a time, PostgreSQL takes them as it takes any clients'.

A worker that fails to start (a model that cannot load) stops them all with its one-line error.
One that dies later is started again. SIGTERM or Ctrl-C reaches every worker, each of which
finishes its requests, its queue and its audit rows (guard.serve.main) before the supervisor exits.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from dataclasses import replace

from guard.errors import GuardError
from guard.serve.main import ServeSettings, build_server, prepare_shared, start_logging

log = logging.getLogger("guard.serve")

WORKER_ENV = "GUARD_SERVE_WORKER"  # the worker's index, for its logs and its X-Guard-Worker header


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (IPv4 or IPv6), for the workers to listen on together."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise GuardError(f"cannot resolve --host {host} ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise GuardError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


def _worker_main(index: int, settings: ServeSettings, sock: socket.socket, events) -> None:
    """One worker: load, warm up, serve the shared socket until SIGTERM (a spawned process)."""
    from guard.serve.logs import setup_logging

    os.environ[WORKER_ENV] = str(index)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the supervisor decides
    setup_logging(settings.log_level)
    config = replace(settings.config, worker=index)
    try:
        server = build_server(replace(settings, config=config))
    except GuardError as exc:
        events.put(("failed", index, str(exc)))
        raise SystemExit(2) from None
    events.put(("started", index, os.getpid()))
    server.run(sockets=[sock])


class Supervisor:
    """Starts the workers, restarts one that dies, and stops them all on SIGTERM or SIGINT."""

    def __init__(self, settings: ServeSettings, workers: int, sock: socket.socket, start_timeout: float = 600.0):
        self.settings = settings
        self.workers = workers
        self.sock = sock
        self.start_timeout = start_timeout
        self.context = multiprocessing.get_context("spawn")
        self.events = self.context.Queue()
        self.processes: dict[int, multiprocessing.Process] = {}
        self.stopping = False

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self.workers):
                self._start(index)
            self._wait_started()
            log.info("workers serving", extra={"workers": self.workers, "pids": self.pids})
            while not self.stopping:
                self._restart_dead()
                time.sleep(0.2)
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes.values()]

    def _start(self, index: int) -> None:
        process = self.context.Process(
            target=_worker_main,
            args=(index, self.settings, self.sock, self.events),
            name=f"guard-serve-worker-{index}",
            daemon=False,
        )
        process.start()
        self.processes[index] = process

    def _wait_started(self) -> None:
        """Until every worker has loaded its model; the first one that cannot is everyone's error."""
        started: set[int] = set()
        deadline = time.monotonic() + self.start_timeout
        while len(started) < self.workers and not self.stopping:
            try:
                kind, index, detail = self.events.get(timeout=0.2)
            except Exception:  # queue.Empty: check the processes are still there
                dead = [i for i, p in self.processes.items() if i not in started and not p.is_alive()]
                if dead:
                    raise GuardError(f"worker {dead[0]} exited with code {self.processes[dead[0]].exitcode}") from None
                if time.monotonic() > deadline:
                    raise GuardError(f"the workers did not start within {self.start_timeout:g} s") from None
                continue
            if kind == "failed":
                raise GuardError(detail)
            started.add(index)
            log.info("worker started", extra={"worker": index, "pid": detail})

    def _restart_dead(self) -> None:
        for index, process in list(self.processes.items()):
            if not process.is_alive() and not self.stopping:
                log.error("worker died; starting it again", extra={"worker": index, "exitcode": process.exitcode})
                self._start(index)

    def _stop(self, signum, frame) -> None:
        self.stopping = True

    def _stop_all(self) -> None:
        """SIGTERM each worker (a graceful shutdown), then wait; SIGKILL any that outlive the wait."""
        self.stopping = True
        for process in self.processes.values():
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + self.settings.shutdown_timeout + 30  # + the queue and the audit log
        for process in self.processes.values():
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker did not stop in time; killed", extra={"pid": process.pid})
                process.kill()
                process.join(5)
        self.sock.close()


def run_workers(settings: ServeSettings, workers: int) -> None:
    """Serve with `workers` model processes on settings.host:settings.port until SIGTERM or SIGINT."""
    start_logging(settings)
    prepare_shared(settings)  # migrations, the audit secret, the policy names: once, before any worker
    sock = bind(settings.host, settings.port)
    Supervisor(settings, workers, sock).run()
