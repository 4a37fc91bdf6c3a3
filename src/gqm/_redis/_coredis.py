"""The trio-capable driver, on coredis 6 (built on anyio: runs on trio and on asyncio).

**Lifecycle.** A coredis 6 client must be *entered* before use (``async with client:``).
Entering it opens its connection pool, which runs an anyio task group hosting one
reader/writer task pair per connection, and that task group belongs to the task that
entered it. Hence the one rule of this driver:

    :meth:`CoredisDriver.open` and :meth:`CoredisDriver.aclose` are the two halves of an
    ``async with`` block: call them **in the same task**, a task that outlives every use
    of the driver, with every cancel scope or task group opened in between closed before
    ``aclose``, and not inside a cancel scope that ends first (no ``with fail_after(t):
    await driver.open()``: ``open()`` does not connect and needs no timeout).
    ``async with driver:`` does exactly that; so does calling ``open()`` in
    ``Client.__aenter__`` and ``aclose()`` in ``Client.__aexit__``.

Breaking it fails badly, which is why the driver does **not** open itself lazily on the
first command (that command may run in a worker task, or inside a ``fail_after``
block): measured with coredis 6.9, entering the pool in a child task and using it after
that task ended corrupts the event loop (``TrioInternalError`` on trio), and entering it
inside a cancel scope that closes first raises "Cancel scope stack corrupted". A
command sent before ``open()`` raises :class:`RuntimeError` instead, except on an
injected client that its owner already entered, which needs no opening. An injected
client that is not entered yet is entered by ``open()`` and exited by ``aclose()``.
``aclose()`` from another task cannot exit the pool's task group: it drops the
connections and raises :class:`RuntimeError`.

**Replies** are raw: commands go through ``create_request(..., callback=NoopCallback())``,
so bulk strings come back as ``bytes``, integers as ``int``, arrays as nested ``list``,
nil as ``None``. coredis 6 speaks RESP3 only, as redis-py 8 does by default: RESP3 maps
are returned as ``dict`` and doubles as ``float`` (as by hiredis), sets as ``list`` (as
by hiredis). Lua replies do not depend on the protocol (Redis converts them with the
script's own protocol, RESP2 unless the script calls ``redis.setresp(3)``).

**Connection pool.** coredis multiplexes non-blocking commands over shared connections
and gives a blocking command (BLMOVE, BZPOPMIN, XREAD, WAIT...) a connection of its
own. coredis 6.9 loses a pool slot for good whenever a connection dies while leased
(a cancelled or timed-out blocking command, a subscriber whose connection drops): after
``max_connections`` of those every command waits forever. Pools this driver builds
(:meth:`CoredisDriver.from_settings`) give the slot back; an injected client keeps
coredis' behaviour.
"""

from __future__ import annotations

import math
import ssl as _ssl
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any, NoReturn, cast
from urllib.parse import urlsplit

import anyio
import coredis
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from coredis import exceptions as cexc
from coredis._concurrency import QueueFull
from coredis.pool import ConnectionPool
from coredis.response._callbacks import NoopCallback

from gqm.errors import RedisConnectionError, RedisError, RedisReplyError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from types import TracebackType

    from anyio.abc import TaskStatus
    from coredis.connection import BaseConnection

    from ._protocol import Arg, Command, Subscription
    from ._settings import RedisSettings

__all__ = ["CoredisDriver"]

#: Returns the RESP reply untouched (``create_request`` requires a callback).
_RAW: NoopCallback[Any] = NoopCallback()

#: Commands that hold their connection until the reply arrives. coredis multiplexes
#: every other command on a shared connection, so a blocking command it does not know
#: about would stall the commands queued behind it. coredis flags BLMOVE, BLPOP,
#: BZPOPMIN, XREAD... itself; these are the ones it misses.
_EXTRA_BLOCKING = frozenset({b"WAIT", b"WAITAOF"})

