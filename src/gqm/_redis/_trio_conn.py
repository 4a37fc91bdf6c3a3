"""The resp driver's pooled connection on trio: the socket itself, below the streams.

anyio's socket stream on trio wraps trio's, which wraps a trio socket, which wraps the
socket: each ``send`` passes three layers and yields to the scheduler once more after
writing (trio's checkpoint semantics), and each ``receive`` allocates a new ``bytes``.
A request here writes with plain non-blocking ``send`` calls (waiting only if the
kernel buffer is full), then waits for the socket to be readable and parses the
replies from one preallocated buffer, all in one native trio cancel scope.

The guarantees are the driver's (see ``_resp``): a request that is cancelled, times
out or breaks leaves the connection unusable and the pool closes it. TLS connections
keep anyio streams (the socket carries ciphertext); so do subscriptions. The anyio
stream that opened the socket is kept only to close it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import anyio
import trio
from anyio.abc import SocketAttribute

from ._resp import _MORE, _PUSH, _READ_SIZE, _new_reader, close_stream

if TYPE_CHECKING:
    import socket

    from anyio.abc import SocketStream

__all__ = ["TrioConnection"]


class TrioConnection:
    """One plain TCP or unix socket connection on trio (see the module docstring). Not
    safe for concurrent use: the pool leases it to one request at a time."""

    __slots__ = ("_buffer", "_reader", "_sock", "_stream", "last_used")

    def __init__(self, stream: SocketStream) -> None:
        self._stream = stream
        self._sock: socket.socket = stream.extra(SocketAttribute.raw_socket)
        self._reader = _new_reader()
        self._buffer = bytearray(_READ_SIZE)
        self.last_used = 0.0

    @staticmethod
    def now() -> float:
        return trio.current_time()

    async def request(self, payload: bytes, count: int, timeout: float | None) -> Any:
        """Send ``payload`` and read ``count`` replies (0: one reply, not in a list)
        within ``timeout`` seconds (``TimeoutError`` after that)."""
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        with trio.CancelScope(deadline=deadline) as scope:
            await self._send(payload)
            return await self._receive(count)
        assert scope.cancelled_caught
        raise TimeoutError

    async def _send(self, payload: bytes) -> None:
        sock = self._sock
        view = memoryview(payload)
        while True:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                sent = 0
            if sent == len(view):
                return  # at once, almost always: a request fits the kernel's buffer
            view = view[sent:]
            await trio.lowlevel.wait_writable(sock)

    async def _receive(self, count: int) -> Any:
        sock, reader, buffer = self._sock, self._reader, self._buffer
        replies: list[Any] = []
        wanted = count or 1
        while len(replies) < wanted:
            reply = reader.gets()
            if reply is _MORE:
                await trio.lowlevel.wait_readable(sock)
                try:
                    received = sock.recv_into(buffer)
                except BlockingIOError:
                    continue
                if not received:
                    raise anyio.EndOfStream
                reader.feed(buffer, 0, received)  # type: ignore[arg-type]  # any buffer
            elif type(reply) is not _PUSH:
                replies.append(reply)
        return replies if count else replies[0]

    async def aclose(self) -> None:
        await close_stream(self._stream)
