"""A thin driver that speaks RESP itself, over anyio streams, parsed by hiredis.

It runs on asyncio and on trio alike, and exists for speed: a command costs a
fraction of the CPU time of redis-py or coredis (``bench/drivers.py``). Pooled
connections are an asyncio protocol on asyncio (``_asyncio_conn``) and the bare socket
on trio (``_trio_conn``), each about a third cheaper per request than anyio streams;
TLS on trio, subscriptions, and ``GQM_RESP_TRANSPORT=anyio`` use anyio streams.
It implements :class:`~gqm._redis._protocol.Driver` with these guarantees:

**Connections** are opened lazily from :class:`~gqm._redis._settings.RedisSettings`
(``redis://``, ``rediss://``, ``unix://`` or host/port), each one within
``connect_timeout``, including its setup: ``AUTH [username] password`` when a password
is configured, ``SELECT db`` when ``db`` is not 0. An AUTH or SELECT refusal is a
:class:`~gqm.errors.RedisConnectionError`, as with the other drivers. The protocol
is RESP2 (no ``HELLO``) unless ``protocol=3`` is asked for.

**The pool** holds up to ``max_connections`` (default 64) connections; a call waits up
to 30 s for one when all are busy. Each connection serves one request at a time, and
goes back to the pool only when its request completed cleanly: on *any* exception or
cancellation between writing a request and reading its last reply, the connection is
closed and dropped, so that no later call can read a reply meant for an earlier one.
This is the cancellation guarantee.

**Timeouts.** ``socket_timeout`` bounds each request (write and every reply); when it
expires the call raises :class:`~gqm.errors.RedisConnectionError` and the connection
is dropped. It applies to blocking commands too (a ``BLPOP key 30`` with a 10 s
socket timeout fails, as with redis-py).

**Reconnection.** A dead connection (EOF, reset) fails the call that was using it
with :class:`~gqm.errors.RedisConnectionError` - the call is never replayed, since
the command may have run - and drops every idle connection too (they are likely dead
as well: a restarted server, a ``CLIENT KILL``), so the next call connects afresh. An
idle connection older than ``health_check_interval`` is checked with a ``PING``
before reuse.

**Subscriptions** get a dedicated connection of their own (outside the pool and its
limit); confirmations are awaited for every channel before the subscription is
handed over, and an idle subscriber sends a keepalive ``PING`` every
``health_check_interval`` seconds, so that a silently dead peer is noticed.
"""

from __future__ import annotations

import math
import os
import ssl as _ssl
from collections import deque
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, overload
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio
import hiredis
from sniffio import current_async_library

from gqm.errors import ConfigurationError, RedisConnectionError, RedisReplyError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from types import TracebackType

    from anyio.abc import ByteStream, SocketStream

    from ._asyncio_conn import AsyncioConnection
    from ._protocol import Arg, Command, Subscription
    from ._settings import RedisSettings
    from ._trio_conn import TrioConnection

__all__ = ["RespDriver"]

_DEFAULT_PORT = 6379
#: Connections per driver, and how long a call waits for a free one.
_MAX_CONNECTIONS = 64
_POOL_WAIT = 30.0
#: Bound on closing a connection (it runs shielded, possibly while being cancelled).
_CLOSE_TIMEOUT = 5.0
_READ_SIZE = 65536

#: What ``hiredis.Reader.gets()`` returns while a reply is incomplete (``False``, its
#: default, is a valid RESP3 reply).
_MORE: Final = object()
_PUSH: Final = hiredis.PushNotification
_PING: Final = b"*1\r\n$4\r\nPING\r\n"

#: What a broken transport raises (``TimeoutError``, an ``OSError``, is told apart).
_TRANSPORT_ERRORS = (
    OSError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)

#: Error replies that mean the connection is not authenticated: redis-py and coredis
#: raise them as connection errors, and so does this driver.
_AUTH_ERRORS = ("NOAUTH", "WRONGPASS")

