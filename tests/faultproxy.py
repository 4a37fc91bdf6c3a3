"""Fault injection for the Redis-side reliability scenarios.

:class:`FaultProxy` is a TCP proxy on anyio (asyncio and trio) that sits between gqm and
a real redis-server on loopback and misbehaves on request:

* pass-through (the default);
* :meth:`FaultProxy.reset`: abort every current connection with a TCP RST, on both sides;
* :meth:`FaultProxy.blackhole`: keep accepting and reading, but forward nothing in
  either direction until :meth:`FaultProxy.heal` (a network partition: what was held is
  delivered when it heals, as TCP retransmission would);
* :meth:`FaultProxy.drop_reply_after_forward`: forward the next ``n`` commands to Redis,
  then abort the connection when the reply comes back instead of relaying it (the
  classic lost acknowledgement: the write happened, the client never hears of it);
* :meth:`FaultProxy.latency`: delay every chunk by some seconds;
* :attr:`FaultProxy.stats`: counters of what it did.

:class:`RedisProcess` runs a private redis-server subprocess with its own directory and
options (AOF, maxmemory), which can be killed with SIGKILL and started again on the same
port and directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

import anyio
from anyio.abc import SocketAttribute, SocketStream

from gqm._embedded import find_redis_server, free_port, wait_until_ready

if TYPE_CHECKING:
    from types import TracebackType

    from anyio.abc import TaskGroup

_CHUNK = 65536


@dataclass
class ProxyStats:
    """What the proxy did so far."""

    accepted: int = 0
    #: Connections aborted by :meth:`FaultProxy.reset` (each counted once).
    resets: int = 0
    #: Connections aborted after their command reached Redis (lost replies).
    dropped_replies: int = 0
    #: Chunks held back by a blackhole (in either direction).
    held_chunks: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    #: Connections the proxy could not open to Redis (it was down).
    upstream_failures: int = 0


def _abort(stream: SocketStream) -> None:
    """Make closing ``stream`` send a RST instead of a FIN (SO_LINGER with timeout 0)."""
    with contextlib.suppress(OSError, anyio.TypedAttributeLookupError):
        sock = stream.extra(SocketAttribute.raw_socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Link:
    """One proxied connection: the client's socket, Redis's socket and their pumps."""

    def __init__(self, client: SocketStream) -> None:
        self.client = client
        self.upstream: SocketStream | None = None
        self.scope = anyio.CancelScope()
        #: Set when this connection must die as soon as Redis answers.
        self.doomed = False
        self.aborted = False

    def abort(self) -> None:
        """Abort both sides with RST (the pumps are cancelled; closing sends the RST)."""
        self.aborted = True
        _abort(self.client)
        if self.upstream is not None:
            _abort(self.upstream)
        self.scope.cancel()


class FaultProxy:
    """``async with FaultProxy(host, port) as proxy:`` proxies ``proxy.url`` to Redis."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.stats = ProxyStats()
        self.port = 0
        self._links: set[_Link] = set()
        self._idle = anyio.Event()
        self._idle.set()
        self._flowing = anyio.Event()
        self._flowing.set()
        self._drop_next = 0
        self._drop_match: bytes | None = None
        self._delay = 0.0
        self._tg: TaskGroup | None = None
        self._listener: anyio.abc.Listener[SocketStream] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """Connections open right now."""
        return len(self._links)

    async def wait_no_connections(self) -> None:
        """Wait until no connection is open through the proxy."""
        await self._idle.wait()

    # -- modes ----------------------------------------------------------------------

    def reset(self) -> int:
        """Abort every current connection with RST; returns how many were aborted."""
        links = list(self._links)
        for link in links:
            if not link.aborted:
                self.stats.resets += 1
                link.abort()
        return len(links)

    def blackhole(self) -> None:
        """Stop forwarding in both directions (connections stay open; new ones are
        accepted) until :meth:`heal`."""
        if self._flowing.is_set():
            self._flowing = anyio.Event()

    def heal(self) -> None:
        """End a blackhole: everything held back is delivered."""
        self._flowing.set()

    @property
    def blackholed(self) -> bool:
        return not self._flowing.is_set()

    def drop_reply_after_forward(self, n: int = 1, *, match: bytes | None = None) -> None:
        """Lose the replies of the next ``n`` commands: forward each to Redis, then abort
        its connection instead of relaying the answer. With ``match``, only chunks that
        contain those bytes (e.g. ``b"EVALSHA"``) count."""
        self._drop_next = n
        self._drop_match = match

    @property
    def drops_pending(self) -> int:
        return self._drop_next

    def latency(self, seconds: float) -> None:
        """Delay every chunk, both ways, by ``seconds`` (0 to stop)."""
        self._delay = seconds

    def passthrough(self) -> None:
        """Back to normal: no blackhole, no pending drops, no latency."""
        self.heal()
        self._drop_next = 0
        self._delay = 0.0

    # -- plumbing -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = self._listener.extra(SocketAttribute.local_port)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._listener.serve, self._handle)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tg is not None
        self.heal()
        for link in list(self._links):
            link.scope.cancel()
        self._tg.cancel_scope.cancel()
        try:
            # The body's own exception is left to propagate as it is: the proxy's tasks
            # never fail, so there is nothing of theirs to report with it.
            await self._tg.__aexit__(None, None, None)
        finally:
            if self._listener is not None:
                with anyio.CancelScope(shield=True):
                    await self._listener.aclose()

    async def _handle(self, client: SocketStream) -> None:
        self.stats.accepted += 1
        link = _Link(client)
        self._links.add(link)
        if self._idle.is_set():
            self._idle = anyio.Event()
        try:
            with link.scope:
                try:
                    link.upstream = await anyio.connect_tcp(self.upstream_host, self.upstream_port)
                except OSError:
                    # Redis is down: the client sees its connection reset, as it would
                    # when connecting to a dead port.
                    self.stats.upstream_failures += 1
                    _abort(client)
                    return
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._pump, link, client, link.upstream, True, tg)
                    tg.start_soon(self._pump, link, link.upstream, client, False, tg)
        finally:
            self._links.discard(link)
            if not self._links:
                self._idle.set()
            with anyio.CancelScope(shield=True):
                for stream in (client, link.upstream):
                    if stream is not None:
                        with contextlib.suppress(Exception):
                            await stream.aclose()

    async def _pump(
        self, link: _Link, src: SocketStream, dst: SocketStream, up: bool, tg: TaskGroup
    ) -> None:
        try:
            while True:
                try:
                    data = await src.receive(_CHUNK)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    break
                if not self._flowing.is_set():
                    self.stats.held_chunks += 1
                    await self._flowing.wait()
                if self._delay:
                    await anyio.sleep(self._delay)
                if not up and link.doomed:
                    # The reply to a doomed command: Redis did the work; the client must
                    # not hear of it.
                    self.stats.dropped_replies += 1
                    link.abort()
                    return
                if (
                    up
                    and self._drop_next > 0
                    and (self._drop_match is None or self._drop_match in data)
                ):
                    self._drop_next -= 1
                    link.doomed = True
                try:
                    await dst.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    break
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
        finally:
            # One side is gone: take the other down with it.
            tg.cancel_scope.cancel()


