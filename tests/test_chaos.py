"""Worker-process chaos (RELIABILITY T2 soak and T13 DAG under failure).

Real worker processes (``tests/_chaos_worker.py``) on the test's backend serve the
session's redis-server while a chaos monkey SIGKILLs a random one every ~2 s and a
supervisor restarts it. Executions are counted outside gqm's keys (an append-only file
written by the handlers), and every job is checked against its expected terminal state,
one by one. Fast mode is small; ``GQM_STRESS=1`` runs the scenarios' full sizes.
Figures are printed (``pytest -s -rA``) and recorded as junit properties.
"""

from __future__ import annotations

import random
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import gqm

from ._chaos import (
    LEASE_TTL,
    REAP_INTERVAL,
    STRESS,
    TIME_LIMIT,
    Expect,
    Fleet,
    assert_queues_drained,
    chaos_monkey,
    check_conservation,
    executions,
    live_lease_losses,
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
    # Figures go to junit as testcase properties, which pytest's default junit family
    # (xunit2) warns about; the suite turns warnings into errors.
    pytest.mark.filterwarnings("ignore:record_property is incompatible:pytest.PytestWarning"),
]

KILL_EVERY = 2.0


# -- T2: chaos soak ------------------------------------------------------------------------


class SoakPlan:
    """Enqueues waves of mixed jobs and remembers what each must end as."""

    def __init__(self, client: gqm.Client, rng: random.Random) -> None:
        self.client = client
        self.rng = rng
        self.expected: dict[str, Expect] = {}
        self.flat: set[str] = set()  # plain and unique jobs: their latency is reported
        self.unique: list[str] = []

    def _work(self, **extra: Any) -> dict[str, Any]:
        return {"sleep": round(self.rng.uniform(0.05, 0.4), 3), **extra}

    async def wave(self, size: int) -> None:
        """About ``size`` jobs: 50 % flat, 20 % DAG chains of 5, 10 % delayed, 10 %
        failing with retries (a fifth of them exhausting them), 10 % unique."""
        rng, c = self.rng, self.client
        items: list[gqm.BatchItem[Any]] = []
        wants: list[Expect] = []
        for _ in range(size // 2):
            items.append(gqm.BatchItem(JOB_TYPE, self._work()))
            wants.append(Expect("default", "completed"))
        delays: list[float] = []
        for _ in range(size // 10):
            delay = round(rng.uniform(0.5, 3.0), 3)
            delays.append(delay)
            items.append(gqm.BatchItem(JOB_TYPE, self._work(), delay=delay))
            wants.append(Expect("default", "completed", min_delay_ms=int(delay * 1000)))
        for i in range(size // 10):
            if i % 5 == 4:  # exhausts max_retry=1: dead letter after 2 runs
                items.append(
                    gqm.BatchItem(JOB_TYPE, self._work(fail=9), max_retry=1, retry_intervals=[0.2])
                )
                wants.append(
                    Expect("default", "dead_letter", retry_count=1, error="planned failure")
                )
            else:  # two failures, then success
                items.append(
                    gqm.BatchItem(JOB_TYPE, self._work(fail=2), max_retry=3, retry_intervals=[0.2])
                )
                wants.append(Expect("default", "completed", retry_count=2))
        unique_at = len(items)
        for _ in range(size // 10):
            items.append(
                gqm.BatchItem(JOB_TYPE, self._work(), job_id=f"u-{uuid.uuid4().hex}", unique=True)
            )
            wants.append(Expect("default", "completed"))
        jobs = await c.enqueue_batch(items)
        for i, (job, want) in enumerate(zip(jobs, wants, strict=True)):
            self.expected[job.id] = want
            if i < size // 2 or i >= unique_at:
                self.flat.add(job.id)
            if i >= unique_at:
                self.unique.append(job.id)
        for _ in range(max(1, size // 25)):  # chains of 5: 20 % of the wave
            parent: str | None = None
            for _depth in range(5):
                job = await c.enqueue(
                    JOB_TYPE, self._work(), depends_on=[parent] if parent else None
                )
                self.expected[job.id] = Expect(
                    "default", "completed", parents=[parent] if parent else []
                )
                parent = job.id


async def test_chaos_soak(
    client: gqm.Client,
    redis_url: str,
    prefix: str,
    anyio_backend: str,
    tmp_path: Path,
    record_property: Any,
) -> None:
    """T2: mixed jobs (flat, DAG chains, delayed, failing with retries, unique) run on
    several worker processes while a random one is SIGKILLed every ~2 s and restarted.
    Every job ends in exactly its expected state (checked job by job), no lease or
    processing job is left one lease after the drain, canceled/deferred/ready queues are
    empty, duplicates come only from recoveries and are at most kills x concurrency, a
    unique id stays taken, and no worker process dies of anything but our SIGKILLs."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    workers, concurrency = (10, 20) if STRESS else (4, 10)
    waves, wave_size = (200, 50) if STRESS else (22, 25)
    exec_log = tmp_path / "executions.log"
    settings = {
        "concurrency": concurrency,
        "lease_ttl": LEASE_TTL,
        "reap_interval": REAP_INTERVAL,
        "poll_interval": 1.0,
        # Every job here is innocent: lease expiries (kills, and stalls of an overloaded
        # machine) must not turn one into a poison pill. T13 tests that heuristic.
        "max_recoveries": 100,
        "grace_period": 5.0,
    }
    base = worker_args(redis_url, prefix, anyio_backend, exec_log, **settings)
    fleet = Fleet("w", workers, lambda tag: [*base, "--tag", tag], tmp_path)
    plan = SoakPlan(client, rng)
    stop_chaos = anyio.Event()
    started = anyio.current_time()
    async with anyio.create_task_group() as tg:
        await fleet.start(tg)
        tg.start_soon(lambda: chaos_monkey(fleet, rng, every=KILL_EVERY, until=stop_chaos))
        for _ in range(waves):
            await plan.wave(wave_size)
            await anyio.sleep(0.4)  # the arrival rate of the soak, not a synchronization
        stop_chaos.set()
        got = await wait_terminal(
            client,
            {i: e.queue for i, e in plan.expected.items()},
            timeout=300 if STRESS else 90,
            describe=fleet.describe,
        )
        drained = anyio.current_time() - started
        # One lease later nothing may still be (or again be) in processing.
        await anyio.sleep(LEASE_TTL)
        got = await records(client, ((i, e.queue) for i, e in plan.expected.items()))
        await assert_queues_drained(client, ["default"])
        for job_id in plan.unique[:5]:
            with pytest.raises(gqm.DuplicateJobError):
                await client.enqueue(JOB_TYPE, {}, job_id=job_id, unique=True)
        await fleet.stop(timeout=60)
    # The keyspace checker, once every process is gone (it wants a quiet keyspace).
    await assert_invariants(client, drained=True)

    runs = executions(exec_log)
    problems, duplicates = check_conservation(plan.expected, got, runs)
    assert not problems, f"seed {seed}: {len(problems)} problems: {problems[:20]}"
    assert not fleet.unexpected_exits(), fleet.unexpected_exits()
    kills = len(fleet.killed)
    dup_total = sum(duplicates.values())
    assert dup_total <= kills * concurrency
    assert kills >= 1, "the chaos monkey never killed anything: the soak proved nothing"
    latency = [
        (got[i].completed_at - got[i].created_at) / 1000
        for i in plan.flat
        if got[i].completed_at is not None and got[i].created_at is not None
    ]
    print(
        f"[{anyio_backend}] T2 soak (seed {seed}): {len(plan.expected)} jobs, {workers} worker "
        f"processes x {concurrency}, {kills} SIGKILLs, {fleet.starts} process starts; drained "
        f"{drained:.1f}s after the start; 0 lost, 0 stuck; duplicates {dup_total} "
        f"(bound kills x concurrency = {kills * concurrency}) over {len(duplicates)} jobs; "
        f"executions {len(runs)}; leases lost by live (stalled) workers "
        f"{live_lease_losses(tmp_path)}; end-to-end latency of flat jobs {percentiles(latency)}"
    )
    record_property("jobs", len(plan.expected))
    record_property("kills", kills)
    record_property("duplicates", dup_total)
    record_property("latency_p99_s", round(sorted(latency)[int(len(latency) * 0.99)], 3))


# -- T13: DAG under failure ----------------------------------------------------------------


async def _chain(
    client: gqm.Client, kind: str, rng: random.Random, expected: dict[str, Expect]
) -> None:
    """One chain of depth 5. ``kind``: ``ok`` (all complete); ``fail`` (a middle node
    exhausts its retries: dead letter, its descendants canceled); ``poison`` (the root
    kills its worker on every run: dead-lettered by the reaper, descendants canceled);
    ``fail+allow`` / ``poison+allow`` (as before, but the next node has
    ``allow_failure``: it and the rest of the chain complete)."""
    base_kind, _, allow = kind.partition("+")
    bad = 0 if base_kind == "poison" else rng.randint(1, 3)
    parent: str | None = None
    broken: str | None = None  # the status cascading down the chain, if any
    for depth in range(5):
        work: dict[str, Any] = {"sleep": round(rng.uniform(0.05, 0.3), 3)}
        options: dict[str, Any] = {"depends_on": [parent] if parent else None}
        queue = "default"
        if depth == bad and base_kind == "fail":
            work["fail"] = 9
            options |= {"max_retry": 1, "retry_intervals": [0.1]}
            want = Expect(queue, "dead_letter", retry_count=1, error="planned failure")
        elif depth == bad and base_kind == "poison":
            work["kill"] = 99
            queue = "poison"
            want = Expect(queue, "dead_letter", error="lease expired")
        elif broken is not None and allow and depth == bad + 1:
            options["allow_failure"] = True
            want = Expect(queue, "completed")
            broken = None
        elif broken is not None:
            want = Expect(queue, "canceled", never_runs=True, error=f"ended as {broken}")
        else:
            want = Expect(queue, "completed", parents=[parent] if parent else [])
        job = await client.enqueue(JOB_TYPE, work, queue=queue, **options)
        expected[job.id] = want
        if want.status == "dead_letter":
            broken = "dead_letter"
        elif want.status == "canceled":
            broken = "canceled"
        parent = job.id


async def test_dag_under_failure(
    client: gqm.Client,
    redis_url: str,
    prefix: str,
    anyio_backend: str,
    tmp_path: Path,
    record_property: Any,
) -> None:
    """T13: chains of depth 5 under worker SIGKILLs; some nodes exhaust their retries,
    some are poison pills that the reaper dead-letters (max_recoveries) on another
    queue. Dependents are released, canceled (never run) or run anyway
    (``allow_failure``) exactly per policy; nothing is left deferred; conservation holds
    job by job, and a child never starts before its parent completed."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    chains = 1000 if STRESS else 50
    exec_log = tmp_path / "executions.log"
    common = {"lease_ttl": LEASE_TTL, "reap_interval": REAP_INTERVAL, "poll_interval": 1.0}
    work_args = worker_args(
        redis_url,
        prefix,
        anyio_backend,
        exec_log,
        concurrency=10,
        max_recoveries=100,
        **common,
    )
    # Poison pills run on a queue of their own, served by a process nobody else's jobs
    # share: their self-kills must not add recoveries to innocent jobs.
    poison_args = worker_args(
        redis_url,
        prefix,
        anyio_backend,
        exec_log,
        queues="poison",
        concurrency=chains,
        max_recoveries=1,
        **common,
    )
    workers = Fleet("w", 4 if STRESS else 3, lambda tag: [*work_args, "--tag", tag], tmp_path)
    poison = Fleet("p", 1, lambda tag: [*poison_args, "--tag", tag], tmp_path)
    kinds = ["ok", "fail", "poison", "fail+allow", "poison+allow"]
    expected: dict[str, Expect] = {}
    stop_chaos = anyio.Event()
    async with anyio.create_task_group() as tg:
        await workers.start(tg)
        await poison.start(tg)
        tg.start_soon(lambda: chaos_monkey(workers, rng, every=KILL_EVERY, until=stop_chaos))
        started = anyio.current_time()
        for i in range(chains):
            await _chain(client, kinds[i % len(kinds)], rng, expected)
        got = await wait_terminal(
            client,
            {i: e.queue for i, e in expected.items()},
            timeout=600 if STRESS else 90,
            describe=lambda: workers.describe() + poison.describe(),
        )
        drained = anyio.current_time() - started
        stop_chaos.set()
        await assert_queues_drained(client, ["default", "poison"])
        assert await client.dag_deferred_count() == 0
        await workers.stop(timeout=60)
        await poison.stop(timeout=60)
    await assert_invariants(client, drained=True)

    runs = executions(exec_log)
    problems, duplicates = check_conservation(expected, got, runs)
    assert not problems, f"seed {seed}: {len(problems)} problems: {problems[:20]}"
    assert not workers.unexpected_exits(), workers.unexpected_exits()
    assert not poison.unexpected_exits(self_kills_allowed=True)
    statuses: dict[str, int] = {}
    for rec in got.values():
        statuses[rec.status] = statuses.get(rec.status, 0) + 1
    kills = len(workers.killed)
    dup_total = sum(duplicates.values())
    assert dup_total <= kills * 10
    print(
        f"[{anyio_backend}] T13 DAG under failure (seed {seed}): {chains} chains of 5 "
        f"({len(expected)} jobs) -> {statuses}; drained {drained:.1f}s after the first "
        f"enqueue; {kills} SIGKILLs, {poison.starts - 1} poison restarts; 0 stuck in "
        f"deferred; duplicates {dup_total}; leases lost by live (stalled) workers "
        f"{live_lease_losses(tmp_path)}"
    )
    record_property("jobs", len(expected))
    record_property("kills", kills)
    record_property("duplicates", dup_total)


# -- the server registry after kills -------------------------------------------------------


async def test_killed_server_leaves_the_registry(
    client: gqm.Client, redis_url: str, prefix: str, anyio_backend: str, tmp_path: Path
) -> None:
    """A SIGKILLed server cannot deregister; once its heartbeat has expired, listing
    the servers drops its id from the registry, so the registry does not grow by one
    id per crash (a chaos soak kills hundreds). The heartbeat's 15 s TTL is cut short
    by deleting the key, which is what its expiry does."""
    exec_log = tmp_path / "executions.log"
    args = worker_args(redis_url, prefix, anyio_backend, exec_log, concurrency=1)
    fleet = Fleet("w", 1, lambda tag: [*args, "--tag", tag], tmp_path, restart=False)
    async with anyio.create_task_group() as tg:
        await fleet.start(tg)
        with anyio.fail_after(30):
            while not (live := await client.servers()):  # noqa: ASYNC110 - no event for it
                await anyio.sleep(0.1)
        fleet.kill_random(random.Random(0))
        await fleet.stop(timeout=30)
    (server,) = live
    registry = client.keys.servers
    assert await raw(client, "ZRANGE", registry, 0, -1) == [server.id.encode()]
    await raw(client, "DEL", client.keys.server(server.id))
    assert await client.servers() == []
    assert await raw(client, "ZCARD", registry) == 0
