"""TestStress_EscalatingConservation, ported from the Go original's ``conservation_test.go``.

One mix of work, scaled by a factor: flat jobs, three-stage dependency chains across two
queues (some with a delayed head, some whose head fails so that the rest of the chain is
cancelled), delayed jobs and always-failing jobs with retries. Producers enqueue while a
server runs. Afterwards every job's final status, read through the client, is compared
with what it must be, job by job; every job ran exactly as many times as expected
(counted in the test process, and checked against the ``attempt`` in its Redis record);
no dependency, lease or queue entry is left behind; and the event loop's task count is
back at its baseline.

Fast mode runs factor 1 (400 jobs); ``GQM_STRESS=1`` escalates 1, 2, 4, ... 128
(51,200 jobs at the top level).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import gqm

from ._chaos import assert_queues_drained
from .helpers import raw, serving
from .invariants import assert_invariants
from .test_stress import (
    STRESS,
    heap_blocks,
    report,
    settled_task_count,
    task_count,
)

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio

FACTORS = (1, 2, 4, 8, 16, 32, 64, 128) if STRESS else (1,)
#: The base mix (times the factor).
FLAT, CHAINS, DELAYED, FAILING = 200, 40, 40, 40
#: Runs of an always-failing job: the first attempt and its retries.
FAIL_RETRIES = 2
QUEUES = ("flat", "dag", "dag2", "delayed", "failing")


@dataclass(slots=True)
class Expected:
    """What must become of one job."""

    kind: str
    queue: str
    status: gqm.JobStatus
    runs: int


class Ledger:
    """The test's side of the books: expectations, executions and ordering checks."""

    def __init__(self) -> None:
        self.expected: dict[str, Expected] = {}
        self.runs: Counter[str] = Counter()
        self.finished: set[str] = set()  # handlers that returned (chain stages)
        self.order_violations: list[str] = []

    def expect(self, job: gqm.Job[Any], kind: str, status: gqm.JobStatus, runs: int) -> None:
        assert job.id not in self.expected, f"id {job.id} handed out twice"
        self.expected[job.id] = Expected(kind, job.queue, status, runs)


async def _enqueue_mix(client: gqm.Client, factor: int, ledger: Ledger) -> None:
    """Enqueue the whole mix for ``factor``: batches for the independent jobs, and
    chains from several concurrent producers (a dependent enqueue takes round trips)."""
    done, dead, canceled = (
        gqm.JobStatus.COMPLETED,
        gqm.JobStatus.DEAD_LETTER,
        gqm.JobStatus.CANCELED,
    )

    async def batches(kind: str, items: list[gqm.BatchItem[Any]], status: Any, runs: int) -> None:
        for first in range(0, len(items), 1000):
            for job in await client.enqueue_batch(items[first : first + 1000]):
                ledger.expect(job, kind, status, runs)

    async def chains(indexes: range) -> None:
        for i in indexes:
            fails = i % 4 == 3
            head_options: dict[str, Any] = {"queue": "dag", "max_retry": 0}
            if i % 2 == 0:
                # A delayed head: its children are certainly still deferred when enqueued.
                head = await client.enqueue_in(
                    "stage", {"parent": None, "fail": False}, 0.2 + (i % 5) / 10, **head_options
                )
            else:
                head = await client.enqueue(
                    "stage", {"parent": None, "fail": fails}, **head_options
                )
            kind = "delayed_head" if i % 2 == 0 else "head"
            ledger.expect(head, kind, dead if fails else done, 1)
            parent = head
            for depth, queue in ((2, "dag2"), (3, "dag")):
                child = await client.enqueue(
                    "stage",
                    {"parent": parent.id, "fail": False},
                    queue=queue,
                    depends_on=[parent.id],
                )
                ledger.expect(
                    child, f"stage{depth}", canceled if fails else done, 0 if fails else 1
                )
                parent = child

    n_chains = CHAINS * factor
    producers = 8
    async with anyio.create_task_group() as tg:
        for p in range(producers):
            tg.start_soon(chains, range(p, n_chains, producers))
        tg.start_soon(
            batches,
            "flat",
            [gqm.BatchItem("flat", i, queue="flat") for i in range(FLAT * factor)],
            done,
            1,
        )
        tg.start_soon(
            batches,
            "delayed",
            [
                gqm.BatchItem("delayed", i, queue="delayed", delay=0.1 + (i % 10) / 10)
                for i in range(DELAYED * factor)
            ],
            done,
            1,
        )
        tg.start_soon(
            batches,
            "failing",
            [
                gqm.BatchItem(
                    "failing",
                    i,
                    queue="failing",
                    max_retry=FAIL_RETRIES,
                    retry_intervals=[0.05],
                )
                for i in range(FAILING * factor)
            ],
            dead,
            FAIL_RETRIES + 1,
        )


