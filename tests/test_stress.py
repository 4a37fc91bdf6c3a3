"""Stress scenarios ported from the Go original's ``stress_test.go`` (issue #7).

Each test runs a ``gqm.Server`` in the test's task group against the session's
redis-server, on both backends, and asserts the correctness properties (nothing lost,
nothing run twice, the right final state, no task left behind). Speed is never
asserted: latencies, rates, depths and memory deltas are printed as figures (see them
with ``pytest tests/test_stress.py -s -rA``).

Fast mode (the default suite) uses reduced sizes; ``GQM_STRESS=1`` runs the original's
full sizes.
"""

from __future__ import annotations

import gc
import hashlib
import os
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import sniffio

import gqm

from ._chaos import assert_queues_drained
from .helpers import raw, serving
from .invariants import assert_invariants

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

pytestmark = pytest.mark.anyio

#: Deep mode: the original's full sizes and durations.
STRESS = os.environ.get("GQM_STRESS") == "1"


def size(fast: int, deep: int) -> int:
    """The size of a scenario in the current mode."""
    return deep if STRESS else fast


# -- measuring helpers ------------------------------------------------------------------


def task_count() -> int:
    """The number of tasks alive on the running event loop (asyncio or trio)."""
    if sniffio.current_async_library() == "asyncio":
        import asyncio

        return len(asyncio.all_tasks())
    import trio

    count = 0
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


async def settled_task_count(baseline: int, timeout: float = 5.0) -> int:
    """The task count once it has come back down to ``baseline`` (or after ``timeout``
    seconds): connections closed by a shutdown may end their tasks a moment later."""
    with anyio.move_on_after(timeout):
        # Polling: no event tells when another library's task has ended.
        while task_count() > baseline:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    return task_count()


def rss_kib() -> int:
    """This process's resident set size in KiB (Linux), 0 where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def heap_blocks() -> int:
    """Memory blocks the Python allocator holds, after a full collection: unlike RSS, it
    goes back down when objects are freed, so a leak shows as a lasting delta."""
    gc.collect()
    return sys.getallocatedblocks()


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered)) - 1))
    return ordered[rank]


def report(scenario: str, **figures: Any) -> None:
    """Print one scenario's figures on a single line (visible with ``-s`` or ``-rA``)."""
    backend = sniffio.current_async_library()
    parts = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
    )
    print(
        f"\n[stress {scenario} {backend} {'deep' if STRESS else 'fast'}] {parts}", file=sys.stdout
    )


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll Redis through ``check`` until it holds (there is no event to wait on for
    state written by the server's finisher), failing after ``timeout`` seconds."""
    try:
        with anyio.fail_after(timeout):
            while not await check():  # noqa: ASYNC110 - polling Redis, no event exists
                await anyio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}") from None


class Counted:
    """Counts handler runs per job id and signals when ``expected`` distinct jobs ran."""

    def __init__(self, expected: int = sys.maxsize) -> None:
        self.expected = expected
        self.runs: Counter[str] = Counter()
        self.done = anyio.Event()

    def note(self, job_id: str) -> None:
        self.runs[job_id] += 1
        if len(self.runs) >= self.expected:
            self.done.set()

    def expect(self, expected: int) -> None:
        """Set the number of jobs to wait for, once it is known."""
        self.expected = expected
        if len(self.runs) >= expected:
            self.done.set()

    def assert_exactly_once(self, ids: Sequence[str]) -> None:
        assert len(ids) == len(set(ids)), "enqueue returned a duplicate id"
        assert set(self.runs) == set(ids), (
            f"lost: {len(set(ids) - set(self.runs))}, unknown: {len(set(self.runs) - set(ids))}"
        )
        twice = [i for i, n in self.runs.items() if n > 1]
        assert not twice, f"{len(twice)} jobs ran more than once"


# -- the scenarios ----------------------------------------------------------------------


