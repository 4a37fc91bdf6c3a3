"""Sentinel failover (RELIABILITY T8): 1 primary, 1 replica and 3 sentinels on loopback.

gqm runs on an injected ``redis.asyncio.Sentinel`` master client, so this scenario runs
on asyncio only (redis-py cannot run under trio). Jobs stream in with custom ids while
``SENTINEL FAILOVER`` promotes the replica; processing must resume on the new primary,
and no acknowledged enqueue may be lost (a graceful failover waits for the replica to
catch up). Figures are printed (``pytest -s -rA``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

import gqm

from .faultproxy import RedisProcess, SentinelProcess
from .helpers import serving
from .invariants import assert_invariants
from .test_redis_faults import (
    JOB,
    STRESS,
    Executions,
    Producer,
    existing,
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


@dataclass
class _Setup:
    primary: RedisProcess
    replica: RedisProcess
    sentinel_ports: list[int]
    min_replicas: int
    n: int
    switch_at: int


@pytest.mark.parametrize(
    "min_replicas",
    # Fast mode runs the safe setup only; deep mode also shows Redis's defaults.
    [0, 1] if STRESS else [1],
    ids=lambda n: f"min-replicas-to-write={n}",
)
async def test_t8_sentinel_failover(min_replicas: int, record_property: Any) -> None:
    """T8: ``SENTINEL FAILOVER`` in the middle of a job stream. Processing resumes on
    the promoted replica (times reported), no job is stuck, and the new primary's
    keyspace passes the invariant checker.

    With Redis's defaults (``min-replicas-to-write 0``) the old primary keeps taking
    writes until Sentinel demotes it, seconds after the promotion; what gqm wrote there
    meanwhile is dropped when it resyncs (reported: acknowledged jobs whose records are
    missing, and any that never ran). With ``min-replicas-to-write 1`` it refuses them
    (NOREPLICAS, retried by gqm): asserted; what can still be lost is a write
    acknowledged just before the promotion that had not replicated yet (asynchronous
    replication; gqm has no WAIT mode), reported and asserted to be only that.
    """
    n, switch_at = (3000, 1000) if STRESS else (600, 200)
    args = ["--appendonly", "no"]
    if min_replicas:
        args += ["--min-replicas-to-write", str(min_replicas), "--min-replicas-max-lag", "10"]
    primary = RedisProcess(*args)
    with primary, RedisProcess(*args, "--replicaof", "127.0.0.1", str(primary.port)) as replica:
        settings = (
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER} 10000",
        )
        sentinels = [SentinelProcess(MASTER, primary.port, *settings) for _ in range(3)]
        try:
            for s in sentinels:
                s.start()
            setup = _Setup(
                primary, replica, [s.port for s in sentinels], min_replicas, n, switch_at
            )
            await _run_failover(setup, record_property)
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


async def _run_failover(setup: _Setup, record_property: Any) -> None:
    for port in setup.sentinel_ports:
        await _wait_until(lambda p=port: _replica_ready(p), 30, "sentinel sees the replica")
    sentinel = Sentinel([("127.0.0.1", p) for p in setup.sentinel_ports], socket_timeout=2)
    server_redis = sentinel.master_for(MASTER, socket_timeout=2)
    client_redis = sentinel.master_for(MASTER, socket_timeout=2)
    try:
        await _stream_through_failover(setup, server_redis, client_redis, record_property)
    finally:
        # gqm leaves injected clients open: they are ours to close.
        await server_redis.aclose()
        await client_redis.aclose()
        for s in sentinel.sentinels:
            await s.aclose()


async def _stream_through_failover(
    setup: _Setup, server_redis: Redis, client_redis: Redis, record_property: Any
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
    ids = job_ids(setup.n)
    probes = job_ids(20, "probe")
    sentinel_port = setup.sentinel_ports[0]
    async with gqm.Client(client_redis, prefix=prefix) as client:
        producer = Producer(client, pace=0.005)
        async with serving(server):
            await producer.run(ids[: setup.switch_at])
            async with anyio.create_task_group() as tg:
                tg.start_soon(producer.run, ids[setup.switch_at :])
                started = anyio.current_time()
                await _sentinel_reply(sentinel_port, "SENTINEL", "FAILOVER", MASTER)

                async def promoted() -> bool:
                    addr = await _sentinel_reply(
                        sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER
                    )
                    return int(addr[1]) == setup.replica.port

                await _wait_until(promoted, 30, "the replica is promoted")
                promoted_at = anyio.current_time()

                async def demoted() -> bool:
                    role = await _sentinel_reply(setup.primary.port, "ROLE")
                    return bool(role[0] == "slave")

                # Until Sentinel turns the old primary into a replica, it still takes
                # writes: whatever lands there meanwhile is dropped when it resyncs.
                await _wait_until(demoted, 60, "the old primary is demoted")
                demoted_at = anyio.current_time()
            # Jobs enqueued once the old primary is gone show processing on the new one.
            await producer.run(probes)
            lost = await wait_drained(client, execs, [*ids, *probes], timeout=60)
        counts = await queue_counts(client)
        kept = await existing(client, "default", [*ids, *probes])
        await assert_invariants(client, drained=True)
        role = await _sentinel_reply(setup.replica.port, "ROLE")
    # Resumption on the new primary: the first acknowledgement and the first run after
    # the old primary stopped taking writes.
    first_ack = min(t for t in producer.acked.values() if t >= demoted_at) - demoted_at
    first_run = min(t for t in execs.first.values() if t >= demoted_at) - demoted_at
    missing = setup.n + len(probes) - len(kept)
    window = sum(1 for t in producer.acked.values() if promoted_at <= t < demoted_at)
    report(
        record_property,
        "asyncio",
        f"T8 Sentinel failover, min-replicas-to-write={setup.min_replicas}",
        jobs=setup.n,
        promoted_after_s=round(promoted_at - started, 3),
        old_primary_demoted_after_s=round(demoted_at - started, 3),
        first_ack_after_demotion_s=round(first_ack, 3),
        first_run_after_demotion_s=round(first_run, 3),
        acked_between_promotion_and_demotion=window,
        acked_never_ran=len(lost),
        acked_records_missing_on_new_primary=missing,
        enqueue_connection_errors=producer.connection_errors,
        enqueue_reply_errors=len(producer.reply_errors),
        duplicate_executions=execs.duplicates,
    )
    assert role[0] == "master"
    assert set(probes) <= execs.runs.keys(), "processing resumed on the new primary"
    # Nothing is stuck on the new primary: every job it holds has completed.
    assert counts["ready"] == counts["leases"] == counts["scheduled"] == 0
    assert counts["completed"] == len(kept)
    if setup.min_replicas:
        # The old primary refused every write once its replica was promoted (nothing
        # was acknowledged in the split-brain window). Replication stays asynchronous:
        # a write acknowledged just before the promotion may not have reached the
        # replica (no WAIT), so a loss is possible there, and only there.
        assert window == 0
        assert all(producer.acked[i] < promoted_at for i in lost), lost
        missing_ids = {*ids, *probes} - kept
        assert all(producer.acked[i] < promoted_at for i in missing_ids), missing_ids
