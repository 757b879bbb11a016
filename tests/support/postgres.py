"""A throw-away PostgreSQL server for tests: initdb + pg_ctl into a temporary folder, on a free
loopback port, trust authentication, stopped and deleted afterwards. As root (CI), the server
runs as the `postgres` user (PostgreSQL refuses to run as root).

"Afterwards" holds however the process ends short of SIGKILL: `stop()`, or else at garbage
collection or interpreter exit (a finalizer; a test session interrupted with Ctrl-C ends that
way), or on SIGTERM or SIGHUP (each live server is stopped, then the signal does what it did
before). A start that fails stops and deletes what it began."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import uuid
import weakref
from pathlib import Path

_live: set[weakref.finalize] = set()  # the cleanups of servers not yet stopped
_previous: dict = {}  # signal number: its handler before _hook_signals
_signals_hooked = False


def server_bin() -> Path | None:
    """The folder with initdb and pg_ctl: on PATH, or the newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(bindir: Path, as_user: list[str], folder: Path, *args: str) -> None:
    cmd = [*as_user, str(bindir / args[0]), *args[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=folder)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {proc.stderr.strip() or proc.stdout.strip()}")


def _cleanup(bindir: Path, as_user: list[str], folder: Path) -> None:
    """Stop the server of `folder` if it runs, and delete the folder (holds no reference to the
    PostgresServer, so that it can run as its finalizer)."""
    if (folder / "data" / "postmaster.pid").exists():
        with contextlib.suppress(Exception):
            _run(bindir, as_user, folder, "pg_ctl", "-D", str(folder / "data"), "-m", "fast", "-w", "stop")
    shutil.rmtree(folder, ignore_errors=True)


def _stop_all_then_resignal(signum, frame) -> None:
    for cleanup in list(_live):
        cleanup()
    handler = _previous.get(signum, signal.SIG_DFL)
    if callable(handler):
        handler(signum, frame)
        return
    signal.signal(signum, handler)
    if handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)


def _hook_signals() -> None:
    """Once, from the main thread: SIGTERM and SIGHUP stop every live server first."""
    global _signals_hooked
    if _signals_hooked or threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(signum)
        if previous is signal.SIG_IGN or previous is None:
            continue  # ignored (or set outside Python): leave it so
        _previous[signum] = previous
        signal.signal(signum, _stop_all_then_resignal)
    _signals_hooked = True


class PostgresServer:
    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.as_user: list[str] = []
        owner = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no 'postgres' user to run the server") from None
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.folder = Path(tempfile.mkdtemp(prefix="guard-pg-"))
        self._cleanup = weakref.finalize(self, _cleanup, bindir, self.as_user, self.folder)  # also at exit
        _live.add(self._cleanup)
        _hook_signals()
        if owner is not None:
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
        self.data = self.folder / "data"
        self.port = free_port()

    def _run(self, *args: str) -> None:
        _run(self.bindir, self.as_user, self.folder, *args)

    def start(self) -> PostgresServer:
        try:
            self._run("initdb", "-D", str(self.data), "-U", "guard", "--auth=trust", "-E", "UTF8", "--no-sync")
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
            )
            self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server and delete its folder; once (later calls do nothing)."""
        _live.discard(self._cleanup)
        self._cleanup()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://guard@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database on this server; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=guard dbname=postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)