#: ``rediss://`` query parameters understood (as redis-py names them).
_TLS_PARAMS = frozenset(
    {"ssl_cert_reqs", "ssl_check_hostname", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"}
)
_CERT_REQS = {
    "none": _ssl.CERT_NONE,
    "cert_none": _ssl.CERT_NONE,
    "optional": _ssl.CERT_OPTIONAL,
    "cert_optional": _ssl.CERT_OPTIONAL,
    "required": _ssl.CERT_REQUIRED,
    "cert_required": _ssl.CERT_REQUIRED,
}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


# -- encoding ---------------------------------------------------------------------------

_pack_command = hiredis.pack_command


def _pack_slow(args: Sequence[Arg]) -> bytes:
    """Encode what ``hiredis.pack_command`` refuses: subclasses (an ``IntEnum``), and
    anything else with a clear error."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bool) or not isinstance(arg, bytes | str | int | float):
            raise TypeError(
                f"invalid Redis command argument of type {type(arg).__name__}: "
                "use bytes, str, int or float"
            )
        if isinstance(arg, bytes):
            data = bytes(arg)
        elif isinstance(arg, str):
            data = str(arg).encode()
        elif isinstance(arg, int):
            data = b"%d" % int(arg)
        else:
            data = repr(float(arg)).encode()
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(b"\r\n")
    return b"".join(out)


def _pack(args: Sequence[Arg]) -> bytes:
    """One command as a RESP array of bulk strings (floats as ``repr``, full precision)."""
    if not args:
        raise ValueError("empty Redis command")
    try:
        packed: bytes = _pack_command(args if type(args) is tuple else tuple(args))  # type: ignore[arg-type]
    except TypeError:
        return _pack_slow(args)
    return packed


def _new_reader() -> hiredis.Reader:
    # Error replies become RedisReplyError instances (message kept: "NOSCRIPT ...");
    # a malformed stream raises RedisConnectionError (the connection is then dropped).
    return hiredis.Reader(
        protocolError=RedisConnectionError,
        replyError=RedisReplyError,
        notEnoughData=_MORE,
    )


def _is_auth_error(reply: object) -> bool:
    return isinstance(reply, RedisReplyError) and str(reply).startswith(_AUTH_ERRORS)


def _is_unavailable(reply: object) -> bool:
    """An error reply saying Redis cannot serve any command yet (it is loading its
    dataset after a restart): a connection-level condition, to be retried, as redis-py
    and coredis report it, not a per-command reply."""
    return isinstance(reply, RedisReplyError) and str(reply).startswith((*_AUTH_ERRORS, "LOADING"))


# -- settings ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    """Where to connect and how to set a new connection up."""

    host: str
    port: int
    path: str | None
    ssl_context: _ssl.SSLContext | None
    #: AUTH / SELECT commands sent on every new connection, and their count.
    setup: bytes
    setup_count: int
    protocol: int

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix://{self.path}"
        scheme = "rediss" if self.ssl_context is not None else "redis"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def _flag(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"invalid value {value!r} for the URL parameter {name}")


def _tls_context_from_query(query: dict[str, str]) -> _ssl.SSLContext:
    """A verifying client context, adjusted by redis-py style ``ssl_*`` URL parameters."""
    context = _ssl.create_default_context(cafile=query.get("ssl_ca_certs") or None)
    if "ssl_certfile" in query:
        context.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile") or None)
    elif "ssl_keyfile" in query:
        raise ConfigurationError("ssl_keyfile needs ssl_certfile")
    if "ssl_check_hostname" in query:
        context.check_hostname = _flag("ssl_check_hostname", query["ssl_check_hostname"])
    if "ssl_cert_reqs" in query:
        reqs = _CERT_REQS.get(query["ssl_cert_reqs"].lower())
        if reqs is None:
            raise ConfigurationError(f"invalid ssl_cert_reqs {query['ssl_cert_reqs']!r}")
        if reqs != _ssl.CERT_REQUIRED:
            context.check_hostname = False  # must be off before lowering verify_mode
        context.verify_mode = reqs
    return context


def _parse_db(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"invalid Redis database number {value!r}") from None


def _target(settings: RedisSettings, protocol: int) -> _Target:
    """Resolve the settings: the URL wins over host/port; the ``username``,
    ``password`` and ``db`` keywords win over the URL's."""
    host, port, path = settings.host, settings.port, None
    username = password = None
    db: int | None = None
    tls = settings.ssl or settings.ssl_context is not None
    query: dict[str, str] = {}
    if settings.url is not None:
        parts = urlsplit(settings.url)
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigurationError(
                f"unsupported Redis URL scheme {parts.scheme!r}: use redis://, rediss:// or unix://"
            )
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = set(query) - {"db", "password", "username"} - _TLS_PARAMS
        if unknown:
            raise ConfigurationError(
                f"unsupported Redis URL parameter(s) for the resp driver: {sorted(unknown)}"
            )
        username = unquote(parts.username) if parts.username else query.get("username")
        password = unquote(parts.password) if parts.password else query.get("password")
        if "db" in query:
            db = _parse_db(query["db"])
        if scheme == "unix":
            path = unquote(parts.path)
            if not path:
                raise ConfigurationError(f"no socket path in {settings.url!r}")
            if tls:
                raise ConfigurationError("TLS over a unix socket is not supported")
        else:
            tls = tls or scheme == "rediss"
            host = parts.hostname or "localhost"
            try:
                port = parts.port or _DEFAULT_PORT
            except ValueError:
                raise ConfigurationError(f"invalid port in {settings.url!r}") from None
            if parts.path.strip("/"):
                db = _parse_db(parts.path.strip("/"))
        if not tls and any(p in query for p in _TLS_PARAMS):
            raise ConfigurationError("ssl_* URL parameters need a rediss:// URL")
    if settings.username is not None:
        username = settings.username
    if settings.password is not None:
        password = settings.password
    if settings.db is not None:
        db = settings.db

    ssl_context: _ssl.SSLContext | None = None
    if tls:
        if settings.ssl_context is not None:
            ssl_context = settings.ssl_context
        else:
            ssl_context = _tls_context_from_query(query)

    setup: list[bytes] = []
    if protocol == 3:
        # HELLO switches the protocol and authenticates in one command.
        hello: list[Arg] = ["HELLO", 3]
        if password is not None:
            hello += ["AUTH", username or "default", password]
        setup.append(_pack(hello))
    elif password is not None:
        setup.append(_pack(("AUTH", username, password) if username else ("AUTH", password)))
    if db:
        setup.append(_pack(("SELECT", db)))
    return _Target(
        host=host,
        port=port,
        path=path,
        ssl_context=ssl_context,
        setup=b"".join(setup),
        setup_count=len(setup),
        protocol=protocol,
    )


# -- one connection ---------------------------------------------------------------------


class _Connection:
    """A stream and its reply parser. Not safe for concurrent use: the pool leases
    it to one request at a time. Serves subscriptions, TLS on trio, and every pooled
    connection with ``GQM_RESP_TRANSPORT=anyio`` (the defaults: ``_asyncio_conn``,
    ``_trio_conn``)."""

    __slots__ = ("last_used", "reader", "stream")

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.reader = _new_reader()
        self.last_used = 0.0

    @staticmethod
    def now() -> float:
        return anyio.current_time()

    async def request(self, payload: bytes, count: int, timeout: float | None) -> Any:
        """Send ``payload`` and read ``count`` replies (0: one reply, not in a list)
        within ``timeout`` seconds (``TimeoutError`` after that)."""
        if timeout is None:
            return await self._exchange(payload, count)
        # A bare deadline scope: cheaper than fail_after, which wraps the same.
        with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
            return await self._exchange(payload, count)
        assert scope.cancelled_caught
        raise TimeoutError

    async def _exchange(self, payload: bytes, count: int) -> Any:
        await self.stream.send(payload)
        reader = self.reader
        receive = self.stream.receive
        replies: list[Any] = []
        append = replies.append
        wanted = count or 1
        while len(replies) < wanted:
            reply = reader.gets()
            if reply is _MORE:
                reader.feed(await receive(_READ_SIZE))
            elif type(reply) is not _PUSH:
                append(reply)
        return replies if count else replies[0]

    async def aclose(self) -> None:
        await close_stream(self.stream)


async def close_stream(stream: ByteStream) -> None:
    """Close ``stream``; shielded (it runs while being cancelled) and bounded."""
    with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True), suppress(*_TRANSPORT_ERRORS):
        await stream.aclose()