async def test_data_integrity_10_producers(
    client: gqm.Client, make_server: Callable[..., gqm.Server], redis_url: str, prefix: str
) -> None:
    """DataIntegrity: 10 producers (each its own client) enqueue concurrently while 20
    workers run: every job runs exactly once, none is lost, counters agree."""
    producers, per_producer = 10, size(200, 1000)
    n = producers * per_producer
    server = make_server(concurrency=20)
    counted = Counted(n)

    async def count(job: gqm.Job[Any]) -> None:
        counted.note(job.id)

    server.handle("count", count)
    ids: list[str] = []

    async def produce(p: int) -> None:
        async with gqm.Client(redis_url, prefix=prefix) as own:
            for i in range(per_producer):
                ids.append((await own.enqueue("count", {"p": p, "i": i})).id)

    async with serving(server):
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for p in range(producers):
                tg.start_soon(produce, p)
        enqueued = anyio.current_time() - start
        with anyio.fail_after(size(60, 180)):
            await counted.done.wait()
        elapsed = anyio.current_time() - start
    counted.assert_exactly_once(ids)
    q = client.keys.queue("default")
    assert await raw(client, "ZCARD", q.completed) == n
    assert await raw(client, "HGET", q.meta, "processed") == str(n).encode()
    await assert_queues_drained(client, ["default"])
    await assert_invariants(client, drained=True)
    report(
        "DataIntegrity",
        jobs=n,
        enqueue_s=enqueued,
        total_s=elapsed,
        jobs_per_s=n / elapsed,
    )


async def test_sustained_load(
    client: gqm.Client, make_server: Callable[..., gqm.Server], redis_url: str, prefix: str
) -> None:
    """SustainedLoad: 5 producers enqueue at a steady pace for a while, 20 workers keep
    up. Every job runs exactly once; pickup latency percentiles and the drain time after
    the producers stop are reported."""
    producers, duration = 5, size(3, 30)
    rate = 200  # jobs/s per producer, 1000 jobs/s in all: load, not a flood
    server = make_server(concurrency=20)
    counted = Counted()
    latency: list[float] = []

    async def work(job: gqm.Job[Any]) -> None:
        # The payload carries the enqueue instant on this process's monotonic clock.
        latency.append(anyio.current_time() - job.payload["t"])
        counted.note(job.id)

    server.handle("work", work)
    ids: list[str] = []

    async def produce(p: int, deadline: float) -> None:
        async with gqm.Client(redis_url, prefix=prefix) as own:
            k = 0
            while (now := anyio.current_time()) < deadline:
                # Pacing, not synchronisation: hold each producer to `rate` jobs/s.
                due = deadline - duration + k / rate
                if due > now:
                    await anyio.sleep(due - now)
                ids.append((await own.enqueue("work", {"t": anyio.current_time(), "p": p})).id)
                k += 1

    async with serving(server):
        deadline = anyio.current_time() + duration
        async with anyio.create_task_group() as tg:
            for p in range(producers):
                tg.start_soon(produce, p, deadline)
        stopped = anyio.current_time()
        counted.expect(len(ids))
        with anyio.fail_after(60):
            await counted.done.wait()
        drain = anyio.current_time() - stopped
    counted.assert_exactly_once(ids)
    await assert_queues_drained(client, ["default"])
    await assert_invariants(client, drained=True)
    report(
        "SustainedLoad",
        jobs=len(ids),
        seconds=duration,
        p50_ms=percentile(latency, 50) * 1000,
        p95_ms=percentile(latency, 95) * 1000,
        p99_ms=percentile(latency, 99) * 1000,
        max_ms=max(latency) * 1000,
        drain_ms=drain * 1000,
    )


