"""The fault proxy's own tests: each mode does what it says, against a real redis-server.

The proxy is checked with raw RESP over anyio sockets (so what reaches Redis and what
comes back is exact), and once with a gqm client to show it carries real traffic.
Redis is read directly (not through the proxy) to see what the proxied commands did.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import anyio
import pytest

import gqm
from gqm._embedded import EmbeddedRedis

from .faultproxy import FaultProxy

if TYPE_CHECKING:
    from anyio.abc import SocketStream

pytestmark = pytest.mark.anyio


def _cmd(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        out.append(f"${len(a.encode())}\r\n{a}\r\n".encode())
    return b"".join(out)


async def _reply(stream: SocketStream) -> bytes:
    """One short reply (the tests' replies are small enough to arrive in one piece)."""
    data = b""
    while not data.endswith(b"\r\n"):
        data += await stream.receive()
    return data


async def _ping(stream: SocketStream) -> bytes:
    await stream.send(_cmd("PING"))
    return await stream.receive()


async def _direct(redis_server: EmbeddedRedis, *args: str) -> bytes:
    """Run one command straight on Redis, bypassing the proxy."""
    async with await anyio.connect_tcp("127.0.0.1", redis_server.port) as s:
        await s.send(_cmd(*args))
        return await _reply(s)


async def test_passthrough(redis_server: EmbeddedRedis) -> None:
    """Commands and replies cross the proxy unchanged; counters add up."""
    async with FaultProxy("127.0.0.1", redis_server.port) as proxy:
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as s:
            await s.send(_cmd("PING"))
            assert await _reply(s) == b"+PONG\r\n"
            await s.send(_cmd("ECHO", "hello"))
            assert await _reply(s) == b"$5\r\nhello\r\n"
        assert proxy.stats.accepted == 1
        assert proxy.stats.bytes_up == len(_cmd("PING")) + len(_cmd("ECHO", "hello"))
        assert proxy.stats.bytes_down >= len(b"+PONG\r\n$5\r\nhello\r\n")


async def test_reset_aborts_with_rst(redis_server: EmbeddedRedis) -> None:
    """``reset()`` aborts every open connection with a RST (the client sees a reset,
    not an orderly end of stream), and new connections work again afterwards."""
    async with FaultProxy("127.0.0.1", redis_server.port) as proxy:
        streams = [await anyio.connect_tcp("127.0.0.1", proxy.port) for _ in range(3)]
        for s in streams:
            await s.send(_cmd("PING"))
            assert await _reply(s) == b"+PONG\r\n"
        assert proxy.reset() == 3
        for s in streams:
            with anyio.fail_after(5), pytest.raises(anyio.BrokenResourceError):
                await s.receive()
            await s.aclose()
        assert proxy.stats.resets == 3
        with anyio.fail_after(5):
            await proxy.wait_no_connections()
        assert proxy.connections == 0
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as s:
            await s.send(_cmd("PING"))
            assert await _reply(s) == b"+PONG\r\n"


async def test_blackhole_holds_until_healed(redis_server: EmbeddedRedis) -> None:
    """In a blackhole a command neither reaches Redis nor gets an answer, for as long
    as it lasts; new connections are still accepted. When it heals, what was held is
    delivered (like a healed partition)."""
    key = f"fp:{uuid.uuid4().hex}"
    async with (
        FaultProxy("127.0.0.1", redis_server.port) as proxy,
        await anyio.connect_tcp("127.0.0.1", proxy.port) as s,
    ):
        proxy.blackhole()
        assert proxy.blackholed
        await s.send(_cmd("SET", key, "v"))
        # Absence can only be shown over a window: nothing comes back in 0.5 s...
        with anyio.move_on_after(0.5) as window:
            await s.receive()
        assert window.cancelled_caught
        # ... and Redis has not seen the write.
        assert await _direct(redis_server, "EXISTS", key) == b":0\r\n"
        # A new connection is accepted but gets no answer either.
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as other:
            await other.send(_cmd("PING"))
            with anyio.move_on_after(0.2) as window2:
                await other.receive()
            assert window2.cancelled_caught
            assert proxy.stats.held_chunks >= 2
            proxy.heal()
            with anyio.fail_after(5):
                assert await _reply(s) == b"+OK\r\n"
                assert await _reply(other) == b"+PONG\r\n"
    assert await _direct(redis_server, "GET", key) == b"$1\r\nv\r\n"


async def test_drop_reply_after_forward(redis_server: EmbeddedRedis) -> None:
    """The command reaches Redis and runs, then the connection dies instead of carrying
    the answer: the lost acknowledgement. Only ``n`` commands (matching ``match``) are
    hit; the rest pass."""
    key = f"fp:{uuid.uuid4().hex}"
    async with FaultProxy("127.0.0.1", redis_server.port) as proxy:
        proxy.drop_reply_after_forward(1, match=b"INCR")
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as s:
            await s.send(_cmd("PING"))  # does not match: passes
            assert await _reply(s) == b"+PONG\r\n"
            await s.send(_cmd("INCR", key))
            with anyio.fail_after(5), pytest.raises(anyio.BrokenResourceError):
                await s.receive()
        assert proxy.stats.dropped_replies == 1
        assert proxy.drops_pending == 0
        assert await _direct(redis_server, "GET", key) == b"$1\r\n1\r\n"
        # The next command on a new connection is answered normally.
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as s:
            await s.send(_cmd("INCR", key))
            assert await _reply(s) == b":2\r\n"


async def test_latency(redis_server: EmbeddedRedis) -> None:
    """With ``latency(d)`` each direction is delayed by ``d``: a round trip takes at least
    2d (a lower bound cannot flake: sleeps never end early). The figure is printed."""
    async with (
        FaultProxy("127.0.0.1", redis_server.port) as proxy,
        await anyio.connect_tcp("127.0.0.1", proxy.port) as s,
    ):
        proxy.latency(0.1)
        start = anyio.current_time()
        await s.send(_cmd("PING"))
        assert await _reply(s) == b"+PONG\r\n"
        rtt = anyio.current_time() - start
        proxy.latency(0)
        start = anyio.current_time()
        await s.send(_cmd("PING"))
        assert await _reply(s) == b"+PONG\r\n"
        plain = anyio.current_time() - start
    print(f"\nround trip with latency(0.1): {rtt * 1000:.1f} ms; without: {plain * 1000:.2f} ms")
    assert rtt >= 0.2


async def test_upstream_down(redis_server: EmbeddedRedis) -> None:
    """When Redis cannot be reached, a connection through the proxy is reset at once."""
    with EmbeddedRedis() as url:
        port = int(url.rsplit(":", 1)[1])
    # That server is gone now: its port refuses connections.
    async with FaultProxy("127.0.0.1", port) as proxy:
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as s:
            with anyio.fail_after(5), pytest.raises(anyio.BrokenResourceError):
                await _ping(s)
        assert proxy.stats.upstream_failures == 1


async def test_gqm_client_through_proxy(redis_url: str, prefix: str) -> None:
    """A gqm client works through the proxy, and keeps working after its connections
    were reset (an error at most for the calls caught by the reset)."""
    async with (
        FaultProxy("127.0.0.1", int(redis_url.rsplit(":", 1)[1])) as proxy,
        gqm.Client(proxy.url, prefix=prefix) as client,
    ):
        job = await client.enqueue("t", 1, job_id="first")
        assert (await client.get_job(job.id)).status == gqm.JobStatus.READY
        assert proxy.reset() >= 1
        try:
            await client.enqueue("t", 2, job_id="second")
        except gqm.RedisConnectionError:
            await client.enqueue("t", 2, job_id="second")
        assert (await client.get_job("second")).payload == 2
        assert proxy.stats.accepted >= 2