@pytest.mark.parametrize("factor", FACTORS)
async def test_escalating_conservation(
    client: gqm.Client,
    make_server: Callable[..., gqm.Server],
    redis_url: str,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
    factor: int,
) -> None:
    """Two servers work through the scaled mix while it is enqueued, one of them
    restarted gracefully on the way. Every job ends in exactly its expected state, ran
    exactly the expected number of times, respected its dependencies and due time;
    nothing is left in any queue index, no dependency bookkeeping is orphaned, and no
    task leaks."""
    ledger = Ledger()
    caplog.set_level(logging.INFO, logger="gqm.pool")

    async def flat(job: gqm.Job[Any]) -> int:
        ledger.runs[job.id] += 1
        return int(job.payload)

    async def stage(job: gqm.Job[Any]) -> None:
        ledger.runs[job.id] += 1
        parent = job.payload["parent"]
        if parent is not None and parent not in ledger.finished:
            ledger.order_violations.append(f"{job.id} ran before its parent {parent} finished")
        if job.payload["fail"]:
            raise RuntimeError("chain head fails")
        ledger.finished.add(job.id)

    async def failing(job: gqm.Job[Any]) -> None:
        ledger.runs[job.id] += 1
        raise RuntimeError(f"attempt {job.attempt} fails")

    servers: list[gqm.Server] = []

    def new_server() -> gqm.Server:
        server = make_server()
        server.pool(gqm.PoolConfig(name="all", queues=QUEUES, concurrency=10))
        server.handle("flat", flat)
        server.handle("stage", stage)
        server.handle("delayed", flat)
        server.handle("failing", failing)
        servers.append(server)
        return server

    total = (FLAT + 3 * CHAINS + DELAYED + FAILING) * factor
    # The client's first connection (its driver's tasks) belongs to the baseline; the
    # producers use a client of their own, closed before the tasks are counted again.
    await client.ping()
    baseline_tasks, baseline_blocks = task_count(), heap_blocks()

    async def finished_count() -> int:
        infos = {i.name: i for i in await client.queues()}
        return sum(
            infos[q].completed + infos[q].dead_letter + infos[q].canceled
            for q in QUEUES
            if q in infos
        )

    async def until_finished(count: int, timeout: float) -> None:
        try:
            with anyio.fail_after(timeout):
                # Polling Redis: the finisher writes outcomes after the handlers return,
                # so no in-process event marks a job's terminal state.
                while await finished_count() < count:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(
                f"only {await finished_count()} of {count} jobs reached a terminal state"
            ) from None

    enqueue_s = 0.0

    async def produce() -> None:
        nonlocal enqueue_s
        async with gqm.Client(redis_url, prefix=prefix) as producer:
            await _enqueue_mix(producer, factor, ledger)
        enqueue_s = anyio.current_time() - start

    # Two servers share the work. One of them is restarted (graceful shutdown, then a
    # new server) a third of the way through, while producers may still be enqueueing:
    # its prefetched jobs are handed back and must run once elsewhere, not twice.
    async with serving(new_server()):
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            async with serving(new_server()):
                await until_finished(total // 3, 60 + factor)
            restarted_at = await finished_count()
            async with serving(new_server()):
                await until_finished(total, 60 + factor)
        assert len(ledger.expected) == total
        drain_s = anyio.current_time() - start
    after_tasks = await settled_task_count(baseline_tasks)

    # Job by job, through the client: status, executions, and the record's own count.
    wrong: list[str] = []
    premature: list[str] = []
    delayed_checked: list[str] = []
    ids = list(ledger.expected)

    async def check(chunk: list[str]) -> None:
        for job_id in chunk:
            want = ledger.expected[job_id]
            job = await client.get_job(job_id)
            runs = ledger.runs[job_id]
            if job.status is not want.status or runs != want.runs or job.attempt != runs:
                wrong.append(
                    f"{want.kind} {job_id}: {job.status.value} after {runs} run(s), "
                    f"attempt {job.attempt}; expected {want.status.value} after {want.runs}"
                )
            if want.kind in ("delayed", "delayed_head"):
                # Both times are on the Redis clock: due time, and start of the one run.
                if job.scheduled_at is None or job.started_at is None:
                    premature.append(f"{job_id} lacks its due or start time")
                elif job.started_at < job.scheduled_at:
                    premature.append(f"{job_id} started {job.started_at}, due {job.scheduled_at}")
                else:
                    delayed_checked.append(job_id)

    async with anyio.create_task_group() as tg:
        for p in range(8):
            tg.start_soon(check, ids[p::8])
    assert not wrong, f"{len(wrong)} job(s) in the wrong state, e.g. {wrong[:5]}"
    assert not premature, f"{len(premature)} delayed job(s) ran early, e.g. {premature[:5]}"
    assert len(delayed_checked) == (DELAYED + CHAINS // 2) * factor
    assert not ledger.order_violations, ledger.order_violations[:5]
    assert set(ledger.runs) <= set(ledger.expected), "a job ran that nobody enqueued"
    duplicates = sum(
        max(0, n - ledger.expected[i].runs) for i, n in ledger.runs.items() if i in ledger.expected
    )
    assert duplicates == 0

    # The queues' counters agree with the books: each completion and each failed run
    # counted once (a replayed or doubled finish would count twice).
    processed: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for want in ledger.expected.values():
        if want.status is gqm.JobStatus.COMPLETED:
            processed[want.queue] += 1
        elif want.status is gqm.JobStatus.DEAD_LETTER:
            failed[want.queue] += want.runs
    counters = {i.name: (i.processed_total, i.failed_total) for i in await client.queues()}
    assert {q: counters[q] for q in QUEUES} == {q: (processed[q], failed[q]) for q in QUEUES}

    # Nothing left behind in any queue: no waiting, leased or deferred entry, no
    # unapplied outbox entry; and (the invariant checker) no edge list orphaned by its
    # parent's record (edge lists are kept, for graph reads, as long as the parent's is).
    await assert_queues_drained(client, QUEUES)
    await assert_invariants(client, drained=True)
    assert after_tasks == baseline_tasks, f"tasks: {baseline_tasks} before, {after_tasks} after"
    assert [s.inflight for s in servers] == [0, 0, 0]
    handed_back = sum(
        int(m.group(1))
        for r in caplog.records
        if (m := re.match(r"pool \S+: handed back (\d+) unfinished jobs", r.getMessage()))
    )
    statuses = Counter(e.status.value for e in ledger.expected.values())
    executions = sum(ledger.runs.values())
    # The test's ledger is not gqm's memory: drop it before measuring the heap.
    for book in (ledger.expected, ledger.runs, ledger.finished, ids, delayed_checked):
        book.clear()
    heap_delta = heap_blocks() - baseline_blocks
    report(
        "EscalatingConservation",
        factor=factor,
        jobs=total,
        executions=executions,
        duplicates=duplicates,
        enqueue_s=enqueue_s,
        drain_s=drain_s,
        jobs_per_s=total / drain_s,
        restarted_at_finished=restarted_at,
        handed_back=handed_back,
        tasks_before=baseline_tasks,
        tasks_after=after_tasks,
        heap_delta_blocks=heap_delta,
        statuses=dict(sorted(statuses.items())),
        dead_total=await raw(client, "ZCARD", client.keys.queue("failing").dead),
    )
