"""Parent-side helpers of the chaos tests: a fleet of worker processes that a killer
SIGKILLs and a supervisor restarts, the execution log, and job-by-job expectations.

The worker processes run ``tests/_chaos_worker.py`` (see its docstring for the payload
language and the execution log).
"""

from __future__ import annotations

import os
import signal
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import gqm
from gqm._job import JobRecord, record_decoder

from ._chaos_worker import SCRIPT
from ._worker_proc import WorkerProcess, worker_process

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from anyio.abc import TaskStatus

#: Deep mode (the scenarios' full sizes) runs with GQM_STRESS=1.
STRESS = os.environ.get("GQM_STRESS") == "1"
#: Per-test time limit (pytest-timeout): the suite's 120 s, or 30 min for deep sizes.
TIME_LIMIT = pytest.mark.timeout(1800 if STRESS else 120)
#: Bound on a worker process getting ready (interpreter start and imports, busy machine).
START_TIMEOUT = 60.0
#: Fast-mode lease settings: recovery after a kill within about lease + reap interval.
LEASE_TTL = 2.0
REAP_INTERVAL = 0.5


def worker_args(
    redis_url: str, prefix: str, backend: str, exec_log: Path, **settings: Any
) -> list[str]:
    """Command-line arguments of ``_chaos_worker.py`` (``tag`` comes per process)."""
    args = ["--url", redis_url, "--prefix", prefix, "--backend", backend]
    args += ["--exec-log", str(exec_log)]
    for name, value in settings.items():
        flag = f"--{name.replace('_', '-')}"
        if value is True:
            args.append(flag)
        elif value is not None and value is not False:
            args += [flag, str(value)]
    return args


@dataclass
class Execution:
    tag: str
    job_id: str
    attempt: int
    retry_count: int
    recoveries: int


def executions(exec_log: Path) -> list[Execution]:
    """Every handler execution, as the handlers logged them (outside gqm's keys)."""
    out: list[Execution] = []
    if exec_log.exists():
        for line in exec_log.read_text().splitlines():
            tag, job_id, attempt, retry_count, recoveries = line.split()
            out.append(Execution(tag, job_id, int(attempt), int(retry_count), int(recoveries)))
    return out


