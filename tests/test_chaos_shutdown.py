"""Graceful shutdown of real worker processes (RELIABILITY T4), beyond
``tests/test_process_faults.py``: jobs handed back at the end of the grace period run
again on *another* running worker at once (not after a lease), and, in deep mode, the
scenario's size (50 60 s jobs handed back at a 10 s grace end). Case 1 (jobs that
finish within the grace) is ``test_process_faults.test_sigterm_drains_running_jobs``.

Workers are ``tests/_worker_proc.py`` processes; executions are counted in a file.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import gqm

from ._chaos import STRESS, TIME_LIMIT
from ._worker_proc import worker_process
from .helpers import raw
from .invariants import assert_invariants
from .test_process_faults import START_TIMEOUT, _args, _enqueue, _executions

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [
    pytest.mark.anyio,
    TIME_LIMIT,
    pytest.mark.filterwarnings("ignore:record_property is incompatible:pytest.PytestWarning"),
]


async def test_grace_end_hands_back_to_another_worker(
    client: gqm.Client,
    redis_url: str,
    prefix: str,
    anyio_backend: str,
    tmp_path: Path,
    record_property: Any,
) -> None:
    """T4 case 2: worker A runs jobs longer than the grace period when it gets SIGTERM;
    at the grace end it hands them back and exits 0, and worker B, already running,
    runs them at once: each job ran once on A and once on B, both as attempt 1 (the
    hand-back undoes the attempt) with no recovery (so it was not the reaper: the
    leases are 30 s long), and none is lost."""
    n, grace, job_s = (50, 10.0, 60.0) if STRESS else (10, 1.0, 60.0)
    jobs = await _enqueue(client, n)
    exec_log = tmp_path / "executions.log"
    a_args = _args(
        redis_url,
        prefix,
        anyio_backend,
        exec_log,
        "A",
        mode="sleep",
        sleep=job_s,
        concurrency=n,
        grace_period=grace,
    )
    b_args = _args(redis_url, prefix, anyio_backend, exec_log, "B", mode="complete")
    async with worker_process(a_args, stderr_path=tmp_path / "A.stderr", name="A") as a:
        await a.wait_started(n, timeout=START_TIMEOUT)
        # B starts once A holds every job, so that each job's first run is on A.
        async with worker_process(b_args, stderr_path=tmp_path / "B.stderr", name="B") as b:
            await b.wait_line("ready", timeout=START_TIMEOUT)
            sent = anyio.current_time()
            a.send_signal(signal.SIGTERM)
            assert await a.wait_exit(timeout=grace + 15) == 0, a.describe()
            exit_s = anyio.current_time() - sent
            # The lease (30 s) is far longer than this bound: only a hand-back fits.
            with anyio.fail_after(grace + 20):
                for job in jobs:
                    assert await client.result(job.id) == "B"
            rerun_s = anyio.current_time() - sent
            b.send_signal(signal.SIGTERM)
            assert await b.wait_exit(timeout=15) == 0, b.describe()
    for job in jobs:
        got = await client.get_job(job.id)
        assert (got.status, got.attempt, got.recoveries, got.retry_count) == (
            gqm.JobStatus.COMPLETED,
            1,
            0,
            0,
        ), got
    runs = _executions(exec_log)
    for job in jobs:
        assert runs["A", job.id, 1] == 1
        assert runs["B", job.id, 1] == 1
    assert sum(runs.values()) == 2 * n
    q = client.keys.queue("default")
    assert await raw(client, "ZCARD", q.leases) == 0
    await assert_invariants(client, drained=True)
    print(
        f"[{anyio_backend}] T4 hand-back: {n} jobs of {job_s:g}s, grace {grace:g}s: A exited "
        f"{exit_s:.2f}s after SIGTERM; all {n} re-run and completed on B {rerun_s:.2f}s after "
        f"it; 0 lost"
    )
    record_property("exit_s", round(exit_s, 3))
    record_property("rerun_s", round(rerun_s, 3))