class RedisProcess:
    """A private redis-server subprocess on a fixed loopback port and directory.

    ``kill()`` sends SIGKILL (no shutdown save); ``start()`` again reuses the port and
    directory, so an AOF written before the kill is replayed.
    """

    def __init__(self, *args: str, port: int | None = None) -> None:
        self.executable = os.environ.get("GQM_TEST_REDIS_SERVER") or find_redis_server()
        self.port = port or free_port()
        self.args = list(args)
        self.dir = Path(tempfile.mkdtemp(prefix="gqm-faults-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--maxmemory-policy", "noeviction",
            *self.args,
        ]  # fmt: skip

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until it answers PING (and has loaded its data)."""
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if wait_until_ready(self.process, self.port, timeout):
            return
        self.kill()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        """SIGKILL the server and reap it."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    def terminate(self) -> None:
        """Stop the server gracefully (SIGTERM: it flushes its AOF and exits)."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def wipe(self) -> None:
        """Delete the server's data files (while it is stopped)."""
        assert self.process is None
        for entry in self.dir.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SentinelProcess(RedisProcess):
    """A redis-server in Sentinel mode watching ``master_name`` at ``master_port``."""

    def __init__(self, master_name: str, master_port: int, *settings: str) -> None:
        super().__init__()
        self.config = self.dir / "sentinel.conf"
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.dir}",
            f"sentinel monitor {master_name} 127.0.0.1 {master_port} 2",
            *settings,
        ]
        self.config.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [self.executable, str(self.config), "--sentinel"]