async def test_burst_drain(client: gqm.Client, make_server: Callable[..., gqm.Server]) -> None:
    """BurstDrain: jobs enqueued with enqueue_batch (1000 per call) before any worker
    runs are all drained by 30 workers, each exactly once; the drain rate is reported."""
    n = size(5000, 10_000)
    server = make_server(concurrency=30)
    counted = Counted(n)

    async def noop(job: gqm.Job[Any]) -> None:
        counted.note(job.id)

    server.handle("noop", noop)
    start = anyio.current_time()
    ids: list[str] = []
    for first in range(0, n, 1000):
        batch = await client.enqueue_batch(
            [gqm.BatchItem("noop", i) for i in range(first, min(first + 1000, n))]
        )
        ids += [j.id for j in batch]
    enqueue_s = anyio.current_time() - start
    assert await raw(client, "LLEN", client.keys.queue("default").ready) == n
    async with serving(server):
        start = anyio.current_time()
        with anyio.fail_after(size(60, 180)):
            await counted.done.wait()
        drain_s = anyio.current_time() - start
    counted.assert_exactly_once(ids)
    assert await raw(client, "ZCARD", client.keys.queue("default").completed) == n
    await assert_queues_drained(client, ["default"])
    await assert_invariants(client, drained=True)
    report(
        "BurstDrain",
        jobs=n,
        enqueue_jobs_per_s=n / enqueue_s,
        drain_s=drain_s,
        drain_jobs_per_s=n / drain_s,
    )


async def test_high_concurrency(client: gqm.Client, make_server: Callable[..., gqm.Server]) -> None:
    """HighConcurrency: three job types with dedicated pools of 25, 20 and 15 workers
    (60 in all) on their own queues. Every job runs once, and once the server has stopped
    the event loop's task count is back at its baseline; the peak task count and the
    memory delta are reported."""
    n = size(3000, 10_000)
    pools = {"alpha": 25, "beta": 20, "gamma": 15}
    server = make_server()
    counted = Counted(n)
    peak_tasks = 0

    async def work(job: gqm.Job[Any]) -> None:
        nonlocal peak_tasks
        if len(counted.runs) % 100 == 0:
            peak_tasks = max(peak_tasks, task_count())
        counted.note(job.id)

    for name, workers in pools.items():
        server.handle(name, work, workers=workers, queue=name)
    ids: list[str] = []
    names = list(pools)
    for first in range(0, n, 1000):
        batch = await client.enqueue_batch(
            [
                gqm.BatchItem(names[i % 3], i, queue=names[i % 3])
                for i in range(first, min(first + 1000, n))
            ]
        )
        ids += [j.id for j in batch]
    baseline_tasks, baseline_rss, baseline_blocks = task_count(), rss_kib(), heap_blocks()
    async with serving(server):
        start = anyio.current_time()
        with anyio.fail_after(size(60, 180)):
            await counted.done.wait()
        elapsed = anyio.current_time() - start
        during_rss, during_blocks = rss_kib(), heap_blocks()
    counted.assert_exactly_once(ids)
    after_tasks = await settled_task_count(baseline_tasks)
    # The test's own run counter is not gqm's memory: drop it before measuring.
    counted.runs.clear()
    after_rss, after_blocks = rss_kib(), heap_blocks()
    assert after_tasks == baseline_tasks, f"tasks: {baseline_tasks} before, {after_tasks} after"
    assert server.inflight == 0
    for name in names:
        assert await raw(client, "ZCARD", client.keys.queue(name).completed) == len(
            [i for i in range(n) if names[i % 3] == name]
        )
        await assert_queues_drained(client, [name])
    await assert_invariants(client, drained=True)
    report(
        "HighConcurrency",
        jobs=n,
        workers=sum(pools.values()),
        jobs_per_s=n / elapsed,
        tasks_before=baseline_tasks,
        tasks_peak=peak_tasks,
        tasks_after=after_tasks,
        rss_kib=baseline_rss,
        rss_during_delta_kib=during_rss - baseline_rss,
        rss_after_delta_kib=after_rss - baseline_rss,
        heap_blocks=baseline_blocks,
        heap_during_delta_blocks=during_blocks - baseline_blocks,
        heap_after_delta_blocks=after_blocks - baseline_blocks,
    )


