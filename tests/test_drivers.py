"""Both Redis drivers against a real redis-server, on every backend each one supports.

redis-py runs on asyncio only; coredis runs on asyncio and trio. The same contract
(:class:`gqm._redis._protocol.Driver`) is checked on each combination: raw replies,
pipelines that return error replies in place, NOSCRIPT detection, publish/subscribe,
error mapping and who closes what.
"""

from __future__ import annotations

import hashlib
import socket
from typing import TYPE_CHECKING, Any

import anyio
import coredis
import pytest
import redis.asyncio as aioredis

from gqm._redis._coredis import CoredisDriver
from gqm._redis._redispy import RedisPyDriver
from gqm._redis._settings import RedisSettings
from gqm.errors import RedisConnectionError, RedisReplyError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from gqm._redis._protocol import Driver

pytestmark = pytest.mark.anyio

UNKNOWN_SHA = "0" * 40


#: Every backend each driver supports: redis-py cannot run on trio (gqm uses coredis
#: there). Overrides the value of conftest's ``anyio_backend`` per driver.
each_driver = pytest.mark.parametrize(
    ("anyio_backend", "driver_kind"),
    [
        pytest.param("asyncio", "redis-py", id="asyncio-redis-py"),
        pytest.param("asyncio", "coredis", id="asyncio-coredis"),
        pytest.param("trio", "coredis", id="trio-coredis"),
    ],
)
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])


def make_driver(kind: str, settings: RedisSettings) -> Driver:
    if kind == "redis-py":
        return RedisPyDriver.from_settings(settings)
    return CoredisDriver.from_settings(settings)


@pytest.fixture
async def driver(driver_kind: str, redis_url: str) -> AsyncIterator[Driver]:
    d = make_driver(driver_kind, RedisSettings(url=redis_url))
    await d.open()
    try:
        yield d
    finally:
        await d.aclose()


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def connection_gone(observer: Driver, client_id: int) -> None:
    """Wait until the server no longer lists the connection ``client_id``.

    A client closing its socket is seen by the server a moment later: poll (each poll is
    a round trip), bounded by the caller's ``fail_after``.
    """
    while await observer.execute("CLIENT", "LIST", "ID", client_id):
        pass


# -- execute ----------------------------------------------------------------------------


@each_driver
async def test_execute_strings_integers_and_nil(driver: Driver, prefix: str) -> None:
    key = f"{prefix}:k"
    await driver.execute("SET", key, "v")
    assert await driver.execute("GET", key) == b"v"
    assert await driver.execute("GET", f"{prefix}:missing") is None
    assert await driver.execute("INCR", f"{prefix}:n") == 1
    assert await driver.execute("INCR", f"{prefix}:n") == 2
    await driver.execute("SET", key, 0.1)  # floats go out at full precision
    assert await driver.execute("GET", key) == b"0.1"
    await driver.execute("SET", key, b"\x00\xff")
    assert await driver.execute("GET", key) == b"\x00\xff"
    assert await driver.execute("HSET", f"{prefix}:h", "f", "1") == 1
    assert await driver.execute("HGETALL", f"{prefix}:h") == {b"f": b"1"}


@each_driver
async def test_execute_error_reply_raises(driver: Driver, prefix: str) -> None:
    await driver.execute("LPUSH", f"{prefix}:list", "x")
    with pytest.raises(RedisReplyError) as info:
        await driver.execute("INCR", f"{prefix}:list")
    assert not info.value.is_noscript


@each_driver
async def test_replies_are_raw(driver: Driver, prefix: str) -> None:
    """No client-side reshaping: the protocol promises what Redis sent."""
    key = f"{prefix}:raw"
    assert await driver.execute("SET", key, "v") == b"OK"
    assert await driver.execute("PING") == b"PONG"
    assert await driver.execute("EXPIRE", key, 100) == 1
    await driver.execute("SADD", f"{prefix}:set", "a")
    assert await driver.execute("SMEMBERS", f"{prefix}:set") == [b"a"]


LUA_NESTED = """
redis.call('SET', KEYS[1], ARGV[1])
return {1, 'two', {3, {'four', 5}}, redis.call('GET', KEYS[1]), 7.9, true, false, 'x', nil,
        'dropped'}
"""


@each_driver
async def test_eval_returns_nested_tables(driver: Driver, prefix: str) -> None:
    reply = await driver.execute("EVAL", LUA_NESTED, 1, f"{prefix}:lua", "stored")
    # Lua numbers become integers (truncated), true -> 1, false -> nil, and a nil ends
    # the array.
    assert reply == [1, b"two", [3, [b"four", 5]], b"stored", 7, 1, None, b"x"]
    assert await driver.execute("EVAL", "return nil", 0) is None
    assert await driver.execute("EVAL", "return {}", 0) == []
    assert await driver.execute("EVAL", "return redis.status_reply('FINE')", 0) == b"FINE"
    with pytest.raises(RedisReplyError, match="GQM_TEST boom"):
        await driver.execute("EVAL", "return redis.error_reply('GQM_TEST boom')", 0)


