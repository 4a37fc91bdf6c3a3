"""SIGKILL recovery with default server settings (RELIABILITY T1): ``python bench/sigkill.py``.

Per backend: 100 jobs are enqueued; worker process A (concurrency 100, default lease
30 s and reap interval 10 s) starts them all (each would take 60 s); A is SIGKILLed;
worker process B (default settings) is started and recovers them once A's leases expire
(its handler completes at once). Prints the jobs lost, the executions per job (counted
by the handlers in a file, outside gqm's keys), and the recovery time (kill -> the job's
``completed_at``, on the Redis clock of this host) p50 / p95 / max.

The worker processes are ``tests/_worker_proc.py`` (shared with
``tests/test_process_faults.py``, the fast version of this scenario). A private
redis-server is started with :class:`gqm._embedded.EmbeddedRedis`. Takes about 45 s per
backend.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

import gqm
from gqm._embedded import EmbeddedRedis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests._worker_proc import JOB_TYPE, worker_process

LEASE_TTL = 30.0  # gqm.Server's default
REAP_INTERVAL = LEASE_TTL / 3  # the default: lease_ttl / 3
JOB_SECONDS = 60.0


def _percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


async def scenario(url: str, backend: str, n: int, workdir: Path) -> dict[str, Any]:
    prefix = f"sigkill-{backend}-{uuid.uuid4().hex[:6]}"
    exec_log = workdir / f"{prefix}.executions"
    common = ["--url", url, "--prefix", prefix, "--backend", backend, "--exec-log", str(exec_log)]
    async with gqm.Client(url, prefix=prefix) as client:
        jobs = await client.enqueue_batch([gqm.BatchItem(JOB_TYPE, i) for i in range(n)])
        a_args = [*common, "--tag", "A", "--mode", "sleep", "--sleep", str(JOB_SECONDS)]
        a_args += ["--concurrency", str(n)]
        async with worker_process(a_args, stderr_path=workdir / f"{prefix}.A.err", name="A") as a:
            await a.wait_started(n, timeout=60)
            a.kill()
            killed_at = time.time()
            await a.wait_exit(timeout=10)

        b_args = [*common, "--tag", "B", "--mode", "complete"]
        async with worker_process(b_args, stderr_path=workdir / f"{prefix}.B.err", name="B") as b:
            with anyio.move_on_after(LEASE_TTL + REAP_INTERVAL + 60):
                for job in jobs:
                    with contextlib.suppress(gqm.JobFailedError):
                        await client.result(job.id)
            b.send_signal(signal.SIGTERM)
            b_exit = await b.wait_exit(timeout=30)

        recovery: list[float] = []
        lost = 0
        wrong_counters = 0
        for job in jobs:
            got = await client.get_job(job.id)
            if got.status is not gqm.JobStatus.COMPLETED or got.completed_at is None:
                lost += 1
                continue
            if (got.attempt, got.recoveries) != (2, 1):
                wrong_counters += 1
            recovery.append(got.completed_at.timestamp() - killed_at)
        leases = await (await client._conn.get()).execute(
            "ZCARD", client.keys.queue("default").leases
        )

    per_job: Counter[str] = Counter()
    by_worker: Counter[str] = Counter()
    for line in exec_log.read_text().splitlines():
        tag, job_id, _attempt = line.split()
        per_job[job_id] += 1
        by_worker[tag] += 1
    return {
        "backend": backend,
        "jobs": n,
        "lost": lost,
        "executions_per_job": dict(sorted(Counter(per_job[j.id] for j in jobs).items())),
        "duplicates": sum(1 for j in jobs if per_job[j.id] > 2),
        "executions_by_worker": dict(sorted(by_worker.items())),
        "wrong_attempt_or_recoveries": wrong_counters,
        "leases_left": leases,
        "worker_b_exit": b_exit,
        "recovery_p50_s": statistics.median(recovery) if recovery else math.nan,
        "recovery_p95_s": _percentile(recovery, 95) if recovery else math.nan,
        "recovery_max_s": max(recovery) if recovery else math.nan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend", choices=["asyncio", "trio"], action="append", help="default: both"
    )
    parser.add_argument("--jobs", type=int, default=100)
    opts = parser.parse_args()
    backends = opts.backend or ["asyncio", "trio"]
    budget = LEASE_TTL + REAP_INTERVAL + 5
    print(
        f"SIGKILL recovery: {opts.jobs} in-flight {JOB_SECONDS:g}s jobs, lease {LEASE_TTL:g}s, "
        f"reap interval {REAP_INTERVAL:g}s (T1 budget: recovery <= {budget:g}s)"
    )
    with EmbeddedRedis() as url, tempfile.TemporaryDirectory(prefix="gqm-sigkill-") as tmp:
        for backend in backends:
            started = time.monotonic()
            r = anyio.run(scenario, url, backend, opts.jobs, Path(tmp), backend=backend)
            ok = (
                r["lost"] == 0
                and r["duplicates"] == 0
                and r["wrong_attempt_or_recoveries"] == 0
                and r["leases_left"] == 0
                and r["recovery_max_s"] <= budget
            )
            print(
                f"\n[{backend}] ({time.monotonic() - started:.0f}s) {'PASS' if ok else 'FAIL'}\n"
                f"  lost jobs:                 {r['lost']}/{r['jobs']}\n"
                f"  executions per job:        {r['executions_per_job']} "
                f"(by worker {r['executions_by_worker']})\n"
                f"  duplicates (> 2 runs):     {r['duplicates']}\n"
                f"  attempt != 2 or recoveries != 1: {r['wrong_attempt_or_recoveries']}\n"
                f"  leases left:               {r['leases_left']}\n"
                f"  worker B exit code:        {r['worker_b_exit']}\n"
                f"  recovery (kill -> done):   p50 {r['recovery_p50_s']:.2f}s  "
                f"p95 {r['recovery_p95_s']:.2f}s  max {r['recovery_max_s']:.2f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
