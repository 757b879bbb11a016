"""Real servers for the serve tests: `guard serve` in a subprocess, or the app under uvicorn in a
thread, each on a free 127.0.0.1 port, always shut down on exit."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"guard serve exited with {process.returncode}:\n{log.read_text() if log else ''}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"no server at {url} after {timeout} s:\n{log.read_text() if log else ''}")


def wait_warm(url: str, timeout: float) -> None:
    """Until /readyz no longer says the model is warming up (its first forward of every policy)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(f"{url}/readyz", timeout=30)
        if response.status_code == 200 or not any("warming up" in p for p in response.json().get("problems", [])):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} still warming up after {timeout} s")


class ServeProcess:
    """`guard serve ARGS` on a free port; `url`, `log` (its stderr) and `process`."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None, timeout: float = 180):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "guard.cli", "serve", "--port", str(self.port), *args]
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        with open(log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=full_env)
        try:
            wait_healthy(self.url, timeout, self.process, log)
            wait_warm(self.url, timeout)
        except BaseException:
            self.kill()
            raise

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM (graceful shutdown) and wait; SIGKILL if it does not end in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.terminate()


@contextlib.contextmanager
def thread_server(app, timeout: float = 30):
    """The app under uvicorn in a thread, on a socket bound here (no port race); yields its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-thread server did not start")
            time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