class Fleet:
    """``n`` worker process slots; a process that dies (killed, or a poison job killed
    it) is restarted at once until :meth:`stop`. Each process gets its own tag
    (``<name><slot>.<generation>``) so executions can be traced to it."""

    def __init__(
        self,
        name: str,
        n: int,
        args: Callable[[str], list[str]],
        tmp_path: Path,
        *,
        restart: bool = True,
    ) -> None:
        self.name = name
        self.n = n
        self._args = args
        self._tmp = tmp_path
        self._restart = restart
        self.current: list[WorkerProcess | None] = [None] * n
        self.stopping = False
        #: pids SIGKILLed by :meth:`kill_random`.
        self.killed: set[int] = set()
        #: (tag, pid, return code, was ready) of every process that exited.
        self.exits: list[tuple[str, int, int | None, bool]] = []
        self.starts = 0
        self._done = anyio.Event()
        self._running = 0

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Start every slot (in ``tg``); returns once each first process is ready."""
        self._running = self.n
        # The processes boot in parallel: starting them one by one would take seconds.
        async with anyio.create_task_group() as boot:
            for i in range(self.n):
                boot.start_soon(tg.start, self._slot, i)

    async def _slot(self, i: int, *, task_status: TaskStatus[None]) -> None:
        generation = 0
        first = True
        try:
            while not self.stopping:
                generation += 1
                tag = f"{self.name}{i}.{generation}"
                stderr = self._tmp / f"{self.name}{i}.stderr"
                async with worker_process(
                    self._args(tag), stderr_path=stderr, name=tag, script=SCRIPT
                ) as w:
                    self.current[i] = w
                    self.starts += 1
                    if self.stopping:
                        w.send_signal(signal.SIGTERM)
                    if first:
                        await w.wait_line("ready", timeout=START_TIMEOUT)
                        task_status.started()
                        first = False
                    code = await w.process.wait()
                    self.exits.append((tag, w.pid, code, "ready" in w.lines))
                    self.current[i] = None
                if not self._restart:
                    break
        finally:
            self._running -= 1
            if self._running == 0:
                self._done.set()

    def ready(self) -> list[WorkerProcess]:
        return [
            w for w in self.current if w is not None and w.returncode is None and "ready" in w.lines
        ]

    def kill_random(self, rng: random.Random) -> WorkerProcess | None:
        """SIGKILL one ready process, chosen by ``rng``; None if none is ready."""
        candidates = self.ready()
        if not candidates:
            return None
        victim = rng.choice(candidates)
        self.killed.add(victim.pid)
        victim.kill()
        return victim

    async def kill_all(self, *, timeout: float) -> None:
        """SIGKILL every process and restart none (every instance down at once)."""
        self.stopping = True
        for w in self.current:
            if w is not None and w.returncode is None:
                self.killed.add(w.pid)
                w.kill()
        with anyio.move_on_after(timeout):
            await self._done.wait()
            return
        raise AssertionError(f"fleet {self.name} did not die within {timeout}s")

    async def stop(self, *, timeout: float) -> None:
        """SIGTERM every process (graceful drain) and wait until every slot is done."""
        self.stopping = True
        for w in self.current:
            if w is not None and w.returncode is None:
                w.send_signal(signal.SIGTERM)
        with anyio.move_on_after(timeout):
            await self._done.wait()
            return
        raise AssertionError(f"fleet {self.name} did not stop within {timeout}s; {self.describe()}")

    def unexpected_exits(self, *, self_kills_allowed: bool = False) -> list[str]:
        """Exits that are neither our SIGKILLs nor a clean exit after SIGTERM (nor, if
        allowed, a poison job killing its own process)."""
        bad = []
        for tag, pid, code, was_ready in self.exits:
            if code == 0 or (code == -signal.SIGKILL and pid in self.killed):
                continue
            if code == -signal.SIGKILL and self_kills_allowed:
                continue
            if code == -signal.SIGTERM and not was_ready and self.stopping:
                continue  # SIGTERMed before its signal handlers were installed
            bad.append(f"{tag} (pid {pid}) exited with {code}")
        return bad

    def describe(self) -> str:
        return "; ".join(w.describe() for w in self.current if w is not None)


async def chaos_monkey(
    fleet: Fleet, rng: random.Random, *, every: float, until: anyio.Event
) -> None:
    """SIGKILL a random ready process of ``fleet`` every ``every`` seconds (jittered)
    until ``until`` is set. The sleep is the chaos cadence, not a synchronization."""
    while not until.is_set():
        with anyio.move_on_after(every * rng.uniform(0.5, 1.5)):
            await until.wait()
        if not until.is_set():
            fleet.kill_random(rng)


async def records(client: gqm.Client, jobs: Iterable[tuple[str, str]]) -> dict[str, JobRecord]:
    """The stored records of ``(job id, queue)`` pairs, in one pipeline (missing ids are
    left out)."""
    pairs = list(jobs)
    driver = await client._conn.get()
    raws = await driver.pipeline([["HGET", client.keys.queue(q).jobs, i] for i, q in pairs])
    return {i: record_decoder.decode(raw) for (i, _q), raw in zip(pairs, raws, strict=True) if raw}


async def wait_terminal(
    client: gqm.Client, jobs: dict[str, str], *, timeout: float, describe: Callable[[], str]
) -> dict[str, JobRecord]:
    """Poll Redis (there is no event for "every job is done") until every job of
    ``jobs`` (id -> queue) is in a terminal state; fails listing the stragglers."""
    terminal = {str(s) for s in gqm.JobStatus} - {
        "ready",
        "scheduled",
        "deferred",
        "processing",
        "retry",
    }
    got: dict[str, JobRecord] = {}
    with anyio.move_on_after(timeout):
        while True:
            got = await records(client, jobs.items())
            if len(got) == len(jobs) and all(r.status in terminal for r in got.values()):
                return got
            await anyio.sleep(0.2)
    left = Counter(r.status for r in got.values() if r.status not in terminal)
    stuck = [
        (i, r.status, r.attempt, r.recoveries) for i, r in got.items() if r.status not in terminal
    ][:10]
    missing = len(jobs) - len(got)
    raise AssertionError(
        f"not every job reached a terminal state within {timeout}s: {dict(left)}, "
        f"{missing} records missing, e.g. {stuck}; {describe()}"
    )


@dataclass
class Expect:
    """What one job must end as."""

    queue: str
    status: str
    #: the handler failures it must have had (its final retry_count)
    retry_count: int = 0
    #: it must never have run (a canceled dependent)
    never_runs: bool = False
    parents: list[str] = field(default_factory=list)
    #: the least delay (ms) between enqueue and start (delayed jobs)
    min_delay_ms: int = 0
    #: the error must contain this
    error: str | None = None


def check_conservation(
    expected: dict[str, Expect], got: dict[str, JobRecord], runs: list[Execution]
) -> tuple[list[str], Counter[str]]:
    """Check every job against its expectation, job by job. Returns the problems found
    and the duplicate executions per job (executions beyond the ones its handler
    failures account for: each must come from a recovery)."""
    problems: list[str] = []
    per_job = Counter(r.job_id for r in runs)
    duplicates: Counter[str] = Counter()
    for job_id, want in expected.items():
        rec = got.get(job_id)
        if rec is None:
            problems.append(f"{job_id}: record missing (lost)")
            continue
        if rec.status != want.status:
            problems.append(f"{job_id}: {rec.status} (error {rec.error!r}), expected {want.status}")
            continue
        if rec.retry_count != want.retry_count:
            problems.append(f"{job_id}: retry_count {rec.retry_count} != {want.retry_count}")
        if want.error is not None and want.error not in (rec.error or ""):
            problems.append(f"{job_id}: error {rec.error!r} lacks {want.error!r}")
        n = per_job[job_id]
        if want.never_runs:
            if n:
                problems.append(f"{job_id}: ran {n} times, must never run")
            continue
        # Every counted failure and the final attempt were executions; anything more is a
        # duplicate, which only a recovery (lease expiry after a kill) may cause.
        base = rec.retry_count + 1
        if want.status == "dead_letter" and "lease expired" in (rec.error or ""):
            # A poison pill: every run killed its worker, so each run ended in a
            # recovery (a recovery without a run: it was claimed by a process that
            # another poison pill killed first).
            if n > rec.recoveries:
                problems.append(f"{job_id}: {n} runs for {rec.recoveries} recoveries")
            continue
        if n < base:
            problems.append(f"{job_id}: ran {n} times, fewer than {base}")
        extra = n - base
        if extra > rec.recoveries:
            problems.append(f"{job_id}: {extra} duplicate runs but {rec.recoveries} recoveries")
        if extra > 0:
            duplicates[job_id] = extra
        if want.min_delay_ms and rec.created_at is not None:
            first = rec.scheduled_at if want.retry_count == 0 else None
            if first is not None and first < rec.created_at + want.min_delay_ms:
                problems.append(f"{job_id}: due {first} before created + delay")
            if rec.started_at is not None and rec.started_at < rec.created_at + want.min_delay_ms:
                problems.append(f"{job_id}: started before its delay passed")
        for parent in want.parents:
            p = got.get(parent)
            if (
                rec.started_at is not None
                and p is not None
                and p.status == "completed"
                and p.completed_at is not None
                and rec.started_at < p.completed_at
            ):
                problems.append(f"{job_id}: started before its parent {parent} completed")
    return problems, duplicates


async def assert_queues_drained(client: gqm.Client, queues: Iterable[str]) -> None:
    """No lease, ready, scheduled or deferred entry is left on ``queues``."""
    driver = await client._conn.get()
    for name in queues:
        q = client.keys.queue(name)
        sizes = await driver.pipeline(
            [
                ["ZCARD", q.leases],
                ["LLEN", q.ready],
                ["ZCARD", q.scheduled],
                ["ZCARD", q.deferred],
                ["LLEN", q.outbox],
            ]
        )
        assert list(sizes) == [0, 0, 0, 0, 0], (
            f"queue {name}: leases, ready, scheduled, deferred, outbox = {sizes}"
        )


def live_lease_losses(tmp_path: Path) -> int:
    """Leases lost by workers that were alive (their event loop stalled for longer
    than the lease, e.g. on an overloaded machine): the log lines of the renewer
    stopping a job and of a refused outcome, over every worker's stderr."""
    lost = 0
    for path in tmp_path.glob("*.stderr"):
        for line in path.read_text(errors="replace").splitlines():
            if "lost; stopping it" in line or "refused (the claim no longer owns" in line:
                lost += 1
    return lost


def percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"p50 {statistics.median(ordered):.3f}s, p99 {p99:.3f}s, max {ordered[-1]:.3f}s "
        f"(n={len(ordered)})"
    )