#: Query parameters of a ``rediss://`` URL that configure TLS in coredis' URL parser.
_URL_TLS_PARAMS = (
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_check_hostname",
    "ssl_ca_certs",
    "ssl_cert_reqs",
)


#: What a command can fail with: coredis' errors, the transport's (OSError covers
#: refused connections and TimeoutError), a connection whose anyio streams closed
#: under it, and groups of those from coredis' task groups.
_TRANSPORT_ERRORS = (
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)
_ERRORS = (cexc.RedisError, *_TRANSPORT_ERRORS, ExceptionGroup)


def _translate(err: BaseException) -> BaseException:
    """Map a coredis (or transport) error to gqm's error tree; others pass through."""
    if isinstance(err, ExceptionGroup):
        # coredis' task groups can wrap the real error; unwrap a group of known errors.
        leaves = err.exceptions
        if leaves and all(isinstance(e, _ERRORS) for e in leaves):
            return _translate(leaves[0])
        return err
    if isinstance(err, cexc.NoScriptError):
        return RedisReplyError(f"NOSCRIPT {err}")
    if isinstance(err, cexc.AuthenticationError):
        # WRONGPASS / NOAUTH happen while connecting: redis-py raises them as
        # connection errors too.
        return RedisConnectionError(str(err) or type(err).__name__)
    if isinstance(err, (cexc.ConnectionError, *_TRANSPORT_ERRORS)):
        # coredis' ConnectionError covers lost connections and LOADING; TimeoutError
        # (an OSError) a reply, connect or pool timeout.
        return RedisConnectionError(str(err) or type(err).__name__)
    if isinstance(err, cexc.ResponseError | cexc.NoKeyError):
        return RedisReplyError(str(err))
    if isinstance(err, cexc.RedisError):
        return RedisError(str(err) or type(err).__name__)
    return err


def _raise(err: BaseException) -> NoReturn:
    """Raise ``err`` translated to gqm's error tree (unchanged if it is not ours)."""
    translated = _translate(err)
    if translated is err:
        raise err
    raise translated from err


def _normalize(value: Any) -> Any:
    """Bring a parsed RESP3 reply to the raw shapes redis-py/hiredis return.

    Only containers and nested errors need work; scalars are returned as they are.
    """
    kind = type(value)
    if kind is bytes or kind is int or value is None:
        return value
    if kind is list:
        for i, item in enumerate(value):
            if not (type(item) is bytes or type(item) is int or item is None):
                value[i] = _normalize(item)
        return value
    if kind is dict:
        return {k: _normalize(v) for k, v in value.items()}  # keys stay hashable
    if kind is set or kind is frozenset or kind is tuple:
        # RESP3 sets (and the tuples coredis makes of unhashable set members / map keys)
        return [_normalize(item) for item in value]
    if isinstance(value, BaseException):
        # An error nested in an array (a Lua table holding redis.error_reply(...)).
        return _translate(value)
    return value


def _encode_arg(arg: Arg) -> Any:
    # Floats as redis-py sends them (repr, full precision); coredis would use %.15g.
    if type(arg) is float:
        return repr(arg).encode()
    return arg


def _command_name(name: Arg) -> bytes:
    # Upper case, because coredis looks the name up to decide whether the command blocks.
    if isinstance(name, bytes):
        return name.upper()
    return str(name).upper().encode()


_closing_classes: dict[type[Any], type[Any]] = {}


