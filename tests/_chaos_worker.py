"""A gqm server process driven by its jobs' payloads, for the chaos tests (``test_chaos*``).

Run as a script (``python -P tests/_chaos_worker.py --url ... --backend trio ...``; the
launcher is :func:`tests._worker_proc.worker_process` with ``script=SCRIPT``), it speaks
the same stdout protocol as ``tests/_worker_proc.py`` (``ready``, ``started <id>``,
``log <level> <logger> <message>``, ``exited``) and serves ``chaos.job`` on the queues
given, with a handler whose behaviour comes from the payload (a dict, every key optional):

``sleep``
    seconds of work (``anyio.sleep``).
``fail``
    raise while ``job.retry_count < fail`` (handler failures: they count toward
    ``max_retry``, so ``fail > max_retry`` ends in the dead-letter queue).
``kill``
    SIGKILL this very process while ``job.recoveries < kill`` (a poison pill: with
    ``kill > max_recoveries`` the reaper dead-letters it).
``a1``
    on attempt 1 only, after ``sleep`` and then ``a1_sleep`` seconds: ``"complete"``
    (return), ``"fail"`` (raise), ``"dead"`` (raise :class:`gqm.SkipRetry`) or
    ``"block"`` (wait for ever). Later attempts complete. Used by the zombie-fencing test.
``block``
    wait for ever (cancelled only by a shutdown, a lost lease or a timeout).

Each execution appends ``<tag> <job id> <attempt> <retry_count> <recoveries>`` to
``--exec-log`` (one ``O_APPEND`` write per line, shared by every process of a test), so
executions are counted outside gqm's keys. The handler returns the tag as its result.

``--cron-every-second ID`` also registers a cron entry ``ID`` firing ``chaos.cron`` every
second (overlap policy ``--cron-overlap``, default ``allow``; the cron test runs several
such processes: one fire per tick among them);
``chaos.cron`` jobs log the same line and return at once. ``--skew S`` shifts this
process's wall clock (``time.time`` and ``time.time_ns``) by ``S`` seconds before gqm is
imported: gqm must take every time that matters from Redis.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from collections.abc import Sequence

SCRIPT = Path(__file__).resolve()
JOB_TYPE = "chaos.job"
CRON_TYPE = "chaos.cron"


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", default="gqm")
    p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    p.add_argument("--tag", default="w")
    p.add_argument("--exec-log", required=True)
    p.add_argument("--queues", default="default", help="comma-separated, highest first")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--lease-ttl", type=float, default=None)
    p.add_argument("--reap-interval", type=float, default=None)
    p.add_argument("--grace-period", type=float, default=None)
    p.add_argument("--poll-interval", type=float, default=None)
    p.add_argument("--max-recoveries", type=int, default=None)
    p.add_argument("--no-scheduler", action="store_true")
    p.add_argument("--cron-every-second", default=None, metavar="ENTRY_ID")
    p.add_argument("--cron-overlap", default="allow", choices=["skip", "allow", "replace"])
    p.add_argument("--skew", type=float, default=0.0)
    return p.parse_args(argv)


def _skew_clock(seconds: float) -> None:
    """Shift this process's wall clock by ``seconds`` (a host whose clock is wrong)."""
    real_time, real_time_ns = time.time, time.time_ns
    shift_ns = int(seconds * 1e9)
    time.time = lambda: real_time() + seconds  # type: ignore[assignment]
    time.time_ns = lambda: real_time_ns() + shift_ns  # type: ignore[assignment]


async def _serve(args: argparse.Namespace) -> None:
    import gqm

    settings: dict[str, Any] = {
        "prefix": args.prefix,
        "concurrency": args.concurrency,
        "scheduler": not args.no_scheduler,
    }
    for name in ("lease_ttl", "reap_interval", "grace_period", "poll_interval", "max_recoveries"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    server = gqm.Server(args.url, **settings)
    fd = os.open(args.exec_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    tag: str = args.tag

    def log_execution(job: gqm.Job[Any]) -> None:
        line = f"{tag} {job.id} {job.attempt} {job.retry_count} {job.recoveries}\n"
        os.write(fd, line.encode())
        print(f"started {job.id}", flush=True)

    async def work(job: gqm.Job[Any]) -> str:
        log_execution(job)
        spec: dict[str, Any] = job.payload if isinstance(job.payload, dict) else {}
        if job.recoveries < int(spec.get("kill", 0)):
            os.kill(os.getpid(), signal.SIGKILL)
        if spec.get("sleep"):
            await anyio.sleep(float(spec["sleep"]))
        if spec.get("block"):
            await anyio.Event().wait()
        if job.retry_count < int(spec.get("fail", 0)):
            raise RuntimeError(f"planned failure {job.retry_count + 1}")
        first = spec.get("a1")
        if first and job.attempt == 1:
            await anyio.sleep(float(spec.get("a1_sleep", 0)))
            if first == "fail":
                raise RuntimeError("planned failure on attempt 1")
            if first == "dead":
                raise gqm.SkipRetry("planned dead letter on attempt 1")
            if first == "block":
                await anyio.Event().wait()
        return tag

    async def tick(job: gqm.Job[Any]) -> None:
        log_execution(job)

    queues = tuple(args.queues.split(","))
    server.pool(gqm.PoolConfig("chaos", job_types=(JOB_TYPE,), queues=queues))
    if args.cron_every_second:
        server.pool(gqm.PoolConfig("cron", job_types=(CRON_TYPE,), queues=("cron",), concurrency=2))
        server.schedule(
            gqm.CronEntry(
                id=args.cron_every_second,
                cron_expr="* * * * * *",
                job_type=CRON_TYPE,
                queue="cron",
                overlap_policy=args.cron_overlap,
            )
        )
        server.handle(CRON_TYPE, tick)
    server.handle(JOB_TYPE, work)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve)
            print("ready", flush=True)
    finally:
        os.close(fd)
    print("exited", flush=True)


class _StdoutLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        msg = self.format(record).replace("\n", " | ")
        print(f"log {record.levelname} {record.name} {msg}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.skew:
        _skew_clock(args.skew)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    logging.getLogger("gqm").addHandler(_StdoutLog())
    anyio.run(_serve, args, backend=args.backend)


if __name__ == "__main__":
    main()
