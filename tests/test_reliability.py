"""Delivery guarantees: leases, fencing, reaping, hand-back on shutdown, script cache loss."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import gqm
from gqm import _scripts as scripts

from .helpers import Gate, raw, record, run_script, serving

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio


async def _claim(
    client: gqm.Client, queue: str, token: str, lease_ms: int = 30_000
) -> dict[str, str]:
    q = client.keys.queue(queue)
    # Each call is a new claim attempt (a repeated attempt replays the first one's claims).
    attempt = f"{token}-{uuid.uuid4().hex[:8]}"
    reply = await run_script(
        client, "claim", scripts.claim_keys(q, attempt), [100, lease_ms, "w", attempt]
    )
    return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 4)}


async def _finish(
    client: gqm.Client, queue: str, job_id: str, token: str, outcome: str = "c"
) -> int:
    q = client.keys.queue(queue)
    args = [-1, -1, client.keys.done_channel, q.wake, job_id, token, outcome, b"", 0, 1]
    codes, _, _ = await run_script(client, "finish", scripts.finish_keys(q), args)
    return int(codes[0])


async def _expire_leases(client: gqm.Client, queue: str) -> list[int]:
    """Make every lease of ``queue`` expired, then run the reaper script once."""
    q = client.keys.queue(queue)
    for job_id in await raw(client, "ZRANGE", q.leases, 0, -1):
        await raw(client, "ZADD", q.leases, 0, job_id)
    args = [1000, 3, -1, q.wake, client.keys.done_channel, -1]
    return list(await run_script(client, "reap", scripts.reap_keys(q), args))


async def test_stale_worker_is_fenced(client: gqm.Client) -> None:
    """After its lease was reaped and the job re-claimed, the first worker can neither
    complete, retry, dead-letter nor renew it; the new owner can."""
    job = await client.enqueue("t", None)
    (token_a,) = (await _claim(client, "default", "A")).values()
    assert await _expire_leases(client, "default") == [1, 0, -1, []]
    rec = await record(client, "default", job.id)
    assert (rec.status, rec.recoveries, rec.token) == ("ready", 1, None)
    (token_b,) = (await _claim(client, "default", "B")).values()
    assert token_a != token_b
    for outcome in ("c", "r", "d", "h"):
        assert await _finish(client, "default", job.id, token_a, outcome) == 0
    q = client.keys.queue("default")
    lost = await run_script(client, "renew", scripts.renew_keys(q), [30_000, job.id, token_a])
    assert lost == [[job.id.encode()], []]
    assert await _finish(client, "default", job.id, token_b) == 1
    # A replay of the same call (its reply was lost) is recognised, not applied twice.
    assert await _finish(client, "default", job.id, token_b) == 2
    assert await raw(client, "HGET", q.meta, "processed") == b"1"
    rec = await record(client, "default", job.id)
    assert (rec.status, rec.attempt) == ("completed", 2)


async def test_poison_pill_goes_to_dlq(client: gqm.Client) -> None:
    """A job whose lease expires more than max_recoveries times is dead-lettered."""
    job = await client.enqueue("t", None)
    for _ in range(3):
        await _claim(client, "default", "x")
        assert (await _expire_leases(client, "default"))[:2] == [1, 0]
    await _claim(client, "default", "x")
    assert (await _expire_leases(client, "default"))[:2] == [0, 1]
    rec = await record(client, "default", job.id)
    assert rec.status == "dead_letter"
    assert "lease expired 4 times" in (rec.error or "")


async def test_lost_lease_stops_the_running_handler(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """When the renewer finds a lease gone, the handler is cancelled and nothing is recorded."""
    server = make_server(lease_ttl=1.5)
    started = anyio.Event()
    cancelled = anyio.Event()

    async def hold(job: gqm.Job[Any]) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    server.handle("hold", hold)
    job = await client.enqueue("hold", None)
    async with serving(server):
        await started.wait()
        # Another server's reaper takes the job back (as if this one had hung).
        await _expire_leases(client, "default")
        with anyio.fail_after(10):
            await cancelled.wait()
        await client.pause("default")
    rec = await record(client, "default", job.id)
    assert (rec.status, rec.recoveries) == ("ready", 1)


async def test_grace_expiry_hands_jobs_back(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """Jobs still running when the grace period ends are cancelled and handed back at once:
    ready again, the attempt not counted, no lease left behind."""
    server = make_server(grace_period=0.2, concurrency=3)
    gate = Gate(expected=3)
    server.handle("slow", lambda job: gate.enter(job.id))
    jobs = await client.enqueue_batch([gqm.BatchItem("slow", i) for i in range(5)])
    async with serving(server):
        await gate.all_started.wait()
    q = client.keys.queue("default")
    assert await raw(client, "ZCARD", q.leases) == 0
    assert await raw(client, "LLEN", q.ready) == 5
    for job in jobs:
        rec = await record(client, "default", job.id)
        assert (rec.status, rec.attempt, rec.retry_count, rec.token) == ("ready", 0, 0, None)
    assert server.inflight == 0


async def test_cancelling_serve_hands_jobs_back(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """Cancelling the caller's scope skips the grace period and still hands back."""
    server = make_server(grace_period=60, concurrency=2)
    gate = Gate(expected=2)
    server.handle("slow", lambda job: gate.enter(job.id))
    await client.enqueue_batch([gqm.BatchItem("slow", i) for i in range(2)])
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        await gate.all_started.wait()
        tg.cancel_scope.cancel()
    q = client.keys.queue("default")
    assert await raw(client, "ZCARD", q.leases) == 0
    assert await raw(client, "LLEN", q.ready) == 2