@each_driver
async def test_concurrent_commands(driver: Driver, prefix: str) -> None:
    key = f"{prefix}:concurrent"
    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(driver.execute, "INCR", key)
    assert await driver.execute("GET", key) == b"50"


@each_driver
async def test_blocking_command_does_not_stall_others(driver: Driver, prefix: str) -> None:
    """A blocking command holds a connection of its own (coredis multiplexes the rest)."""
    source = f"{prefix}:src"
    moved: list[Any] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def wait_for_item() -> None:
                reply = await driver.execute("BLMOVE", source, f"{prefix}:dst", "LEFT", "RIGHT", 5)
                moved.append(reply)

            tg.start_soon(wait_for_item)
            await anyio.wait_all_tasks_blocked()  # BLMOVE sent and waiting for its reply
            # Sent while BLMOVE blocks: on BLMOVE's connection it would wait 5 s.
            with anyio.fail_after(2):
                assert await driver.execute("INCR", f"{prefix}:n") == 1
                await driver.execute("RPUSH", source, "item")
    assert moved == [b"item"]


# -- pipeline ---------------------------------------------------------------------------


@each_driver
async def test_pipeline_returns_errors_in_place(driver: Driver, prefix: str) -> None:
    key = f"{prefix}:p"
    replies = await driver.pipeline(
        [
            ("INCR", key),
            ("LPUSH", key, "x"),  # wrong type: an error reply, in place
            ("INCR", key),  # still applied: a pipeline is not a transaction
            ("GET", key),
            ("EVAL", "return {1, {2, 'three'}}", 0),
        ]
    )
    assert len(replies) == 5
    assert replies[0] == 1
    assert isinstance(replies[1], RedisReplyError)
    assert not replies[1].is_noscript
    assert replies[2:] == [2, b"2", [1, [2, b"three"]]]
    assert await driver.execute("GET", key) == b"2"


@each_driver
async def test_empty_pipeline(driver: Driver) -> None:
    assert await driver.pipeline([]) == []


# -- NOSCRIPT -----------------------------------------------------------------------------


@each_driver
async def test_noscript_in_execute(driver: Driver) -> None:
    with pytest.raises(RedisReplyError) as info:
        await driver.execute("EVALSHA", UNKNOWN_SHA, 0)
    assert info.value.is_noscript
    assert str(info.value).startswith("NOSCRIPT")


@each_driver
async def test_noscript_in_pipeline_then_load(driver: Driver, prefix: str) -> None:
    script = f"return {{'{prefix}', tonumber(ARGV[1]) + 1}}"
    sha = hashlib.sha1(script.encode()).hexdigest()
    replies = await driver.pipeline(
        [("EVALSHA", sha, 0, 41), ("INCR", f"{prefix}:c"), ("EVALSHA", UNKNOWN_SHA, 0)]
    )
    assert isinstance(replies[0], RedisReplyError)
    assert replies[0].is_noscript
    assert replies[1] == 1
    assert isinstance(replies[2], RedisReplyError)
    assert replies[2].is_noscript

    assert await driver.execute("SCRIPT", "LOAD", script) == sha.encode()
    assert await driver.execute("EVALSHA", sha, 0, 41) == [prefix.encode(), 42]
    replies = await driver.pipeline([("EVALSHA", sha, 0, 1), ("EVALSHA", sha, 0, 2)])
    assert replies == [[prefix.encode(), 2], [prefix.encode(), 3]]


# -- publish / subscribe -----------------------------------------------------------------


async def publish_until_heard(driver: Driver, channel: str, data: bytes) -> None:
    """PUBLISH until Redis reports a subscriber: only that message is delivered."""
    while await driver.execute("PUBLISH", channel, data) == 0:
        pass


@each_driver
async def test_subscribe_round_trip(driver: Driver, prefix: str) -> None:
    first, second = f"{prefix}:ch1", f"{prefix}:ch2"
    with anyio.fail_after(10):
        async with driver.subscribe(first, second) as sub:
            await publish_until_heard(driver, second, b"hello")
            assert await sub.get_message() == (second.encode(), b"hello")
            await publish_until_heard(driver, first, b"\x00bin")
            assert await sub.get_message() == (first.encode(), b"\x00bin")