async def test_mixed_workload(client: gqm.Client, make_server: Callable[..., gqm.Server]) -> None:
    """MixedWorkload: fast, slow (50 ms), failing (max_retry 0) and raising (a handler
    bug, max_retry 0) jobs in one pool. Each ends in its expected state with the expected
    error, each ran once, and no task is left behind."""
    each = size(100, 500)
    server = make_server(concurrency=20)
    counted = Counted(4 * each)

    async def fast(job: gqm.Job[Any]) -> str:
        counted.note(job.id)
        return "fast"

    async def slow(job: gqm.Job[Any]) -> str:
        counted.note(job.id)
        await anyio.sleep(0.05)  # the job's work, not synchronisation
        return "slow"

    async def fail(job: gqm.Job[Any]) -> None:
        counted.note(job.id)
        raise RuntimeError("declared failure")

    async def buggy(job: gqm.Job[Any]) -> None:
        counted.note(job.id)
        job.payload["missing"]  # a KeyError: the Python counterpart of the Go panic

    for name, fn in (("fast", fast), ("slow", slow), ("fail", fail), ("raise", buggy)):
        server.handle(name, fn)
    items = []
    for i in range(each):
        items += [
            gqm.BatchItem("fast", {"i": i}),
            gqm.BatchItem("slow", {"i": i}),
            gqm.BatchItem("fail", {"i": i}, max_retry=0),
            gqm.BatchItem("raise", {"i": i}, max_retry=0),
        ]
    jobs = []
    for first in range(0, len(items), 1000):
        jobs += await client.enqueue_batch(items[first : first + 1000])
    baseline = task_count()
    async with serving(server):
        start = anyio.current_time()
        with anyio.fail_after(size(60, 180)):
            await counted.done.wait()
        elapsed = anyio.current_time() - start
    counted.assert_exactly_once([j.id for j in jobs])
    after = await settled_task_count(baseline)
    assert after == baseline, f"tasks: {baseline} before, {after} after"
    expected = {
        "fast": (gqm.JobStatus.COMPLETED, None),
        "slow": (gqm.JobStatus.COMPLETED, None),
        "fail": (gqm.JobStatus.DEAD_LETTER, "RuntimeError: declared failure"),
        "raise": (gqm.JobStatus.DEAD_LETTER, "KeyError: 'missing'"),
    }
    outcomes: Counter[tuple[str, str]] = Counter()
    for job in jobs:
        stored = await client.get_job(job.id)
        status, error = expected[job.type]
        assert stored.status is status, f"{job.type} job {job.id} ended {stored.status}"
        if error is None:
            assert stored.result == job.type
        else:
            assert stored.error == error
        assert stored.attempt == 1
        outcomes[(job.type, stored.status.value)] += 1
    q = client.keys.queue("default")
    assert await raw(client, "ZCARD", q.completed) == 2 * each
    assert await raw(client, "ZCARD", q.dead) == 2 * each
    await assert_queues_drained(client, ["default"])
    await assert_invariants(client, drained=True)
    report(
        "MixedWorkload",
        jobs=4 * each,
        seconds=elapsed,
        tasks_before=baseline,
        tasks_after=after,
        outcomes=dict(sorted(outcomes.items())),
    )


async def test_retry_storm(client: gqm.Client, make_server: Callable[..., gqm.Server]) -> None:
    """RetryStorm: jobs that always fail, max_retry 3 with fixed retry intervals, all end
    in the dead-letter queue after exactly 4 runs each, and the record counts them."""
    n, interval = size(400, 2000), (1.0 if STRESS else 0.1)
    server = make_server(concurrency=20)
    runs: Counter[str] = Counter()

    async def always_fail(job: gqm.Job[Any]) -> None:
        runs[job.id] += 1
        raise ValueError(f"attempt {job.attempt} fails")

    server.handle("storm", always_fail)
    jobs = []
    for first in range(0, n, 1000):
        jobs += await client.enqueue_batch(
            [
                gqm.BatchItem("storm", i, max_retry=3, retry_intervals=[interval] * 3)
                for i in range(first, min(first + 1000, n))
            ]
        )
    q = client.keys.queue("default")

    async def all_dead() -> bool:
        return int(await raw(client, "ZCARD", q.dead)) >= n

    async with serving(server):
        start = anyio.current_time()
        await eventually(all_dead, size(60, 180), f"{n} jobs in the DLQ")
        elapsed = anyio.current_time() - start
    assert await raw(client, "ZCARD", q.dead) == n
    assert set(runs) == {j.id for j in jobs}
    assert set(runs.values()) == {4}, f"runs per job: {Counter(runs.values())}"
    for job in jobs:
        stored = await client.get_job(job.id)
        assert stored.status is gqm.JobStatus.DEAD_LETTER
        assert (stored.attempt, stored.retry_count) == (4, 3)
        assert stored.error == "ValueError: attempt 4 fails"
    assert await raw(client, "HGET", q.meta, "failed") == str(4 * n).encode()
    await assert_queues_drained(client, ["default"])
    await assert_invariants(client, drained=True)
    report(
        "RetryStorm",
        jobs=n,
        interval_s=interval,
        executions=sum(runs.values()),
        seconds=elapsed,
    )


