"""Redis-side faults (RELIABILITY T5, T7, CLIENT PAUSE, T9): Redis killed and restarted,
its script cache flushed, its clients paused, its memory full.

Each scenario runs a real gqm server (and client) against a redis-server of its own
(:class:`~tests.faultproxy.RedisProcess`) or the session's, while the fault happens.
Handlers run in the test process and count their executions there, outside gqm's
keys, so a lost or duplicated job shows even if the queue's own state were wrong.
Figures are printed (see them with ``pytest -s -rA``) and recorded as junit properties;
correctness (0 lost, 0 stuck, typed errors) is asserted.

Fast mode is the default; ``GQM_STRESS=1`` runs the full sizes (slow).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import gqm

from .faultproxy import RedisProcess
from .helpers import raw, serving
from .invariants import assert_invariants

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

#: Deep mode: the scenarios' full sizes and fault lengths (slow: minutes, not seconds).
STRESS = os.environ.get("GQM_STRESS") == "1"

pytestmark = [
    pytest.mark.anyio,
    # The figures go to junit as testcase properties, which pytest's default junit
    # family (xunit2) warns about; the suite turns warnings into errors.
    pytest.mark.filterwarnings("ignore:record_property is incompatible:pytest.PytestWarning"),
    # Deep mode outlasts the suite's default per-test timeout.
    pytest.mark.timeout(900 if STRESS else 120),
]
JOB = "work"


# -- the workload harness (shared with test_redis_faults_proxy.py) --------------------


class Executions:
    """Handler runs, counted in the test process (outside gqm's keys)."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        #: job id -> when it first ran (anyio clock).
        self.first: dict[str, float] = {}
        self._progress = anyio.Event()

    async def handler(self, job: gqm.Job[Any]) -> int:
        self.runs[job.id] += 1
        self.first.setdefault(job.id, anyio.current_time())
        self._progress.set()
        self._progress = anyio.Event()
        return 0

    async def wait_for(self, ids: Iterable[str], timeout: float) -> None:
        """Wait until every job in ``ids`` has run at least once."""
        wanted = set(ids)
        with anyio.fail_after(timeout):
            while not wanted <= self.runs.keys():
                await self._progress.wait()

    @property
    def duplicates(self) -> int:
        """Executions beyond the first, over all jobs."""
        return sum(n - 1 for n in self.runs.values() if n > 1)


@dataclass
class Producer:
    """Enqueues jobs with custom ids one at a time, retrying through Redis errors as an
    application would (the same id again, so a job that landed is not doubled)."""

    client: gqm.Client
    pace: float = 0.0
    #: job id -> when its enqueue was acknowledged (anyio clock).
    acked: dict[str, float] = field(default_factory=dict)
    #: Enqueues that failed with a connection error and were tried again.
    connection_errors: int = 0
    #: Retries answered "already exists": the earlier attempt had landed.
    confirmed_by_duplicate: int = 0
    #: Error replies (not connection losses): gqm should never surface any here.
    reply_errors: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    async def run(self, ids: Sequence[str]) -> None:
        for i, job_id in enumerate(ids):
            retried = False
            while True:
                try:
                    await self.client.enqueue(JOB, i, job_id=job_id, **self.options)
                except gqm.DuplicateJobError:
                    if not retried:
                        raise
                    self.confirmed_by_duplicate += 1
                except gqm.RedisReplyError as err:
                    self.reply_errors.append(str(err))
                    retried = True
                    await anyio.sleep(0.05)
                    continue
                except gqm.RedisConnectionError:
                    self.connection_errors += 1
                    retried = True
                    # Redis is away: an application backs off before trying again.
                    await anyio.sleep(0.05)
                    continue
                break
            self.acked[job_id] = anyio.current_time()
            if self.pace:
                # Pacing the stream (a rate, not a synchronisation).
                await anyio.sleep(self.pace)


def job_ids(n: int, tag: str = "j") -> list[str]:
    run = uuid.uuid4().hex[:6]
    return [f"{tag}-{run}-{i}" for i in range(n)]


async def existing(client: gqm.Client, queue: str, ids: Sequence[str]) -> set[str]:
    """The ids among ``ids`` whose job record exists in Redis."""
    if not ids:
        return set()
    found = await raw(client, "HMGET", client.keys.queue(queue).jobs, *ids)
    return {i for i, rec in zip(ids, found, strict=True) if rec is not None}


async def retrying(action: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Run ``action`` until it gets through (Redis may still be coming back)."""
    with anyio.fail_after(timeout):
        while True:
            try:
                return await action()
            except gqm.RedisConnectionError:
                await anyio.sleep(0.05)


async def wait_drained(
    client: gqm.Client, execs: Executions, ids: Sequence[str], timeout: float
) -> set[str]:
    """Wait until every job of ``ids`` has either run or no longer exists in Redis;
    returns the ids that never ran and are gone (lost)."""
    with anyio.fail_after(timeout):
        while True:
            pending = [i for i in ids if i not in execs.runs]
            try:
                still = await existing(client, "default", pending)
            except gqm.RedisConnectionError:
                still = set(pending)
            if not still:
                return set(pending)
            # Polling Redis: there is no event for "this job is gone".
            await anyio.sleep(0.1)


async def queue_counts(client: gqm.Client, queue: str = "default") -> dict[str, int]:
    """The sizes of a queue's state indexes, read in one round trip."""
    q = client.keys.queue(queue)
    names = ("ready", "leases", "scheduled", "completed", "dead")
    replies = await (await client._conn.get()).pipeline(
        [
            ["LLEN", q.ready],
            ["ZCARD", q.leases],
            ["ZCARD", q.scheduled],
            ["ZCARD", q.completed],
            ["ZCARD", q.dead],
        ]
    )
    return dict(zip(names, replies, strict=True))


def report(record_property: Any, backend: str, title: str, **figures: Any) -> None:
    shown = ", ".join(f"{k}={v}" for k, v in figures.items())
    print(f"\n[{backend}] {title}: {shown}")
    for name, value in figures.items():
        record_property(name, value)


# -- T5: Redis restart ----------------------------------------------------------------


def restart_server(url: str, prefix: str) -> tuple[gqm.Server, Executions]:
    """The server of the restart scenarios (T5, T7): short lease and socket timeout so
    that an outage is noticed and recovered from quickly; its executions counted."""
    server = gqm.Server(
        url,
        prefix=prefix,
        handle_signals=False,
        grace_period=2,
        concurrency=20,
        lease_ttl=3,
        socket_timeout=2,
        poll_interval=0.5,
    )
    execs = Executions()
    server.handle(JOB, execs.handler)
    return server, execs


def _t5_sizes() -> tuple[int, int, float]:
    """(jobs, kill after this many acknowledged, seconds Redis stays down)."""
    return (4000, 1500, 3.0) if STRESS else (500, 200, 1.0)


async def test_t5a_redis_kill9_and_aof_restart(
    anyio_backend: str, record_property: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """T5 (a): Redis is SIGKILLed mid-stream and restarted from its AOF (fsync every
    second). The server and the client keep running and resume on their own; every
    acknowledged job runs, except at most those acknowledged in the last moments before
    the kill (the fsync window, counted and reported); delayed jobs that fell due during
    the outage are promoted and run; nothing is left stuck."""
    caplog.set_level(logging.WARNING)
    n, kill_at, down = _t5_sizes()
    with RedisProcess("--appendonly", "yes", "--appendfsync", "everysec") as redis:
        prefix = f"t5a{uuid.uuid4().hex[:6]}"
        server, execs = restart_server(redis.url, prefix)
        ids = job_ids(n)
        async with gqm.Client(redis.url, prefix=prefix, socket_timeout=2) as client:
            producer = Producer(client, pace=0.004)
            async with serving(server):
                await producer.run(ids[:kill_at])
                # Delayed jobs that fall due while Redis is down: the promoter (the
                # scheduler side) must survive the outage to run them.
                delayed = [
                    (await client.enqueue_in(JOB, i, timedelta(seconds=down / 2))).id
                    for i in range(10)
                ]
                async with anyio.create_task_group() as tg:
                    # The stream goes on while Redis dies under it.
                    tg.start_soon(producer.run, ids[kill_at:])
                    redis.kill()
                    killed_at = anyio.current_time()
                    # The outage itself (a duration of the fault, not a synchronisation).
                    await anyio.sleep(down)
                    await anyio.to_thread.run_sync(redis.start)
                    up_at = anyio.current_time()
                lost = await wait_drained(client, execs, ids, timeout=60)
                await execs.wait_for(delayed, timeout=30)
            counts = await queue_counts(client)
            await assert_invariants(client, drained=True)
    in_window = sum(1 for t in producer.acked.values() if killed_at - 1.0 <= t <= killed_at)
    late = [i for i in lost if producer.acked[i] < killed_at - 2.0]
    after = [execs.first[i] for i, t in producer.acked.items() if t >= up_at and i in execs.first]
    first_ack = min((t for t in producer.acked.values() if t >= up_at), default=float("nan"))
    resume = min(after, default=float("nan")) - up_at
    report(
        record_property,
        anyio_backend,
        "T5a kill -9 + AOF restart",
        jobs=n,
        lost=len(lost),
        acked_last_second_before_kill=in_window,
        duplicate_executions=execs.duplicates,
        client_reconnect_s=round(first_ack - up_at, 3),
        resume_s=round(resume, 3),
        connection_errors=producer.connection_errors,
        confirmed_by_duplicate=producer.confirmed_by_duplicate,
    )
    assert producer.reply_errors == []
    # Every acknowledged job ran, or was acknowledged in the fsync window (the last
    # second, with a second of slack for a slow fsync on a loaded machine).
    assert late == [], f"jobs lost outside the fsync window: {late[:5]}"
    assert len(lost) <= in_window + sum(
        1 for t in producer.acked.values() if killed_at - 2.0 <= t < killed_at - 1.0
    )
    assert after, "no job enqueued after the restart ever ran"
    assert counts["ready"] == counts["leases"] == counts["scheduled"] == 0
    assert counts["completed"] == n - len(lost) + len(delayed)


async def test_t5b_redis_restart_with_empty_dataset(
    anyio_backend: str, record_property: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """T5 (b): Redis comes back with an empty dataset (no scripts, no jobs). Nothing
    crashes; no script error reaches the client (NOSCRIPT is healed); new jobs are
    processed. Jobs that were queued are gone with the data (reported). The server
    notices the reset at its next heartbeat, logs it once and registers its queue and
    cron entries again (the time is reported: at most one heartbeat, 5 s)."""
    caplog.set_level(logging.INFO)
    n, kill_at, down = _t5_sizes()
    with RedisProcess("--appendonly", "no") as redis:
        prefix = f"t5b{uuid.uuid4().hex[:6]}"
        server, execs = restart_server(redis.url, prefix)
        # A cron entry (never due in the test) whose definition must survive the reset.
        server.schedule(gqm.CronEntry(id="yearly", cron_expr="0 0 0 1 1 *", job_type=JOB))
        before, after = job_ids(kill_at, "pre"), job_ids(n - kill_at, "post")
        async with gqm.Client(redis.url, prefix=prefix, socket_timeout=2) as client:
            producer = Producer(client, pace=0.004)
            async with serving(server):
                # The first jobs wait in a paused queue: they are in Redis, not run yet.
                await client.pause("default")
                await producer.run(before)
                redis.kill()
                redis.wipe()
                await anyio.sleep(down)  # the outage itself
                await anyio.to_thread.run_sync(redis.start)
                up_at = anyio.current_time()
                up_wall = time.time()  # log records carry wall-clock times
                await producer.run(after)
                await execs.wait_for(after, timeout=60)
                # The server keeps serving: one more job, well after the reset.
                job = await retrying(lambda: client.enqueue(JOB, -1))
                await execs.wait_for([job.id], timeout=30)

                # The server notices the reset at its next heartbeat and registers its
                # queue and cron entry again (polling Redis: there is no event for it).
                async def registered() -> tuple[int, int]:
                    return (
                        await raw(client, "SISMEMBER", client.keys.queues, "default"),
                        await raw(client, "HEXISTS", client.keys.cron_entries, "yearly"),
                    )

                with anyio.fail_after(30):
                    while await registered() != (1, 1):  # noqa: ASYNC110
                        await anyio.sleep(0.05)
            lost_before = [i for i in before if i not in execs.runs]
            counts = await queue_counts(client)
            await assert_invariants(client, drained=True)
    resume = min(execs.first[i] for i in after) - up_at
    noticed = [r for r in caplog.records if "dataset was" in r.getMessage()]
    detected = min(r.created for r in noticed) - up_wall if noticed else float("nan")
    report(
        record_property,
        anyio_backend,
        "T5b restart with an empty dataset",
        jobs_before=len(before),
        never_ran_before_reset=len(lost_before),
        resume_s=round(resume, 3),
        duplicate_executions=execs.duplicates,
        reset_detected_s=round(detected, 3),
    )
    assert len(noticed) == 1, "the dataset reset is logged once"
    assert lost_before == before, "the paused jobs went with the data; none ran"
    assert producer.reply_errors == []
    assert counts["ready"] == counts["leases"] == counts["scheduled"] == 0
    assert counts["completed"] >= len(after)


# -- T7: script cache flushed -----------------------------------------------------------


async def test_t7_script_flush_every_500ms_and_restart(
    anyio_backend: str, record_property: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """T7: ``SCRIPT FLUSH`` every 500 ms during a run, plus a Redis restart in the
    middle (graceful, AOF on: the data survives, the script cache does not). No script
    error reaches the client or the server's logs (NOSCRIPT is healed by re-sending the
    script), and no job is lost or stuck."""
    caplog.set_level(logging.WARNING)
    n = 2000 if STRESS else 400
    with RedisProcess("--appendonly", "yes", "--appendfsync", "everysec") as redis:
        prefix = f"t7{uuid.uuid4().hex[:6]}"
        server, execs = restart_server(redis.url, prefix)
        ids = job_ids(n)
        flushes = 0
        async with (
            gqm.Client(redis.url, prefix=prefix, socket_timeout=2) as client,
            gqm.Client(redis.url, prefix=prefix, socket_timeout=2) as admin,
        ):
            producer = Producer(client, pace=0.005)
            stop = anyio.Event()

            async def flusher() -> None:
                nonlocal flushes
                while not stop.is_set():
                    with anyio.move_on_after(0.5):
                        await stop.wait()
                    try:
                        await raw(admin, "SCRIPT", "FLUSH")
                        flushes += 1
                    except gqm.RedisConnectionError:
                        pass  # Redis is restarting

            async with serving(server), anyio.create_task_group() as tg:
                tg.start_soon(flusher)
                await producer.run(ids[: n // 2])
                redis.terminate()
                await anyio.to_thread.run_sync(redis.start)
                await producer.run(ids[n // 2 :])
                await execs.wait_for(ids, timeout=60)
                stop.set()
            counts = await queue_counts(client)
            await assert_invariants(client, drained=True)
    script_errors = [r.getMessage() for r in caplog.records if "NOSCRIPT" in r.getMessage().upper()]
    report(
        record_property,
        anyio_backend,
        "T7 SCRIPT FLUSH every 500 ms + restart",
        jobs=n,
        flushes=flushes,
        script_errors=len(script_errors) + len(producer.reply_errors),
        duplicate_executions=execs.duplicates,
        enqueue_connection_errors=producer.connection_errors,
    )
    assert producer.reply_errors == []
    assert script_errors == []
    assert flushes >= 2
    assert counts["ready"] == counts["leases"] == counts["scheduled"] == 0
    assert counts["completed"] == n


# -- CLIENT PAUSE -----------------------------------------------------------------------


async def test_client_pause_mid_run(
    anyio_backend: str, redis_url: str, prefix: str, record_property: Any
) -> None:
    """Redis pauses every client (``CLIENT PAUSE <ms> ALL``) in the middle of a run:
    calls stall and then complete (the pause is shorter than the socket timeout);
    nothing is lost, nothing is stuck, work resumes. The stall is reported."""
    n = 2000 if STRESS else 300
    pause_ms = 10_000 if STRESS else 2_000
    server = gqm.Server(
        redis_url,
        prefix=prefix,
        handle_signals=False,
        grace_period=2,
        concurrency=20,
        socket_timeout=max(10.0, pause_ms / 1000 * 2),
    )
    execs = Executions()
    server.handle(JOB, execs.handler)
    ids = job_ids(n)
    async with (
        gqm.Client(redis_url, prefix=prefix, socket_timeout=max(10.0, pause_ms / 500)) as client,
        gqm.Client(redis_url, prefix=prefix) as admin,
    ):
        producer = Producer(client, pace=0.002)
        async with serving(server):
            await producer.run(ids[: n // 2])
            paused_at = anyio.current_time()
            await raw(admin, "CLIENT", "PAUSE", pause_ms, "ALL")
            await producer.run(ids[n // 2 :])
            await execs.wait_for(ids, timeout=60)
        counts = await queue_counts(client)
        await assert_invariants(client, drained=True)
    after = [execs.first[i] for i in ids[n // 2 :]]
    report(
        record_property,
        anyio_backend,
        "CLIENT PAUSE mid-run",
        jobs=n,
        pause_s=pause_ms / 1000,
        first_run_after_pause_s=round(min(after) - paused_at, 3),
        enqueue_connection_errors=producer.connection_errors,
        duplicate_executions=execs.duplicates,
    )
    assert producer.reply_errors == []
    assert counts["ready"] == counts["leases"] == counts["scheduled"] == 0
    assert counts["completed"] == n


# -- T9: memory full --------------------------------------------------------------------


async def test_t9_noeviction_oom_then_drain(
    anyio_backend: str, record_property: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """T9 (b): Redis with ``maxmemory 20mb`` and ``noeviction`` is filled with enqueues
    until it refuses them. The refusal is a typed gqm error (``RedisReplyError``, OOM);
    no partial job or orphan key is left (invariant checker: in particular every job
    can be looked up by id); a running server keeps completing jobs while Redis is full,
    and a server started while it is full starts and works too; once the queue is
    drained, enqueue works again."""
    caplog.set_level(logging.WARNING)
    with RedisProcess("--maxmemory", "20mb", "--maxmemory-policy", "noeviction") as redis:
        prefix = f"t9{uuid.uuid4().hex[:6]}"
        execs = Executions()

        def make_server(*, cron: bool = False) -> gqm.Server:
            # Completed records are deleted at once, so that draining frees the memory.
            server = gqm.Server(
                redis.url,
                prefix=prefix,
                handle_signals=False,
                grace_period=2,
                concurrency=10,
                completed_ttl=0,
                eviction_check="refuse",
            )
            server.handle(JOB, execs.handler)
            if cron:
                # Once a year: registering it needs writes, never a fire during the test.
                server.schedule(gqm.CronEntry(id="yearly", cron_expr="@yearly", job_type=JOB))
            return server

        async with gqm.Client(redis.url, prefix=prefix) as client, serving(make_server()):
            # Fill while the queue is paused, so that nothing drains meanwhile.
            await client.pause("default")
            payload = "x" * 8192
            enqueued: list[str] = []
            refused: BaseException | None = None
            with anyio.fail_after(120):
                while refused is None:
                    batch = [gqm.BatchItem(JOB, payload) for _ in range(50)]
                    try:
                        enqueued += [j.id for j in await client.enqueue_batch(batch)]
                    except gqm.GqmError as err:
                        refused = err
            # Single enqueues too are refused (one may still slip under the limit: Redis
            # checks used memory before each script, and a refused call freed a little).
            single: BaseException | None = None
            with anyio.fail_after(30):
                while single is None:
                    try:
                        enqueued.append((await client.enqueue(JOB, payload)).id)
                    except gqm.GqmError as err:
                        single = err
            index = await raw(client, "HLEN", client.keys.ids)
            used = await raw(client, "INFO", "memory")
            stored = await raw(client, "HLEN", client.keys.queue("default").jobs)
            await assert_invariants(client)
            # A second server, started while Redis is full, must come up too, although
            # its cron entry cannot be written yet: its heartbeat writes it later.
            assert await client.cron_entries() == []
            async with serving(make_server(cron=True)):
                await client.resume("default")
                await execs.wait_for(enqueued, timeout=120)
                with anyio.fail_after(60):
                    while (await queue_counts(client))["ready"]:  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                after = await client.enqueue(JOB, payload)
                await execs.wait_for([after.id], timeout=30)
                with anyio.fail_after(30):  # a heartbeat (5 s) after the memory is free
                    while not await client.cron_entries():  # noqa: ASYNC110
                        await anyio.sleep(0.1)
                assert [e.id for e in await client.cron_entries()] == ["yearly"]
            await assert_invariants(client, drained=True)
            left = await raw(client, "HLEN", client.keys.queue("default").jobs)
    peak = next(
        line.split(b":")[1].decode()
        for line in used.splitlines()
        if line.startswith(b"used_memory_human:")
    )
    report(
        record_property,
        anyio_backend,
        "T9 noeviction 20mb",
        enqueued_before_oom=len(enqueued),
        error=f"{type(refused).__name__}: {str(refused)[:40]}",
        used_memory_at_oom=peak,
        # The id index is written just before the enqueue script, in the same round
        # trip: an enqueue refused after it leaves its entries (harmless: DESIGN §4).
        id_index_entries_without_job=index - stored,
    )
    # The same typed error, with Redis's own message, whatever the driver.
    assert isinstance(refused, gqm.RedisReplyError), repr(refused)
    assert refused.is_oom, str(refused)
    assert str(refused).startswith("OOM command not allowed")
    assert isinstance(single, gqm.RedisReplyError), repr(single)
    assert single.is_oom, str(single)
    # Every acknowledged job is stored, and no refused one left a record behind.
    assert stored == len(enqueued)
    assert set(enqueued) <= execs.runs.keys()
    assert left == 0
