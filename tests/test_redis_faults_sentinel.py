"""Sentinel failover (RELIABILITY T8): 1 primary, 1 replica and 3 sentinels on loopback.

gqm runs on an injected ``redis.asyncio.Sentinel`` master client, so this scenario runs
on asyncio only (redis-py cannot run under trio). Jobs stream in with custom ids while
``SENTINEL FAILOVER`` promotes the replica; processing must resume on the new primary,
and no acknowledged enqueue may be lost (a graceful failover waits for the replica to
catch up). Figures are printed (``pytest -s -rA``).
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

import gqm

from .faultproxy import RedisProcess, SentinelProcess
from .helpers import serving
from .test_redis_faults import (
    JOB,
    STRESS,
    Executions,
    Producer,
    check_invariants,
    job_ids,
    queue_counts,
    report,
    wait_drained,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:record_property is incompatible:pytest.PytestWarning"),
    pytest.mark.timeout(900 if STRESS else 120),
]

MASTER = "gqm-primary"
DOWN_AFTER_MS = 1000


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: the Sentinel client is redis-py's."""
    return "asyncio"


async def _sentinel_reply(port: int, *args: Any) -> Any:
    async with Redis(host="127.0.0.1", port=port, decode_responses=True) as r:
        return await r.execute_command(*args)


async def _wait_until(condition: Any, timeout: float, what: str) -> None:
    try:
        with anyio.fail_after(timeout):
            while not await condition():  # noqa: ASYNC110
                # Polling Sentinel and Redis for a state: there is no event for it.
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:g} s: {what}") from None


async def test_t8_sentinel_failover(record_property: Any) -> None:
    """T8: ``SENTINEL FAILOVER`` in the middle of a job stream. Processing resumes on
    the promoted replica (time reported), no acknowledged enqueue is lost, no job is
    stuck, and the new primary's keyspace passes the invariant checker."""
    n, switch_at = (3000, 1000) if STRESS else (600, 200)
    primary = RedisProcess("--appendonly", "no")
    with primary, RedisProcess("--replicaof", "127.0.0.1", str(primary.port)) as replica:
        settings = (
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER} 10000",
        )
        sentinels = [SentinelProcess(MASTER, primary.port, *settings) for _ in range(3)]
        try:
            for s in sentinels:
                s.start()
            await _run_failover(primary, replica, sentinels, n, switch_at, record_property)
        finally:
            for s in sentinels:
                s.stop()


async def _replica_ready(sentinel_port: int) -> bool:
    replicas = await _sentinel_reply(sentinel_port, "SENTINEL", "REPLICAS", MASTER)
    for flat in replicas:
        info = flat if isinstance(flat, dict) else dict(zip(flat[::2], flat[1::2], strict=True))
        if info.get("flags") == "slave" and info.get("master-link-status") == "ok":
            return True
    return False


async def _run_failover(
    primary: RedisProcess,
    replica: RedisProcess,
    sentinels: list[SentinelProcess],
    n: int,
    switch_at: int,
    record_property: Any,
) -> None:
    ports = [s.port for s in sentinels]
    for port in ports:
        await _wait_until(lambda p=port: _replica_ready(p), 30, "sentinel sees the replica")
    sentinel = Sentinel([("127.0.0.1", p) for p in ports], socket_timeout=2)
    try:
        await _stream_through_failover(sentinel, replica, ports, n, switch_at, record_property)
    finally:
        # gqm leaves injected clients open: they are ours to close.
        for s in sentinel.sentinels:
            await s.aclose()


async def _stream_through_failover(
    sentinel: Sentinel,
    replica: RedisProcess,
    ports: list[int],
    n: int,
    switch_at: int,
    record_property: Any,
) -> None:
    server_redis = sentinel.master_for(MASTER, socket_timeout=2)
    client_redis = sentinel.master_for(MASTER, socket_timeout=2)
    try:
        await _serve(server_redis, client_redis, replica, ports, n, switch_at, record_property)
    finally:
        await server_redis.aclose()
        await client_redis.aclose()


async def _serve(
    server_redis: Redis,
    client_redis: Redis,
    replica: RedisProcess,
    ports: list[int],
    n: int,
    switch_at: int,
    record_property: Any,
) -> None:
    prefix = f"t8{uuid.uuid4().hex[:6]}"
    execs = Executions()
    server = gqm.Server(
        server_redis,
        prefix=prefix,
        handle_signals=False,
        grace_period=2,
        concurrency=20,
        lease_ttl=5,
        poll_interval=0.5,
    )
    server.handle(JOB, execs.handler)
    ids = job_ids(n)
    async with gqm.Client(client_redis, prefix=prefix) as client:
        producer = Producer(client, pace=0.005)
        async with serving(server):
            await producer.run(ids[:switch_at])
            async with anyio.create_task_group() as tg:
                tg.start_soon(producer.run, ids[switch_at:])
                started = anyio.current_time()
                await _sentinel_reply(ports[0], "SENTINEL", "FAILOVER", MASTER)

                async def switched() -> bool:
                    addr = await _sentinel_reply(
                        ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER
                    )
                    return int(addr[1]) == replica.port

                await _wait_until(switched, 30, "the replica is promoted")
                switched_at = anyio.current_time()
            lost = await wait_drained(client, execs, ids, timeout=60)
        counts = await queue_counts(client)
        await check_invariants(client, drained=True)
        on_new_primary = await _sentinel_reply(replica.port, "ROLE")
    after = [execs.first[i] for i, t in producer.acked.items() if t >= switched_at]
    report(
        record_property,
        "asyncio",
        "T8 Sentinel failover",
        jobs=n,
        promoted_after_s=round(switched_at - started, 3),
        resumed_after_promotion_s=round(min(after) - switched_at, 3),
        lost_acknowledged=len(lost),
        enqueue_connection_errors=producer.connection_errors,
        enqueue_reply_errors=len(producer.reply_errors),
        duplicate_executions=execs.duplicates,
    )
    assert on_new_primary[0] == "master"
    assert lost == set()
    assert counts["ready"] == counts["leases"] == counts["scheduled"] == 0
    assert counts["completed"] == n