def _closing_connection_class(base: type[BaseConnection]) -> type[BaseConnection]:
    """``base`` whose instances close their in-memory buffers when they stop running.

    coredis 6.9 opens those buffers (anyio memory object streams) in the connection's
    constructor and closes them only once connected, so every failed connection
    attempt leaves six unclosed streams behind, each a ResourceWarning when collected.
    """

    async def run(
        self: BaseConnection, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await base.run(self, task_status=task_status)
        finally:
            for value in list(vars(self).values()):
                if isinstance(value, MemoryObjectSendStream | MemoryObjectReceiveStream):
                    value.close()  # idempotent: a no-op for buffers coredis closed

    cls = _closing_classes.get(base)
    if cls is None:
        cls = _closing_classes[base] = type(base.__name__, (base,), {"run": run})
    return cls


class _GqmPool(ConnectionPool[Any]):
    """coredis' connection pool, with two leaks of coredis 6.9 plugged.

    * A connection that dies while leased (a cancelled or timed-out blocking command,
      which coredis invalidates on purpose; a subscriber that lost its connection) is
      dropped on release without its pool slot, so after ``max_connections`` of them
      every command waits forever. :meth:`release` puts the empty slot (``None``, which
      the pool turns into a new connection on demand) back.
    * A failed connection attempt leaks its unclosed buffers (see
      :func:`_closing_connection_class`).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.connection_class = _closing_connection_class(self.connection_class)

    def release(self, connection: Any) -> None:
        usable = bool(connection.usable)
        super().release(connection)
        if not usable:
            with suppress(QueueFull):  # coredis gave the slot back after all
                self._available_connections.append_nowait(None)


class _CoredisSubscription:
    def __init__(
        self, receive: MemoryObjectReceiveStream[tuple[bytes, bytes] | BaseException]
    ) -> None:
        self._receive = receive

    async def get_message(self) -> tuple[bytes, bytes]:
        try:
            item = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise RedisConnectionError("the subscription is closed") from None
        if isinstance(item, BaseException):
            raise item
        return item


class CoredisDriver:
    """:class:`~gqm._redis._protocol.Driver` on a ``coredis.Redis`` client.

    Use it as ``async with driver:`` or call :meth:`open` / :meth:`aclose` in the same
    task (see the module docstring for why).
    """

    name = "coredis"

    def __init__(
        self,
        client: coredis.Redis[Any],
        *,
        owned: bool,
        subscribe_timeout: float = 5.0,
        keepalive_interval: float = 15.0,
    ) -> None:
        """Wrap ``client``; ``owned`` means this driver closes it in :meth:`aclose`.

        ``subscribe_timeout`` bounds the wait for Redis to acknowledge a SUBSCRIBE;
        ``keepalive_interval`` is the idle time after which a subscribed connection is
        checked with a PING (so that a dead peer is noticed).
        """
        self._client = client
        self._owned = owned
        self._subscribe_timeout = subscribe_timeout
        self._keepalive_interval = keepalive_interval
        self._lock = anyio.Lock()
        self._opened = False
        self._closed = False
        self._stack: AsyncExitStack | None = None
        self._opener_task: int | None = None

    @classmethod
    def from_settings(cls, settings: RedisSettings) -> CoredisDriver:
        """Build a client that this driver owns (and closes).

        ``rediss://`` URLs and ``ssl=True`` verify the server's certificate and host
        name by default (as redis-py does; coredis alone would not), unless the URL
        carries its own ``ssl_*`` parameters or ``ssl_context`` is given.
        """
        pool_kwargs: dict[str, Any] = {
            "decode_responses": False,
            "stream_timeout": settings.socket_timeout,
            "connect_timeout": settings.connect_timeout,
            "max_connections": settings.max_connections,
        }
        if settings.url is not None:
            parts = urlsplit(settings.url)
            if parts.scheme == "rediss" or (settings.ssl and parts.scheme == "redis"):
                ssl_context = settings.ssl_context
                if ssl_context is None and not any(p in parts.query for p in _URL_TLS_PARAMS):
                    ssl_context = _ssl.create_default_context()
                if ssl_context is not None:
                    pool_kwargs["ssl_context"] = ssl_context
            pool = _GqmPool.from_url(settings.url, **pool_kwargs)
            # coredis lets the URL win over keywords; gqm's settings say the opposite.
            overrides = pool.connection_kwargs
            if settings.password is not None:
                overrides["password"] = settings.password
            if settings.username is not None:
                overrides["username"] = settings.username
            if settings.db is not None:
                overrides["db"] = settings.db
            client: coredis.Redis[Any] = coredis.Redis(connection_pool=pool)
        else:
            kwargs = dict(pool_kwargs)
            kwargs.update(
                host=settings.host,
                port=settings.port,
                db=settings.db or 0,
                password=settings.password,
                username=settings.username,
                connection_pool_cls=_GqmPool,
            )
            if settings.ssl:
                kwargs["ssl_context"] = settings.ssl_context or _ssl.create_default_context()
            client = coredis.Redis(**kwargs)
        return cls(
            client,
            owned=True,
            subscribe_timeout=max(1.0, settings.connect_timeout),
            keepalive_interval=float(max(1, settings.health_check_interval)),
        )

    # -- lifecycle -------------------------------------------------------------------

    def _client_is_open(self) -> bool:
        try:
            self._client.connection_pool.task_group  # noqa: B018 - raises when not entered
        except RuntimeError:
            return False
        return True

    async def open(self) -> None:
        """Open the client's connection pool (enter the client) unless it is open.

        Idempotent and safe to call concurrently. Call it from the task that will call
        :meth:`aclose`, one that outlives every use of the driver, and not inside a
        cancel scope (``fail_after``, ``move_on_after``) or task group that closes
        before :meth:`aclose` (see the module docstring). It does not connect: a Redis
        that is down shows on the first command. An injected client its owner already
        entered is used as it is and never exited.
        """
        if self._opened:
            return
        async with self._lock:
            if not self._opened:  # not opened by another task while this one waited
                await self._enter()

    async def _enter(self) -> None:
        if self._closed:
            raise RedisConnectionError("the coredis driver is closed")
        if self._owned or not self._client_is_open():
            stack = AsyncExitStack()
            try:
                await stack.enter_async_context(self._client)
            except _ERRORS as err:
                _raise(err)
            self._stack = stack
            self._opener_task = anyio.get_current_task().id
        self._opened = True

    def _ensure_open(self) -> None:
        """Called on first use when :meth:`open` was not: fine for an injected client
        its owner entered already; anything else is refused, because entering the
        pool from whatever task happens to send the first command (a worker, or code
        inside a ``fail_after`` block) corrupts anyio's cancel-scope stack."""
        if self._closed:
            raise RedisConnectionError("the coredis driver is closed")
        if not self._owned and self._client_is_open():
            self._opened = True
            return
        raise RuntimeError(
            "CoredisDriver used before open(): call `await driver.open()` (or use "
            "`async with driver:`) in the long-lived task that will also call aclose(); "
            "coredis' connection pool runs a task group owned by the task that opens it"
        )

    async def aclose(self) -> None:
        """Close the connection pool if this driver opened it; idempotent.

        Must run in the task that opened the driver (see :meth:`open`); from another
        task the pool's task group cannot be exited, so the connections are dropped
        and :class:`RuntimeError` is raised to point at the misuse.
        """
        # No lock and no checkpoint before the exit stack unwinds: when the caller is
        # being cancelled, an await here would raise before the pool's task group is
        # exited, leaving trio's cancel-scope stack corrupted. Plain assignments are
        # atomic between checkpoints, so no lock is needed.
        self._closed = True
        self._opened = False
        stack, self._stack = self._stack, None
        opener, self._opener_task = self._opener_task, None
        if stack is None:
            return
        if anyio.get_current_task().id != opener:
            # Best effort: drop every connection so that no socket leaks, then report.
            self._client.connection_pool.disconnect()
            raise RuntimeError(
                "CoredisDriver.aclose() must be called in the task that opened the driver "
                "(coredis' connection pool runs a task group owned by that task); use "
                "`async with driver:` or call open() and aclose() from the same task"
            )
        await stack.aclose()

    async def __aenter__(self) -> CoredisDriver:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- commands --------------------------------------------------------------------

    async def execute(self, *args: Arg) -> Any:
        if not self._opened:
            self._ensure_open()
        client = self._client
        name = _command_name(args[0])
        request = client.create_request(name, *[_encode_arg(a) for a in args[1:]], callback=_RAW)
        if name in _EXTRA_BLOCKING:
            request.blocking = True
        try:
            reply = await client.execute_command(request)
        except _ERRORS as err:
            _raise(err)
        return _normalize(reply)

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        if not commands:
            return []
        if not self._opened:
            self._ensure_open()
        try:
            async with self._client.pipeline(transaction=False, raise_on_error=False) as pipe:
                for command in commands:
                    pipe.create_request(
                        _command_name(command[0]),
                        *[_encode_arg(a) for a in command[1:]],
                        callback=_RAW,
                    )
        except _ERRORS as err:
            _raise(err)
        replies = pipe.results
        assert replies is not None
        for reply in replies:
            # coredis returns a reply timeout in place; like a lost connection (and
            # like redis-py) it fails the whole pipeline: only replies are per command.
            if isinstance(reply, cexc.ConnectionError | TimeoutError):
                _raise(reply)
        return [_normalize(r) for r in replies]

    # -- publish/subscribe -----------------------------------------------------------

    @asynccontextmanager
    async def subscribe(self, *channels: str) -> AsyncIterator[Subscription]:
        """Subscribe on a dedicated connection; a lost connection makes
        ``get_message`` raise :class:`~gqm.errors.RedisConnectionError` (coredis'
        automatic reconnection is turned off, so that the caller knows messages may
        have been missed and re-subscribes)."""
        if not self._opened:
            self._ensure_open()
        send, receive = anyio.create_memory_object_stream[tuple[bytes, bytes] | BaseException](
            math.inf
        )
        stop = anyio.CancelScope()
        try:
            with receive:
                async with anyio.create_task_group() as tg:
                    failure = await tg.start(self._pump, channels, send, stop)
                    if failure is not None:
                        raise failure
                    try:
                        yield _CoredisSubscription(receive)
                    finally:
                        # Leave coredis' PubSub through its normal exit (it unsubscribes
                        # and hands a clean connection back to the pool), not by
                        # cancelling it.
                        stop.cancel()
        except BaseExceptionGroup as group:
            # The pump never raises, so a group only wraps the one exception of the
            # ``async with`` body (trio's task groups wrap even that): unwrap it, so that
            # callers see the same exceptions as with the redis-py driver.
            if len(group.exceptions) == 1:
                raise group.exceptions[0]  # noqa: B904 - the group is the context
            raise

    async def _pump(
        self,
        channels: tuple[str, ...],
        send: MemoryObjectSendStream[tuple[bytes, bytes] | BaseException],
        stop: anyio.CancelScope,
        *,
        task_status: TaskStatus[BaseException | None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run coredis' PubSub in a task of its own and forward its messages.

        coredis' PubSub runs a task group: when its connection dies, it cancels the
        code inside ``async with pubsub`` and raises on exit. Hosting it here keeps
        that inside this task: the subscriber gets the error from ``get_message``.
        Reports ``None`` once subscribed, or the error that prevented it.
        """
        started = False
        with send:
            try:
                pubsub = self._client.pubsub(
                    channels=channels,
                    ignore_subscribe_messages=True,
                    retry_policy=None,
                    subscription_timeout=self._subscribe_timeout,
                    max_idle_seconds=self._keepalive_interval,
                )
                async with pubsub:
                    task_status.started(None)
                    started = True
                    with stop:
                        while True:
                            message = await pubsub.get_message()
                            if message is not None and message["type"] == "message":
                                channel = cast("bytes", message["channel"])
                                send.send_nowait((channel, cast("bytes", message["data"])))
            except _ERRORS as err:
                if started:
                    send.send_nowait(_translate(err))
                else:
                    task_status.started(_translate(err))
