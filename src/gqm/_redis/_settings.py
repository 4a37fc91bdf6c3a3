"""How to reach Redis: a URL or keywords, plus the key prefix."""

from __future__ import annotations

import ssl as _ssl
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Connection settings shared by both drivers.

    ``url`` (``redis://``, ``rediss://`` or ``unix://``) wins over ``host``/``port``;
    ``password``, ``username`` and ``db`` given as keywords override the URL's.
    """

    url: str | None = None
    host: str = "127.0.0.1"
    port: int = 6379
    db: int | None = None
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    ssl_context: _ssl.SSLContext | None = None
    socket_timeout: float | None = 10.0
    connect_timeout: float = 5.0
    health_check_interval: int = 15
    max_connections: int | None = None
    #: "auto" (= ``$GQM_DRIVER``, else "resp"), "resp" (gqm's own thin driver on anyio
    #: streams and hiredis), "redis-py" (asyncio only) or "coredis".
    driver: str = "auto"