#: A pooled connection: the asyncio protocol, the trio socket, or anyio streams.
_PoolConnection: TypeAlias = "_Connection | AsyncioConnection | TrioConnection"


def _connection_error(err: BaseException, what: str) -> RedisConnectionError | None:
    """The RedisConnectionError for a transport failure, else None."""
    if isinstance(err, RedisConnectionError):
        return err
    if isinstance(err, TimeoutError):
        return RedisConnectionError(f"{what}: timed out")
    if isinstance(err, anyio.EndOfStream):
        return RedisConnectionError(f"{what}: Redis closed the connection")
    if isinstance(err, _TRANSPORT_ERRORS):
        cause = err.__cause__ if err.__cause__ is not None else err
        return RedisConnectionError(f"{what}: {cause or type(cause).__name__}")
    return None


# -- subscriptions ----------------------------------------------------------------------


class _RespSubscription:
    """Messages from a dedicated, subscribed connection.

    ``get_message`` is cancellation-safe: a cancelled wait loses no message.
    """

    def __init__(
        self,
        conn: _Connection,
        early: deque[tuple[bytes, bytes]],
        *,
        keepalive: float | None,
        ping_timeout: float,
    ) -> None:
        self._conn = conn
        self._early = early
        self._keepalive = keepalive
        self._ping_timeout = ping_timeout
        self._last_activity = anyio.current_time()
        self._ping_deadline: float | None = None
        self._failure: str | None = None

    async def get_message(self) -> tuple[bytes, bytes]:
        if self._early:
            return self._early.popleft()
        if self._failure is not None:
            raise RedisConnectionError(self._failure)
        if self._ping_deadline is not None:
            now = anyio.current_time()
            if self._ping_deadline <= now:
                # Overdue while nobody was listening: its answer may be waiting, unread.
                # Time spent away from get_message does not count: restart the clock.
                self._ping_deadline = now + self._ping_timeout
        while True:
            try:
                reply = await self._next_reply()
            except BaseException as err:
                failure = _connection_error(err, "subscription lost")
                if failure is None:
                    raise  # cancelled: nothing was consumed, the subscription stays usable
                self._failure = str(failure)
                if failure is err:
                    raise
                raise failure from err
            if isinstance(reply, RedisReplyError):
                raise reply
            if not isinstance(reply, list) or not reply:
                if reply == b"PONG":  # RESP3 answers PING plainly, even when subscribed
                    self._ping_deadline = None
                continue
            kind = reply[0]
            if kind == b"message" and len(reply) == 3:
                return reply[1], reply[2]
            if kind == b"pong":
                self._ping_deadline = None

    async def _next_reply(self) -> Any:
        conn = self._conn
        reader = conn.reader
        while True:
            reply = reader.gets()
            if reply is not _MORE:
                return reply
            now = anyio.current_time()
            if self._ping_deadline is not None:
                wait = self._ping_deadline - now
            elif self._keepalive is not None:
                wait = self._last_activity + self._keepalive - now
            else:
                wait = math.inf
            data: bytes | None = None
            with anyio.move_on_after(max(wait, 0.0)):
                data = await conn.stream.receive(_READ_SIZE)
            if data is not None:
                reader.feed(data)
                self._last_activity = anyio.current_time()
                continue
            if self._ping_deadline is not None:
                raise RedisConnectionError(
                    f"Redis did not answer a keepalive PING within {self._ping_timeout:g} s"
                )
            self._ping_deadline = anyio.current_time() + self._ping_timeout
            try:
                await conn.stream.send(_PING)
            except BaseException:
                # A PING cut in the middle (cancelled) leaves the stream unusable.
                self._failure = "subscription lost: a keepalive PING was interrupted"
                raise