@each_driver
async def test_get_message_waits_for_a_publish(driver: Driver, prefix: str) -> None:
    channel = f"{prefix}:wait"
    received: list[tuple[bytes, bytes]] = []
    with anyio.fail_after(10):
        async with driver.subscribe(channel) as sub, anyio.create_task_group() as tg:
            done = anyio.Event()

            async def listen() -> None:
                received.append(await sub.get_message())
                done.set()

            tg.start_soon(listen)
            await publish_until_heard(driver, channel, b"late")
            await done.wait()
    assert received == [(channel.encode(), b"late")]


@each_driver
async def test_subscriber_connection_loss_raises(driver: Driver, prefix: str) -> None:
    channel = f"{prefix}:lost"
    with anyio.fail_after(10):
        async with driver.subscribe(channel) as sub:
            await publish_until_heard(driver, channel, b"before")
            assert await sub.get_message() == (channel.encode(), b"before")
            await driver.execute("CLIENT", "KILL", "TYPE", "pubsub")
            with pytest.raises(RedisConnectionError):
                await sub.get_message()
        # The driver itself is unaffected.
        assert await driver.execute("PING") in (b"PONG", True)


# -- connection errors --------------------------------------------------------------------


@each_driver
async def test_connection_refused_maps_to_redis_connection_error(driver_kind: str) -> None:
    settings = RedisSettings(url=f"redis://127.0.0.1:{closed_port()}", connect_timeout=2)
    d = make_driver(driver_kind, settings)
    await d.open()
    try:
        with anyio.fail_after(20):
            with pytest.raises(RedisConnectionError):
                await d.execute("PING")
            with pytest.raises(RedisConnectionError):
                await d.pipeline([("PING",), ("PING",)])
            with pytest.raises(RedisConnectionError):
                async with d.subscribe("nothing"):
                    pass
    finally:
        await d.aclose()


@each_driver
async def test_cancelled_blocking_commands_do_not_exhaust_the_pool(
    driver_kind: str, redis_url: str, prefix: str
) -> None:
    d = make_driver(driver_kind, RedisSettings(url=redis_url, max_connections=2))
    await d.open()
    try:
        for _ in range(5):
            with anyio.move_on_after(0.05):
                await d.execute("BLMOVE", f"{prefix}:empty", f"{prefix}:dst", "LEFT", "LEFT", 5)
        with anyio.fail_after(5):
            assert await d.execute("INCR", f"{prefix}:after") == 1
    finally:
        await d.aclose()


# -- who closes what ----------------------------------------------------------------------


@each_driver
async def test_aclose_closes_an_owned_client(driver_kind: str, redis_url: str) -> None:
    observer = make_driver(driver_kind, RedisSettings(url=redis_url))
    await observer.open()
    try:
        d = make_driver(driver_kind, RedisSettings(url=redis_url))
        await d.open()
        client_id = await d.execute("CLIENT", "ID")
        assert await observer.execute("CLIENT", "LIST", "ID", client_id)
        await d.aclose()
        await d.aclose()  # idempotent
        with anyio.fail_after(5):
            await connection_gone(observer, client_id)
    finally:
        await observer.aclose()


async def _assert_injected_client_survives(driver: Driver, client: Any) -> None:
    await driver.open()
    assert await driver.execute("PING") in (b"PONG", True)
    await driver.aclose()
    assert await client.ping() in (b"PONG", True)


@asyncio_only
async def test_aclose_leaves_an_injected_redispy_client_open(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        await _assert_injected_client_survives(RedisPyDriver(client, owned=False), client)
    finally:
        await client.aclose()


async def test_aclose_leaves_an_injected_coredis_client_open(redis_url: str) -> None:
    async with coredis.Redis.from_url(redis_url) as client:
        await _assert_injected_client_survives(CoredisDriver(client, owned=False), client)


async def test_injected_coredis_client_entered_by_its_owner_needs_no_open(
    redis_url: str,
) -> None:
    async with coredis.Redis.from_url(redis_url) as client:
        d = CoredisDriver(client, owned=False)
        assert await d.execute("PING") == b"PONG"
        await d.aclose()
        assert await client.ping() == b"PONG"


async def test_injected_coredis_client_not_entered_is_opened_and_closed(
    redis_url: str,
) -> None:
    client = coredis.Redis.from_url(redis_url)
    d = CoredisDriver(client, owned=False)
    await d.open()
    assert await d.execute("PING") == b"PONG"
    await d.aclose()
    with pytest.raises(RuntimeError):
        client.connection_pool.task_group  # noqa: B018 - raises once the pool is closed


async def test_coredis_refuses_commands_before_open(redis_url: str) -> None:
    d = CoredisDriver.from_settings(RedisSettings(url=redis_url))
    with pytest.raises(RuntimeError, match="open"):
        await d.execute("PING")
    async with d:
        assert await d.execute("PING") == b"PONG"
    with pytest.raises(RedisConnectionError, match="closed"):
        await d.execute("PING")
