"""The asyncio driver, on redis-py (``redis.asyncio``) with hiredis."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.connection import Connection, SSLConnection

from gqm.errors import RedisConnectionError, RedisReplyError

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Mapping, Sequence

    from ._protocol import Arg, Command, Subscription
    from ._settings import RedisSettings


_CLOSE_TIMEOUT = 5.0
_SUBSCRIBE_TIMEOUT = 10.0
#: Connections per driver, and how long a call waits for a free one.
_MAX_CONNECTIONS = 64
_POOL_WAIT = 30.0


def _translate(err: BaseException) -> BaseException:
    if isinstance(err, rexc.NoScriptError):
        return RedisReplyError(f"NOSCRIPT {err}")
    if isinstance(err, rexc.ResponseError):
        # redis-py strips the error code it maps to a class ("OOM ..." becomes an
        # OutOfMemoryError saying "command not allowed ..."): put it back, so that the
        # message is Redis's own, as with the other drivers.
        message = str(err)
        code = getattr(err, "status_code", None)
        if code and not message.startswith(code):
            message = f"{code} {message}"
        return RedisReplyError(message)
    if isinstance(err, rexc.ConnectionError | rexc.TimeoutError | OSError):
        return RedisConnectionError(str(err) or type(err).__name__)
    return err


def _raw(command: Sequence[Arg]) -> Sequence[Arg]:
    # redis-py converts replies by command name (SET -> True, SMEMBERS -> set, ...); a
    # name given as bytes matches none of its callbacks, so replies stay raw.
    name = command[0]
    if isinstance(name, str):
        return [name.encode(), *command[1:]]
    return command


class _ContextSSLConnection(SSLConnection):
    """A TLS connection using the caller's own ``ssl.SSLContext``."""

    def __init__(self, *, gqm_ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._gqm_ssl_context = gqm_ssl_context

    def _connection_arguments(self) -> Mapping[str, Any]:
        arguments = dict(super()._connection_arguments())
        arguments["ssl"] = self._gqm_ssl_context
        return arguments


class _RedisPySubscription:
    def __init__(self, pubsub: Any, early: list[tuple[bytes, bytes]]) -> None:
        self._pubsub = pubsub
        self._early = early

    async def get_message(self) -> tuple[bytes, bytes]:
        if self._early:
            return self._early.pop(0)
        try:
            while True:
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if msg is not None and msg["type"] == "message":
                    return msg["channel"], msg["data"]
        except (rexc.RedisError, OSError) as err:
            raise _translate(err) from err


class RedisPyDriver:
    """:class:`~gqm._redis._protocol.Driver` on a ``redis.asyncio.Redis`` client."""

    name = "redis-py"

    def __init__(self, client: aioredis.Redis, *, owned: bool) -> None:
        self._client = client
        self._owned = owned

    @classmethod
    def from_settings(cls, settings: RedisSettings) -> RedisPyDriver:
        """Build a client that this driver owns (and closes).

        The pool blocks when all its connections are busy (up to ``_POOL_WAIT``
        seconds) instead of failing, so a burst of concurrent calls queues up.
        """
        kwargs: dict[str, Any] = {
            "socket_timeout": settings.socket_timeout,
            "socket_connect_timeout": settings.connect_timeout,
            "health_check_interval": settings.health_check_interval,
            "max_connections": settings.max_connections or _MAX_CONNECTIONS,
            "timeout": _POOL_WAIT,
        }
        for name in ("username", "password", "db"):
            value = getattr(settings, name)
            if value is not None:
                kwargs[name] = value
        if settings.url is not None:
            pool = aioredis.BlockingConnectionPool.from_url(settings.url, **kwargs)
        else:
            pool = aioredis.BlockingConnectionPool(
                connection_class=SSLConnection if settings.ssl else Connection,
                host=settings.host,
                port=settings.port,
                **kwargs,
            )
        if settings.ssl_context is not None:
            pool.connection_class = _ContextSSLConnection
            pool.connection_kwargs["gqm_ssl_context"] = settings.ssl_context
        return cls(aioredis.Redis.from_pool(pool), owned=True)

    async def execute(self, *args: Arg) -> Any:
        try:
            return await self._client.execute_command(*_raw(args))  # type: ignore[no-untyped-call]
        except (rexc.RedisError, OSError) as err:
            raise _translate(err) from err

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*_raw(command))
        try:
            replies = await pipe.execute(raise_on_error=False)
        except (rexc.RedisError, OSError) as err:
            raise _translate(err) from err
        return [_translate(r) if isinstance(r, BaseException) else r for r in replies]

    @asynccontextmanager
    async def subscribe(self, *channels: str) -> AsyncIterator[Subscription]:
        pubsub = self._client.pubsub()
        try:
            early: list[tuple[bytes, bytes]] = []
            try:
                await pubsub.subscribe(*channels)
                # redis-py returns before Redis confirmed: wait for the confirmations, so
                # that whatever is published after this returns is sure to be received.
                pending = set(channels)
                with anyio.fail_after(_SUBSCRIBE_TIMEOUT):
                    while pending:
                        msg = await pubsub.get_message(timeout=None)
                        if msg is None:
                            continue
                        if msg["type"] == "subscribe":
                            pending.discard(msg["channel"].decode())
                        elif msg["type"] == "message":
                            early.append((msg["channel"], msg["data"]))
            except (rexc.RedisError, OSError) as err:
                raise _translate(err) from err
            except TimeoutError as err:
                raise RedisConnectionError("Redis did not confirm the subscription") from err
            yield _RedisPySubscription(pubsub, early)
        finally:
            with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]

    async def open(self) -> None:
        """Nothing to do: redis-py connects lazily and needs no owning task."""

    async def aclose(self) -> None:
        if self._owned:
            # Shielded (and bounded): closing while being cancelled must still close the
            # sockets, or they leak until garbage collection.
            with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                await self._client.aclose()
