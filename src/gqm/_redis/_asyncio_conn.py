"""The resp driver's pooled connection on asyncio: a buffered protocol on the event loop.

On asyncio (and uvloop) anyio's socket streams pay for their generality on every
request: ``send`` yields to the loop once more after writing, and ``receive`` turns
reading on and off again (two ``epoll_ctl`` calls) around each wait; the deadline
scope and ``anyio.current_time()`` each look the running library up again. A request
here is one ``transport.write`` and one wait on a future that the protocol resolves
once the last reply is parsed: the socket stays registered for reading, replies are
parsed straight from one preallocated buffer (no allocation per read) and the timeout
is one timer per connection. A call costs about a third less CPU (``bench/drivers.py``).

The guarantees are the driver's (see ``_resp``): a request that is cancelled, times
out or breaks leaves the connection unusable and the pool closes it; a connection the
server closed fails the call that uses it next, never a later one silently.

This is the one module of ``gqm`` that imports asyncio (DESIGN §1 bans it elsewhere):
the driver imports and picks it only when the running async library is asyncio.
Subscriptions use anyio streams (``_resp._Connection``) on every backend.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import anyio

from ._resp import _MORE, _PUSH, _READ_SIZE, _new_reader

if TYPE_CHECKING:
    from ._resp import _Target

__all__ = ["AsyncioConnection"]


class _Protocol(asyncio.BufferedProtocol):
    """Parses what arrives into replies and hands them to the waiting request."""

    def __init__(self) -> None:
        self._reader = _new_reader()
        # A memoryview, not the bytearray: asyncio's TLS layer fills the rest of a
        # partly filled buffer through a slice of it, which must not be a copy.
        self._buffer = memoryview(bytearray(_READ_SIZE))
        #: The request in flight: its future, how many replies it wants, those read.
        self.waiter: asyncio.Future[list[Any]] | None = None
        self.wanted = 0
        self.replies: list[Any] = []
        #: Why the connection can no longer be used (set once, never cleared).
        self.failure: BaseException | None = None

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._reader.feed(self._buffer, 0, nbytes)  # type: ignore[arg-type]  # any buffer
        if self.waiter is not None:
            self.collect()
        # Else: nothing was asked (a RESP3 push, or a reply arriving after its request
        # was abandoned, which closes the connection anyway); it stays in the reader.

    def collect(self) -> None:
        """Move complete replies to ``replies``; resolve the waiter once it has all."""
        waiter = self.waiter
        assert waiter is not None
        reader, replies = self._reader, self.replies
        try:
            while len(replies) < self.wanted:
                reply = reader.gets()
                if reply is _MORE:
                    return
                if type(reply) is not _PUSH:
                    replies.append(reply)
        except Exception as err:  # a malformed stream: the reader's protocolError
            self.failure = err
            if not waiter.done():
                waiter.set_exception(err)
            return
        if not waiter.done():
            waiter.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.failure is None:
            self.failure = exc if exc is not None else anyio.EndOfStream()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(self.failure)

    def eof_received(self) -> bool:
        return False  # close the transport: Redis never half-closes a connection


class AsyncioConnection:
    """One connection on the running asyncio loop (see the module docstring). Not safe
    for concurrent use: the pool leases it to one request at a time."""

    __slots__ = ("_deadline", "_loop", "_protocol", "_transport", "_watchdog", "last_used")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.Transport,
        protocol: _Protocol,
    ) -> None:
        self._loop = loop
        self._transport = transport
        self._protocol = protocol
        self.last_used = 0.0
        #: The request's deadline (loop time), and the timer that enforces it.
        self._deadline = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    @classmethod
    async def connect(cls, target: _Target) -> AsyncioConnection:
        """Open a TCP (asyncio sets ``TCP_NODELAY``), TLS or unix socket connection;
        the caller bounds the wait (a cancel scope) and sets it up (AUTH, SELECT)."""
        loop = asyncio.get_running_loop()
        if target.path is not None:
            transport, protocol = await loop.create_unix_connection(_Protocol, target.path)
        else:
            tls = target.ssl_context
            transport, protocol = await loop.create_connection(
                _Protocol,
                target.host,
                target.port,
                ssl=tls,
                server_hostname=target.host if tls is not None else None,
            )
        return cls(loop, transport, protocol)

    @staticmethod
    def now() -> float:
        # Not loop.time(): uvloop's is cached per loop iteration, in whole milliseconds.
        return time.monotonic()

    async def request(self, payload: bytes, count: int, timeout: float | None) -> Any:
        """Send ``payload`` and read ``count`` replies (0: one reply, not in a list)
        within ``timeout`` seconds (``TimeoutError`` after that)."""
        protocol = self._protocol
        if protocol.failure is not None:
            raise protocol.failure
        loop = self._loop
        waiter: asyncio.Future[list[Any]] = loop.create_future()
        protocol.waiter = waiter
        protocol.wanted = count or 1
        protocol.replies = []
        self._transport.write(payload)
        if timeout is not None:
            # One timer per connection, not one per request: it is left to run out after
            # a request completes, and when it fires it only looks whether the request
            # then in flight is overdue, else sets itself for that request's deadline.
            self._deadline = deadline = loop.time() + timeout
            watchdog = self._watchdog
            if watchdog is None or watchdog.when() > deadline:
                if watchdog is not None:
                    watchdog.cancel()
                self._watchdog = loop.call_at(deadline, self._watch)
        try:
            replies = await waiter
        finally:
            protocol.waiter = None
        return replies if count else replies[0]

    def _watch(self) -> None:
        self._watchdog = None
        waiter = self._protocol.waiter
        if waiter is None or waiter.done():
            return  # no request in flight: the next one sets the timer again
        if self._loop.time() >= self._deadline:
            waiter.set_exception(TimeoutError())
        else:
            self._watchdog = self._loop.call_at(self._deadline, self._watch)

    async def aclose(self) -> None:
        """Close at once, discarding anything unsent or unread."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._transport.abort()