async def test_graceful_shutdown_under_load(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """GracefulShutdown: a server is stopped while 50 ms jobs are running. Afterwards
    processed + remaining = enqueued, nothing is leased or processing, the jobs that
    started all completed, and a second server finishes the rest with no job run twice."""
    n = size(300, 1000)
    counted = Counted(n)
    quarter = anyio.Event()

    async def slow(job: gqm.Job[Any]) -> None:
        counted.note(job.id)
        if len(counted.runs) >= n // 4:
            quarter.set()
        await anyio.sleep(0.05)  # the job's work

    jobs = []
    for first in range(0, n, 1000):
        jobs += await client.enqueue_batch(
            [gqm.BatchItem("slow", i) for i in range(first, min(first + 1000, n))]
        )
    q = client.keys.queue("default")
    first_server = make_server(concurrency=10, grace_period=10)
    first_server.handle("slow", slow)
    async with serving(first_server):
        with anyio.fail_after(60):
            await quarter.wait()
        start = anyio.current_time()
    stop_s = anyio.current_time() - start
    started_first = set(counted.runs)
    processed = int(await raw(client, "ZCARD", q.completed))
    remaining = int(await raw(client, "LLEN", q.ready))
    assert processed + remaining == n
    assert await raw(client, "ZCARD", q.leases) == 0
    # The grace period outlasts a 50 ms job: everything that started has finished.
    assert processed == len(started_first)
    assert 0 < remaining < n
    for job in jobs:
        status = (await client.get_job(job.id)).status
        expect = gqm.JobStatus.COMPLETED if job.id in started_first else gqm.JobStatus.READY
        assert status is expect
    second_server = make_server(concurrency=10)
    second_server.handle("slow", slow)
    async with serving(second_server):
        with anyio.fail_after(60):
            await counted.done.wait()
    counted.assert_exactly_once([j.id for j in jobs])
    assert await raw(client, "ZCARD", q.completed) == n
    await assert_queues_drained(client, ["default"])
    await assert_invariants(client, drained=True)
    report(
        "GracefulShutdown",
        jobs=n,
        processed_before_stop=processed,
        remaining=remaining,
        stop_ms=stop_s * 1000,
    )


async def test_backpressure(
    client: gqm.Client, make_server: Callable[..., gqm.Server], redis_url: str, prefix: str
) -> None:
    """Backpressure: 3 producers enqueue flat out against 5 workers that take 100 ms a
    job. Enqueueing keeps working (every call returns, pings keep answering) while the
    queue grows; once the producers stop, the backlog drains and every job ran once.
    The peak depth and enqueue/ping latencies are reported."""
    producers, duration = 3, size(2, 15)
    server = make_server(concurrency=5)
    counted = Counted()
    flooding = anyio.Event()  # set when the producers stop: the backlog then drains fast

    async def work(job: gqm.Job[Any]) -> None:
        counted.note(job.id)
        if not flooding.is_set():
            # 100 ms of work per job while the producers run.
            with anyio.move_on_after(0.1):
                await flooding.wait()

    server.handle("work", work)
    ids: list[str] = []
    enqueue_latency: list[float] = []
    ping_latency: list[float] = []
    depth_max = 0
    q = client.keys.queue("default")

    async def produce(deadline: float) -> None:
        async with gqm.Client(redis_url, prefix=prefix) as own:
            while anyio.current_time() < deadline:
                t0 = anyio.current_time()
                ids.append((await own.enqueue("work", None)).id)
                enqueue_latency.append(anyio.current_time() - t0)

    async def probe(deadline: float) -> None:
        nonlocal depth_max
        while anyio.current_time() < deadline:
            t0 = anyio.current_time()
            await client.ping()
            ping_latency.append(anyio.current_time() - t0)
            depth_max = max(depth_max, int(await raw(client, "LLEN", q.ready)))
            await anyio.sleep(0.05)  # the probe's sampling period

    async with serving(server):
        deadline = anyio.current_time() + duration
        async with anyio.create_task_group() as tg:
            for _ in range(producers):
                tg.start_soon(produce, deadline)
            tg.start_soon(probe, deadline)
        flooding.set()
        ran_under_load = len(counted.runs)
        counted.expect(len(ids))
        start = anyio.current_time()
        with anyio.fail_after(size(60, 300)):
            await counted.done.wait()
        drain_s = anyio.current_time() - start
    counted.assert_exactly_once(ids)
    assert ping_latency, "the probe never ran"
    assert depth_max > 0
    await assert_queues_drained(client, ["default"])
    await assert_invariants(client, drained=True)
    report(
        "Backpressure",
        seconds=duration,
        enqueued=len(ids),
        enqueue_per_s=len(ids) / duration,
        ran_under_load=ran_under_load,
        depth_max=depth_max,
        enqueue_p50_ms=percentile(enqueue_latency, 50) * 1000,
        enqueue_p99_ms=percentile(enqueue_latency, 99) * 1000,
        enqueue_max_ms=max(enqueue_latency) * 1000,
        ping_p99_ms=percentile(ping_latency, 99) * 1000,
        ping_max_ms=max(ping_latency) * 1000,
        drain_s=drain_s,
    )


async def test_large_payloads(client: gqm.Client, make_server: Callable[..., gqm.Server]) -> None:
    """LargePayload: 10 KB and 100 KB payloads arrive intact (the handler's hash of what
    it received equals the producer's hash) and none ends in the dead-letter queue."""
    per_size = size(50, 500)
    server = make_server(concurrency=10)
    counted = Counted(2 * per_size)
    received: dict[str, str] = {}

    async def digest(job: gqm.Job[Any]) -> str:
        received[job.id] = hashlib.sha256(job.payload["blob"].encode()).hexdigest()
        counted.note(job.id)
        return received[job.id]

    server.handle("blob", digest)
    sent: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for nbytes in (10 * 1024, 100 * 1024):
        for i in range(per_size):
            # Hex of random bytes: incompressible, and every character survives JSON.
            blob = os.urandom(nbytes // 2).hex()
            job = await client.enqueue("blob", {"blob": blob, "i": i})
            sent[job.id] = hashlib.sha256(blob.encode()).hexdigest()
            sizes[job.id] = nbytes
    async with serving(server):
        start = anyio.current_time()
        with anyio.fail_after(size(60, 180)):
            await counted.done.wait()
        elapsed = anyio.current_time() - start
    counted.assert_exactly_once(list(sent))
    assert received == sent
    q = client.keys.queue("default")
    assert await raw(client, "ZCARD", q.dead) == 0
    assert await raw(client, "ZCARD", q.completed) == 2 * per_size
    for job_id in list(sent)[:: max(1, per_size // 10)]:
        stored = await client.get_job(job_id)
        assert stored.status is gqm.JobStatus.COMPLETED
        assert stored.result == sent[job_id]
        assert len(stored.payload["blob"]) == sizes[job_id]
    await assert_invariants(client, drained=True)
    megabytes = sum(sizes.values()) / 1e6
    report("LargePayload", jobs=2 * per_size, megabytes=megabytes, mb_per_s=megabytes / elapsed)