async def test_graceful_shutdown_lets_running_jobs_finish(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """Within the grace period running jobs complete; queued ones are left for later."""
    server = make_server(grace_period=30, concurrency=2)
    gate = Gate(expected=2)

    async def slow(job: gqm.Job[Any]) -> str:
        await gate.enter(job.id)
        return "finished"

    server.handle("slow", slow)
    jobs = await client.enqueue_batch([gqm.BatchItem("slow", i) for i in range(4)])
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        await gate.all_started.wait()
        server.shutdown()
        gate.release.set()
    statuses = Counter([(await client.get_job(j.id)).status for j in jobs])
    assert statuses == {gqm.JobStatus.COMPLETED: 2, gqm.JobStatus.READY: 2}
    for job_id in gate.started:
        assert await client.result(job_id, timeout=1) == "finished"


async def test_script_flush_is_healed(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """SCRIPT FLUSH while serving surfaces no error: scripts are re-sent on NOSCRIPT."""
    server = make_server()
    server.handle("echo", lambda job: _value(job))
    async with serving(server):
        for i in range(5):
            await raw(client, "SCRIPT", "FLUSH")
            job = await client.enqueue("echo", i)
            assert await client.result(job.id, timeout=10) == i


async def _value(job: gqm.Job[Any]) -> Any:
    return job.payload


async def test_data_integrity_10k(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """10,000 jobs, 20 workers, nothing crashing: every job runs exactly once."""
    n = 10_000
    server = make_server(concurrency=20)
    runs: Counter[str] = Counter()
    all_done = anyio.Event()

    async def count(job: gqm.Job[Any]) -> None:
        runs[job.id] += 1
        if len(runs) == n:
            all_done.set()

    server.handle("count", count)
    ids: list[str] = []
    for start in range(0, n, 1000):
        batch = await client.enqueue_batch(
            [gqm.BatchItem("count", i) for i in range(start, start + 1000)]
        )
        ids += [j.id for j in batch]
    async with serving(server):
        with anyio.fail_after(120):
            await all_done.wait()
    assert set(runs) == set(ids)
    assert max(runs.values()) == 1
    q = client.keys.queue("default")
    assert await raw(client, "ZCARD", q.completed) == n
    assert await raw(client, "LLEN", q.ready) == 0
    assert await raw(client, "ZCARD", q.leases) == 0
    assert await raw(client, "HGET", q.meta, "processed") == str(n).encode()


async def test_eviction_policy_preflight(
    client: gqm.Client, make_server: Callable[..., gqm.Server], caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that may evict keys is refused in strict mode and warned about by default."""
    await raw(client, "CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    try:
        server = make_server(eviction_check="refuse")
        server.handle("t", _value)
        with pytest.raises(gqm.ConfigurationError, match="allkeys-lru"):
            await server.serve()
        server = make_server()
        server.handle("t", _value)
        async with serving(server):
            pass
        assert any("maxmemory-policy is 'allkeys-lru'" in r.getMessage() for r in caplog.records)
    finally:
        await raw(client, "CONFIG", "SET", "maxmemory-policy", "noeviction")
