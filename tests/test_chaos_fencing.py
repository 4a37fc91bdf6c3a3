"""Zombie fencing (RELIABILITY T3): a worker that wakes after its lease was reclaimed
cannot finish, fail, retry, hand back or renew the job.

Two halves: real processes (worker A is frozen with SIGSTOP past its lease, worker B
recovers and completes the job, then A is thawed with SIGCONT), and many randomized
in-process runs that drive the scripts directly with the stale token interleaved at
random points of B's claim and completion. Both check that the result is B's and that
the counters and the DAG resolution are applied once.
"""

from __future__ import annotations

import random
import signal
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import gqm
from gqm import _dag
from gqm import _scripts as scripts

from ._chaos import (
    LEASE_TTL,
    REAP_INTERVAL,
    START_TIMEOUT,
    STRESS,
    TIME_LIMIT,
    executions,
    worker_args,
)
from ._chaos_worker import JOB_TYPE, SCRIPT
from ._worker_proc import WorkerProcess, worker_process
from .helpers import raw, record, run_script
from .invariants import assert_invariants

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [
    pytest.mark.anyio,
    TIME_LIMIT,
    pytest.mark.filterwarnings("ignore:record_property is incompatible:pytest.PytestWarning"),
]

#: What A's handler tries once it wakes up (complete, fail with a retry, dead-letter).
ACTIONS = ["complete", "fail", "dead"]


async def _finish(
    client: gqm.Client, queue: str, job_id: str, token: str, outcome: str, data: bytes = b""
) -> int:
    q = client.keys.queue(queue)
    # completed_ttl -1 / dead_ttl -1: keep the records, so the checks below can read them.
    args = [-1, -1, client.keys.done_channel, q.wake, job_id, token, outcome, data, 1, 1]
    codes, _, _ = await run_script(client, "finish", scripts.finish_keys(q), args)
    return int(codes[0])


async def _renew_lost(client: gqm.Client, queue: str, job_id: str, token: str) -> bool:
    q = client.keys.queue(queue)
    lost, _aborted = await run_script(
        client, "renew", scripts.renew_keys(q), [30_000, job_id, token]
    )
    return job_id.encode() in lost


async def _claim(client: gqm.Client, queue: str, worker: str) -> dict[str, str]:
    q = client.keys.queue(queue)
    attempt = f"{worker}-{uuid.uuid4().hex[:8]}"
    reply = await run_script(
        client, "claim", scripts.claim_keys(q, attempt), [10, 30_000, worker, attempt]
    )
    return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 4)}


async def _reap_all(client: gqm.Client, queue: str) -> list[Any]:
    """Expire every lease of ``queue`` and run the reaper script once (the clock jump
    of a worker frozen for longer than its lease)."""
    q = client.keys.queue(queue)
    for job_id in await raw(client, "ZRANGE", q.leases, 0, -1):
        await raw(client, "ZADD", q.leases, 0, job_id)
    args = [1000, 3, -1, q.wake, client.keys.done_channel, -1]
    return list(await run_script(client, "reap", scripts.reap_keys(q), args))


async def _wait_any_line(w: WorkerProcess, needles: tuple[str, ...], *, timeout: float) -> str:
    """The first stdout line of ``w`` containing one of ``needles`` (waits for it)."""
    found: list[str] = []

    def seen() -> bool:
        found[:] = [line for line in w.lines if any(n in line for n in needles)][:1]
        return bool(found)

    await w.wait_until(seen, timeout=timeout, what=f"a line with one of {needles}")
    return found[0]


async def _counter(client: gqm.Client, queue: str, name: str) -> int:
    return int(await raw(client, "HGET", client.keys.queue(queue).meta, name) or 0)


