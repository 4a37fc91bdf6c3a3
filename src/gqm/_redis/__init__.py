"""The Redis layer: one driver protocol, two implementations, one factory.

The core calls :func:`open_driver` and then speaks only to
:class:`~gqm._redis._protocol.Driver`. The implementation is chosen by the client object
the user injected, if any (redis-py or coredis: Sentinel, Cluster and custom setups come
in that way), else by ``RedisSettings.driver``, whose default is gqm's own thin RESP
driver on both backends (``_resp.py``). It is the default because it is the cheapest by
far, on trio most of all (CPU per command, ``bench/drivers.py``: 48 µs vs redis-py's
74 on asyncio, 34 µs vs coredis' 151 on trio), and because importing redis.asyncio
alone adds about 23 MB to a worker's RSS.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import sniffio

from gqm.errors import ConfigurationError, RedisError

from ._protocol import Arg, Command, Driver, Subscription
from ._settings import RedisSettings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractAsyncContextManager

__all__ = [
    "Arg",
    "Command",
    "Driver",
    "RedisSettings",
    "Subscription",
    "open_driver",
    "with_fallback",
]

T = TypeVar("T")


async def with_fallback(
    driver: Driver,
    fresh: Callable[[], AbstractAsyncContextManager[Driver]],
    action: Callable[[Driver], Awaitable[T]],
) -> T:
    """Run ``action`` on ``driver``, or, if that connection is unusable, on a fresh one.

    For the last writes of a server being cancelled: on trio the shared (coredis)
    connection pool is cancelled together with the caller, so those writes go over a
    connection of their own.
    """
    try:
        return await action(driver)
    except (RedisError, anyio.ClosedResourceError, anyio.BrokenResourceError):
        async with fresh() as other:
            return await action(other)


def _is_redispy_client(obj: object) -> bool:
    module = type(obj).__module__
    return module.startswith("redis.asyncio")


def _is_coredis_client(obj: object) -> bool:
    return type(obj).__module__.startswith("coredis")


def open_driver(client: Any | None, settings: RedisSettings) -> Driver:
    """Return a driver for an injected ``client``, or build one from ``settings``.

    Must be called from inside the event loop that will use the driver. The driver is
    ``settings.driver``; ``"auto"`` reads ``$GQM_DRIVER`` (for trying another driver
    without code changes), else picks ``"resp"``.
    """
    if client is not None:
        if _is_redispy_client(client):
            from ._redispy import RedisPyDriver

            return RedisPyDriver(client, owned=False)
        if _is_coredis_client(client):
            from ._coredis import CoredisDriver

            return CoredisDriver(client, owned=False)
        raise ConfigurationError(
            f"unsupported Redis client {type(client).__qualname__}: pass a "
            "redis.asyncio.Redis (asyncio) or a coredis.Redis (trio or asyncio)"
        )
    choice = settings.driver
    if choice == "auto":
        choice = os.environ.get("GQM_DRIVER", "auto")
    if choice == "auto":
        choice = "resp"
    if choice == "resp":
        from ._resp import RespDriver

        return RespDriver.from_settings(settings)
    if choice == "coredis":
        from ._coredis import CoredisDriver

        return CoredisDriver.from_settings(settings)
    if choice == "redis-py":
        if sniffio.current_async_library() == "trio":
            raise ConfigurationError(
                "redis-py cannot run under trio: use driver='coredis' or 'resp'"
            )
        from ._redispy import RedisPyDriver

        return RedisPyDriver.from_settings(settings)
    raise ConfigurationError(f"unknown driver {choice!r}: use auto, redis-py, coredis or resp")