# -- the driver ---------------------------------------------------------------------------


class RespDriver:
    """:class:`~gqm._redis._protocol.Driver` speaking RESP over anyio streams.

    Build it with :meth:`from_settings` (there is no client to inject). ``open()``
    does nothing (connections are opened on demand); ``aclose()`` closes the idle
    connections and refuses further calls.
    """

    name = "resp"

    def __init__(
        self,
        settings: RedisSettings,
        *,
        protocol: Literal[2, 3] = 2,
        subscribe_timeout: float | None = None,
        keepalive_interval: float | None = None,
        transport: Literal["auto", "anyio"] | None = None,
    ) -> None:
        """``protocol=3`` sends ``HELLO 3`` on connect: replies then have RESP3 shapes
        (maps as ``dict``, doubles as ``float``), as with redis-py 8 and coredis 6.

        ``subscribe_timeout`` bounds the wait for SUBSCRIBE confirmations (default:
        ``connect_timeout``, at least 1 s); ``keepalive_interval`` is the idle time
        after which a subscriber sends a PING and an idle pooled connection is checked
        before reuse (default: ``health_check_interval``; 0 disables both).

        ``transport`` picks how pooled connections do I/O: ``"auto"`` (the default, or
        ``$GQM_RESP_TRANSPORT``) uses an asyncio protocol on asyncio and the bare
        socket on trio (see ``_asyncio_conn`` and ``_trio_conn``); ``"anyio"`` uses
        anyio streams everywhere.
        """
        chosen = transport or os.environ.get("GQM_RESP_TRANSPORT") or "auto"
        if chosen not in ("auto", "anyio"):
            raise ConfigurationError(f"transport must be 'auto' or 'anyio', not {chosen!r}")
        self._anyio_only = chosen == "anyio"
        if protocol not in (2, 3):
            raise ConfigurationError(f"protocol must be 2 or 3, not {protocol!r}")
        self._target = _target(settings, protocol)
        self._connect_timeout = settings.connect_timeout
        self._socket_timeout = settings.socket_timeout
        self._subscribe_timeout = (
            subscribe_timeout
            if subscribe_timeout is not None
            else max(1.0, settings.connect_timeout)
        )
        interval = (
            keepalive_interval
            if keepalive_interval is not None
            else float(settings.health_check_interval)
        )
        self._keepalive: float | None = interval if interval > 0 else None
        self._max_connections = settings.max_connections or _MAX_CONNECTIONS
        self._slots = anyio.Semaphore(self._max_connections)
        #: Idle connections, most recently used last (reused first: warm sockets).
        self._idle: list[_PoolConnection] = []
        self._closed = False

    @classmethod
    def from_settings(cls, settings: RedisSettings) -> RespDriver:
        return cls(settings)

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Nothing to do: connections are opened on demand and need no owning task."""

    async def aclose(self) -> None:
        """Close the idle connections (shielded and bounded) and refuse new calls;
        idempotent. A request still running closes its connection when it ends."""
        self._closed = True
        await self._drop_idle()

    async def __aenter__(self) -> RespDriver:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- commands ----------------------------------------------------------------------

    async def execute(self, *args: Arg) -> Any:
        reply = await self._request(_pack(args), 0)
        if isinstance(reply, RedisReplyError):
            if _is_unavailable(reply):
                raise RedisConnectionError(str(reply))
            raise reply
        return reply

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        if not commands:
            return []
        replies: list[Any] = await self._request(
            b"".join([_pack(c) for c in commands]), len(commands)
        )
        for reply in replies:
            if _is_unavailable(reply):
                raise RedisConnectionError(str(reply))
        return replies

    async def _request(self, payload: bytes, count: int) -> Any:
        """Send ``payload`` on a pooled connection and read ``count`` replies (0: one
        reply, not in a list). The connection goes back to the pool only if every
        reply was read; on anything else it is closed."""
        conn = await self._lease()
        try:
            reply = await conn.request(payload, count, self._socket_timeout)
        except BaseException as err:
            # Cancelled, timed out or broken with a reply possibly unread: never reuse.
            failure = _connection_error(err, f"Redis request to {self._target} failed")
            try:
                await conn.aclose()
                if failure is not None and not isinstance(err, TimeoutError):
                    # The connection died (a restart, CLIENT KILL): the idle ones
                    # probably did too; start afresh rather than fail call after call.
                    await self._drop_idle()
            finally:
                self._slots.release()
            if failure is None or failure is err:
                raise
            raise failure from err
        if self._closed:
            await conn.aclose()
        else:
            conn.last_used = conn.now()
            self._idle.append(conn)
        self._slots.release()
        return reply

    # -- the pool ----------------------------------------------------------------------

    async def _lease(self) -> _PoolConnection:
        """A connection for one request, holding one of the pool's slots."""
        if self._closed:
            raise RedisConnectionError("the resp driver is closed")
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            try:
                with anyio.fail_after(_POOL_WAIT):
                    await self._slots.acquire()
            except TimeoutError:
                raise RedisConnectionError(
                    f"no free Redis connection within {_POOL_WAIT:g} s "
                    f"({self._max_connections} in use)"
                ) from None
        try:
            idle = self._idle
            if idle:
                conn = idle.pop()
                if self._keepalive is None or conn.now() - conn.last_used < self._keepalive:
                    return conn
                if await self._healthy(conn):
                    return conn
            if self._closed:
                raise RedisConnectionError("the resp driver is closed")
            return await self._connect(pooled=True)
        except BaseException:
            self._slots.release()
            raise

    async def _healthy(self, conn: _PoolConnection) -> bool:
        """PING a connection that sat idle; a dead one is closed with the other idle
        ones (they are older still)."""
        try:
            reply = await conn.request(_PING, 0, self._socket_timeout or self._connect_timeout)
        except BaseException as err:
            await conn.aclose()
            if _connection_error(err, "") is None:
                raise
            await self._drop_idle()
            return False
        if reply != b"PONG":
            await conn.aclose()
            return False
        return True

    async def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()

    @overload
    async def _connect(self, *, pooled: Literal[False] = False) -> _Connection: ...
    @overload
    async def _connect(self, *, pooled: Literal[True]) -> _PoolConnection: ...
    async def _connect(self, *, pooled: bool = False) -> _PoolConnection:
        """A new, set up connection (AUTH, SELECT), within ``connect_timeout``: for
        the pool an asyncio protocol on asyncio, the bare socket on trio (not TLS),
        else (subscriptions, ``transport="anyio"``) anyio streams."""
        target = self._target
        try:
            with anyio.fail_after(self._connect_timeout):
                conn: _PoolConnection
                library = None if self._anyio_only or not pooled else current_async_library()
                if library == "asyncio":
                    # Imported here: a trio application never loads asyncio through gqm.
                    from ._asyncio_conn import AsyncioConnection

                    conn = await AsyncioConnection.connect(target)
                elif library == "trio" and target.ssl_context is None:
                    from ._trio_conn import TrioConnection

                    conn = TrioConnection(await self._open_socket())
                else:
                    conn = _Connection(await self._open_stream())
                try:
                    if target.setup_count:
                        replies = await conn.request(target.setup, target.setup_count, None)
                        for reply in replies:
                            if isinstance(reply, RedisReplyError):
                                raise RedisConnectionError(
                                    f"Redis at {target} refused the connection setup: {reply}"
                                )
                except BaseException:
                    await conn.aclose()
                    raise
        except BaseException as err:
            failure = _connection_error(err, f"cannot connect to Redis at {target}")
            if failure is None or failure is err:
                raise
            raise failure from err
        return conn

    async def _open_stream(self) -> ByteStream:
        target = self._target
        if target.ssl_context is not None:
            return await anyio.connect_tcp(
                target.host,
                target.port,
                ssl_context=target.ssl_context,
                tls_standard_compatible=False,
            )
        return await self._open_socket()

    async def _open_socket(self) -> SocketStream:
        """A plain TCP or unix socket stream (no TLS)."""
        target = self._target
        if target.path is not None:
            return await anyio.connect_unix(target.path)
        return await anyio.connect_tcp(target.host, target.port)

    # -- publish/subscribe -------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(self, *channels: str) -> AsyncIterator[Subscription]:
        """Subscribe on a dedicated connection, confirmed for every channel before the
        body runs (messages that arrive before the last confirmation are kept). The
        connection is closed on exit; losing it makes ``get_message`` raise
        :class:`~gqm.errors.RedisConnectionError`."""
        if not channels:
            raise ValueError("subscribe() needs at least one channel")
        if self._closed:
            raise RedisConnectionError("the resp driver is closed")
        conn = await self._connect()
        try:
            early: deque[tuple[bytes, bytes]] = deque()
            try:
                with anyio.fail_after(self._subscribe_timeout):
                    await conn.stream.send(_pack(("SUBSCRIBE", *channels)))
                    pending = {c.encode() for c in channels}
                    while pending:
                        reply = await self._subscribe_reply(conn)
                        if isinstance(reply, RedisReplyError):
                            raise reply
                        if isinstance(reply, list) and len(reply) == 3:
                            if reply[0] == b"subscribe":
                                pending.discard(reply[1])
                            elif reply[0] == b"message":
                                early.append((reply[1], reply[2]))
            except BaseException as err:
                failure = _connection_error(err, f"cannot subscribe at {self._target}")
                if failure is None or failure is err:
                    raise
                if isinstance(err, TimeoutError):
                    failure = RedisConnectionError("Redis did not confirm the subscription")
                raise failure from err
            yield _RespSubscription(
                conn,
                early,
                keepalive=self._keepalive,
                ping_timeout=self._socket_timeout or self._keepalive or 10.0,
            )
        finally:
            await conn.aclose()

    @staticmethod
    async def _subscribe_reply(conn: _Connection) -> Any:
        """The next reply or push message (not skipping pushes, unlike the pool)."""
        reader = conn.reader
        while True:
            reply = reader.gets()
            if reply is not _MORE:
                return reply
            reader.feed(await conn.stream.receive(_READ_SIZE))