async def test_zombie_fencing_processes(
    client: gqm.Client,
    redis_url: str,
    prefix: str,
    anyio_backend: str,
    tmp_path: Path,
    record_property: Any,
) -> None:
    """T3 with real processes: A claims the parent of a DAG edge and is SIGSTOPped for
    longer than its lease; B's reaper re-queues the job and B completes it (and then the
    child); A, thawed with SIGCONT, tries to complete / fail / dead-letter it and is
    refused (or finds its lease lost first). The result is B's, the job ran once in A
    and once in B, the child ran once, and processed/failed count each finish once."""
    runs = 10 if STRESS else len(ACTIONS)
    exec_log = tmp_path / "executions.log"
    settings = {"lease_ttl": LEASE_TTL, "reap_interval": REAP_INTERVAL, "concurrency": 2}
    args = worker_args(redis_url, prefix, anyio_backend, exec_log, **settings)
    rejections: list[str] = []
    gaps: list[float] = []
    for n in range(runs):
        action = ACTIONS[n % len(ACTIONS)]
        parent = await client.enqueue(JOB_TYPE, {"a1": action, "a1_sleep": 1.0})
        child = await client.enqueue(JOB_TYPE, {}, depends_on=[parent.id])
        tag_a, tag_b = f"A{n}", f"B{n}"
        async with worker_process(
            [*args, "--tag", tag_a], stderr_path=tmp_path / "A.stderr", name=tag_a, script=SCRIPT
        ) as a:
            await a.wait_started(1, timeout=START_TIMEOUT)
            a.send_signal(signal.SIGSTOP)
            frozen = await record(client, "default", parent.id)
            # A is frozen inside its handler's a1_sleep: the claim is still its own.
            assert (frozen.status, frozen.attempt) == ("processing", 1), frozen
            assert frozen.token is not None
            async with worker_process(
                [*args, "--tag", tag_b],
                stderr_path=tmp_path / "B.stderr",
                name=tag_b,
                script=SCRIPT,
            ) as b:
                with anyio.fail_after(LEASE_TTL + REAP_INTERVAL + START_TIMEOUT):
                    assert await client.result(parent.id) == tag_b
                    assert await client.result(child.id) == tag_b
                a.send_signal(signal.SIGCONT)
                thawed = anyio.current_time()
                # A's handler (its sleep is long over) and its lease renewer both wake
                # up now; whichever runs first, A must be turned away.
                needles = (f"job {parent.id}: outcome", f"lease of job {parent.id} lost")
                line = await _wait_any_line(a, needles, timeout=30)
                gaps.append(anyio.current_time() - thawed)
                rejections.append(line.split(" ", 3)[3])
                for w in (a, b):
                    w.send_signal(signal.SIGTERM)
                    assert await w.wait_exit(timeout=30) == 0, w.describe()
        # The stale claim can do nothing now either, whatever it tries.
        for outcome in ("c", "r", "d", "s", "h"):
            assert await _finish(client, "default", parent.id, frozen.token, outcome) == 0
        assert await _renew_lost(client, "default", parent.id, frozen.token)
        done = await client.get_job(parent.id)
        assert (done.status, done.attempt, done.recoveries, done.retry_count, done.result) == (
            gqm.JobStatus.COMPLETED,
            2,
            1,
            0,
            tag_b,
        ), done
        kid = await client.get_job(child.id)
        assert (kid.status, kid.attempt, kid.result) == (gqm.JobStatus.COMPLETED, 1, tag_b)
        assert await _counter(client, "default", "processed") == 2 * (n + 1)
        assert await _counter(client, "default", "failed") == 0
        ran = [(e.tag, e.attempt) for e in executions(exec_log) if e.job_id == parent.id]
        assert sorted(ran) == [(tag_a, 1), (tag_b, 2)], ran
        assert [e.tag for e in executions(exec_log) if e.job_id == child.id] == [tag_b]
    q = client.keys.queue("default")
    assert await raw(client, "ZCARD", q.leases) == 0
    assert await raw(client, "LLEN", q.outbox) == 0
    await assert_invariants(client, drained=True)
    print(
        f"[{anyio_backend}] T3 zombie fencing, {runs} SIGSTOP/SIGCONT runs: 0 double "
        f"finalizations; A turned away {max(gaps):.2f}s (max) after SIGCONT by: {rejections}"
    )
    record_property("process_runs", runs)


async def test_zombie_fencing_randomized(
    client: gqm.Client, anyio_backend: str, record_property: Any
) -> None:
    """T3 in-process, randomized: each run claims a parent as A, reaps it, claims it as
    B, and interleaves 1-4 stale operations of A (complete, retry, dead-letter, stop,
    hand back, renew) at random points before B's claim, between B's claim and its
    completion, and after it, plus a replay of B's completion. Every stale operation is
    refused, B's completion applies once (replays recognised), the parent counts once
    in ``processed`` and never in ``failed``, and the child is released exactly once."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    runs = 1000 if STRESS else 150
    stale_ops = ["c", "r", "d", "s", "h", "renew"]
    doubles = 0
    refused = 0
    for n in range(runs):
        queue = f"z{n}"
        parent = await client.enqueue("fence", None, queue=queue)
        child = await client.enqueue("fence", None, queue=queue, depends_on=[parent.id])
        (token_a,) = (await _claim(client, queue, "A")).values()
        reaped = await _reap_all(client, queue)
        assert reaped[:2] == [1, 0], reaped
        # Each stale operation lands before B's claim (0), before B's finish (1) or after it (2).
        planned: list[tuple[int, str]] = sorted(
            (rng.randrange(3), rng.choice(stale_ops)) for _ in range(rng.randint(1, 4))
        )
        token_b = ""
        for phase in range(3):
            if phase == 1:
                (token_b,) = (await _claim(client, queue, "B")).values()
                assert token_b != token_a
            if phase == 2:
                assert await _finish(client, queue, parent.id, token_b, "c", b'"B"') == 1
            for when, op in planned:
                if when != phase:
                    continue
                if op == "renew":
                    assert await _renew_lost(client, queue, parent.id, token_a)
                else:
                    assert await _finish(client, queue, parent.id, token_a, op) == 0, (seed, n, op)
                refused += 1
        # A lost reply makes B send its completion again: recognised, not applied twice.
        assert await _finish(client, queue, parent.id, token_b, "c", b'"B"') == 2
        q = client.keys.queue(queue)
        processed = await _counter(client, queue, "processed")
        failed = await _counter(client, queue, "failed")
        fanned = await raw(client, "LLEN", q.outbox)
        if (processed, failed, fanned) != (1, 0, 1):
            doubles += 1
        await _dag.drain_outboxes(
            await client._conn.get(), client.keys, [queue], canceled_ttl_ms=-1
        )
        got = await client.get_job(parent.id)
        assert (got.status, got.result, got.attempt, got.recoveries) == (
            gqm.JobStatus.COMPLETED,
            "B",
            2,
            1,
        ), (seed, n, got)
        assert await raw(client, "ZCARD", q.completed) == 1
        assert await raw(client, "ZCARD", q.scheduled) == 0
        assert await raw(client, "ZCARD", q.leases) == 0
        assert await raw(client, "LRANGE", q.ready, 0, -1) == [child.id.encode()]
        assert (await client.get_job(child.id)).status == gqm.JobStatus.READY
    assert doubles == 0, f"seed {seed}: {doubles} runs finalized the job more than once"
    await assert_invariants(client, drained=True)
    print(
        f"[{anyio_backend}] T3 randomized fencing (seed {seed}): {runs} runs, {refused} stale "
        f"operations refused, 0 double finalizations"
    )
    record_property("randomized_runs", runs)
    record_property("seed", seed)
