"""Clock skew (RELIABILITY T10): worker processes whose wall clock is 300 s ahead or
behind still fence, renew and promote on the Redis clock.

Two ``tests/_chaos_worker.py`` processes run with ``--skew +300`` and ``--skew -300``
(``time.time``/``time.time_ns`` shifted before gqm is imported). Jobs that outlive the
lease must not be reclaimed (their leases are renewed on Redis time), and delayed jobs
must not start before their due time on the Redis clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import gqm

from ._chaos import (
    LEASE_TTL,
    REAP_INTERVAL,
    STRESS,
    TIME_LIMIT,
    Fleet,
    executions,
    percentiles,
    records,
    wait_terminal,
    worker_args,
)
from ._chaos_worker import JOB_TYPE
from .helpers import raw
from .invariants import assert_invariants

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [
    pytest.mark.anyio,
    TIME_LIMIT,
    pytest.mark.filterwarnings("ignore:record_property is incompatible:pytest.PytestWarning"),
]

SKEW = 300.0
POLL = 1.0


async def _redis_ms(client: gqm.Client) -> int:
    seconds, micros = await raw(client, "TIME")
    return int(seconds) * 1000 + int(micros) // 1000


async def _heartbeat_offsets(client: gqm.Client, n: int) -> list[float]:
    """Seconds between each live server's heartbeat time and the Redis clock, once
    ``n`` servers have written one (polled: the heartbeat is written at start)."""
    with anyio.fail_after(30):
        while True:  # no event announces a heartbeat: poll Redis, bounded
            servers = await client.servers()
            if len(servers) >= n:
                break
            await anyio.sleep(0.1)
    now = await _redis_ms(client) / 1000
    return [s.heartbeat_at - now for s in servers]


async def _all_promoted(client: gqm.Client, at: int, n: int, early: list[str]) -> int:
    """Poll the default queue's scheduled set (there is no event for a promotion)
    until it is empty; returns the Redis time (ms) of the first empty sample. A sample
    taken before ``at`` with fewer than ``n`` jobs left means an early promotion: it is
    appended to ``early``."""
    scheduled = client.keys.queue("default").scheduled
    driver = await client._conn.get()
    with anyio.fail_after(120):
        while True:
            (sec, micros), left = await driver.pipeline([["TIME"], ["ZCARD", scheduled]])
            now = int(sec) * 1000 + int(micros) // 1000
            if now < at and left < n:
                early.append(f"{n - left} promoted {at - now} ms before T")
            if left == 0:
                return now
            await anyio.sleep(0.02)


async def test_skewed_workers(
    client: gqm.Client,
    redis_url: str,
    prefix: str,
    anyio_backend: str,
    tmp_path: Path,
    record_property: Any,
) -> None:
    """T10: with workers at +300 s and -300 s, jobs running 1.5 leases each complete
    with exactly one execution and no recovery (0 premature reclaims), and delayed jobs
    (``enqueue_at`` a Redis time T and ``enqueue_in``) never start before T on the Redis
    clock (0 early); how late they start is reported."""
    long_jobs, delayed = (200, 10_000) if STRESS else (20, 300)
    exec_log = tmp_path / "executions.log"
    base = worker_args(
        redis_url,
        prefix,
        anyio_backend,
        exec_log,
        concurrency=50,
        lease_ttl=LEASE_TTL,
        reap_interval=REAP_INTERVAL,
        poll_interval=POLL,
    )
    ahead = Fleet("ahead", 1, lambda tag: [*base, "--tag", tag, "--skew", str(SKEW)], tmp_path)
    behind = Fleet("behind", 1, lambda tag: [*base, "--tag", tag, "--skew", str(-SKEW)], tmp_path)
    expected: dict[str, str] = {}
    due: dict[str, int] = {}
    early: list[str] = []
    async with anyio.create_task_group() as tg:
        await ahead.start(tg)
        await behind.start(tg)
        # The skew is real: each server's heartbeat carries its own (wrong) wall clock.
        offsets = await _heartbeat_offsets(client, 2)
        assert sorted(round(o / SKEW) for o in offsets) == [-1, 1], offsets
        long = await client.enqueue_batch(
            [gqm.BatchItem(JOB_TYPE, {"sleep": LEASE_TTL * 1.5}) for _ in range(long_jobs)]
        )
        expected |= {j.id: "default" for j in long}
        # Half at an absolute Redis time T, half with a delay computed to land on T:
        # T leaves time to enqueue them all first (1 ms a job, and 3 s).
        at = await _redis_ms(client) + 3000 + delayed
        when = datetime.fromtimestamp(at / 1000, UTC)
        limit = anyio.CapacityLimiter(20)

        async def one_at() -> None:
            async with limit:
                j = await client.enqueue_at(JOB_TYPE, {}, when)
            expected[j.id] = "default"
            due[j.id] = at

        async with anyio.create_task_group() as producers:
            for _ in range(delayed // 2):
                producers.start_soon(one_at)
        for start in range(delayed // 2, delayed, 1000):
            size = min(1000, delayed - start)
            delay = (at - await _redis_ms(client)) / 1000
            batch = await client.enqueue_batch(
                [gqm.BatchItem(JOB_TYPE, {}, delay=delay) for _ in range(size)]
            )
            expected |= {j.id: "default" for j in batch}
        enqueued_by = await _redis_ms(client)
        # Watch the scheduled set on the Redis clock until every delayed job is ready:
        # when it empties is when they were all promoted (sampled every 20 ms).
        ready_at = await _all_promoted(client, at, delayed, early)
        got = await wait_terminal(
            client,
            expected,
            timeout=300 if STRESS else 60,
            describe=lambda: ahead.describe() + behind.describe(),
        )
        await ahead.stop(timeout=60)
        await behind.stop(timeout=60)
    got = await records(client, expected.items())
    late: list[float] = []
    for job_id, rec in got.items():
        assert rec.status == "completed", rec
        assert rec.recoveries == 0, f"job {job_id} was reclaimed: {rec}"
        if rec.scheduled_at is None:
            # Not delayed (a long job), or enqueued after T on a very slow machine: then
            # it was ready at once and says nothing about promotion.
            assert job_id not in due or rec.created_at is None or rec.created_at >= at, rec
            continue
        target = due.get(job_id, rec.scheduled_at)
        assert rec.scheduled_at == target, rec
        assert rec.started_at is not None
        if rec.started_at < target:
            early.append(job_id)
        late.append((rec.started_at - target) / 1000)
    assert not early, f"{len(early)} delayed jobs promoted or started early: {early[:5]}"
    runs = executions(exec_log)
    per_job: dict[str, int] = {}
    for r in runs:
        per_job[r.job_id] = per_job.get(r.job_id, 0) + 1
    assert per_job == dict.fromkeys(expected, 1), "a job ran twice: a lease was reclaimed"
    assert not ahead.unexpected_exits()
    assert not behind.unexpected_exits()
    await assert_invariants(client, drained=True)
    by_worker: dict[str, int] = {}
    for r in runs:
        by_worker[r.tag] = by_worker.get(r.tag, 0) + 1
    print(
        f"[{anyio_backend}] T10 clock skew (heartbeat offsets "
        f"{[round(o) for o in offsets]}s): {long_jobs} jobs of "
        f"{LEASE_TTL * 1.5:g}s (lease {LEASE_TTL:g}s) -> 0 reclaims, 0 duplicates; {delayed} "
        f"delayed jobs ({len(late)} still scheduled when enqueueing ended "
        f"{(at - enqueued_by) / 1000:.1f}s before T) -> 0 early; on the Redis clock all "
        f"ready {(ready_at - at) / 1000:.3f}s after T (poll {POLL:g}s), started "
        f"{percentiles(late)} after due (throughput of 2 workers x 50); executions per "
        f"worker {by_worker}"
    )
    record_property("delayed_ready_after_t_s", round((ready_at - at) / 1000, 3))
    record_property("delayed_start_late_max_s", round(max(late), 3))
