"""A working example: ``python -m gqm.demo`` (or ``nox -s demo``).

Starts a private redis-server when none is given (``--redis URL`` or ``$GQM_REDIS_URL``),
runs a server with a few example handlers, enqueues a mix of jobs (fast, slow, delayed,
flaky ones that succeed on retry, and doomed ones that end in the dead-letter queue),
prints what happens and exits once every job has finished. ``--forever`` keeps a trickle
of jobs going until Ctrl+C.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import time
from collections import Counter
from typing import Any

import anyio
import msgspec

import gqm
from gqm._embedded import EmbeddedRedis


class Resize(msgspec.Struct):
    image: str
    width: int


resize = gqm.task("demo.resize", Resize)


def build_server(url: str, stats: Counter[str]) -> gqm.Server:
    server = gqm.Server(url, prefix="gqm-demo", concurrency=10, grace_period=5)

    @server.handler(resize)
    async def do_resize(job: gqm.Job[Resize]) -> dict[str, Any]:
        await anyio.sleep(random.uniform(0.001, 0.01))
        stats["resized"] += 1
        return {"image": job.payload.image, "width": job.payload.width}

    @server.handler("demo.report", workers=2, timeout=30)
    async def report(job: gqm.Job[Any]) -> str:
        await anyio.sleep(random.uniform(0.3, 0.8))  # a slow job
        stats["reports"] += 1
        return f"report for {job.payload['month']}"

    @server.handler(
        "demo.flaky",
        retry=gqm.RetryPolicy(backoff="exponential", backoff_base=0.2, backoff_max=2),
        on_failure=lambda job, err: stats.update(["flaky failures"]),
    )
    async def flaky(job: gqm.Job[Any]) -> str:
        if job.attempt < 3:
            raise ConnectionError(f"upstream unavailable (attempt {job.attempt})")
        return "succeeded on attempt 3"

    @server.handler("demo.doomed")
    async def doomed(job: gqm.Job[Any]) -> None:
        raise gqm.SkipRetry("invalid input: goes straight to the dead-letter queue")

    return server


async def _enqueue_mix(client: gqm.Client) -> list[gqm.Job[Any]]:
    jobs = await client.enqueue_batch(
        [gqm.BatchItem(resize, Resize(image=f"img-{i}.png", width=640)) for i in range(200)]
    )
    jobs += [
        await client.enqueue("demo.report", {"month": f"2026-{m:02}"}, queue="default")
        for m in range(1, 7)
    ]
    jobs += [await client.enqueue("demo.flaky", {"n": i}, max_retry=5) for i in range(3)]
    jobs += [await client.enqueue("demo.doomed", {"n": i}) for i in range(2)]
    jobs += [await client.enqueue_in(resize, Resize(image="later.png", width=64), 1.5)]
    return jobs


async def _wait_all(client: gqm.Client, jobs: list[gqm.Job[Any]], outcomes: Counter[str]) -> None:
    async def wait(job: gqm.Job[Any]) -> None:
        try:
            await client.result(job.id, timeout=60)
            outcomes["completed"] += 1
        except gqm.JobFailedError as err:
            outcomes[err.status] += 1
            print(f"  {job.type} {job.id[:13]}… ended as {err.status}: {err.error}")

    async with anyio.create_task_group() as tg:
        for job in jobs:
            tg.start_soon(wait, job)


async def run(url: str, forever: bool) -> None:
    stats: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    server = build_server(url, stats)
    async with gqm.Client(url, prefix="gqm-demo") as client, anyio.create_task_group() as tg:
        await tg.start(server.serve)
        print(f"server {server.server_id} is serving; enqueueing jobs…")
        started = time.perf_counter()
        jobs = await _enqueue_mix(client)
        print(f"enqueued {len(jobs)} jobs (1 delayed by 1.5 s); waiting for every outcome…")
        await _wait_all(client, jobs, outcomes)
        took = time.perf_counter() - started
        print(
            f"\nall {len(jobs)} jobs finished in {took:.2f}s: "
            + ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items()))
            + f"; flaky failures retried: {stats['flaky failures']}"
        )
        if forever:
            print("\n--forever: one job every 0.2 s; Ctrl+C drains and stops")
            while True:
                job = await client.enqueue(resize, Resize(image="tick.png", width=32))
                print(f"  {job.id} -> {await client.result(job.id, timeout=30)}")
                await anyio.sleep(0.2)
        server.shutdown()
    print("server stopped cleanly")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gqm.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get("GQM_REDIS_URL"),
        help="Redis URL (default: start a private redis-server)",
    )
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--forever", action="store_true", help="keep enqueueing until Ctrl+C")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    embedded = None
    url = args.redis
    if url is None:
        embedded = EmbeddedRedis()
        url = embedded.start()
        print(f"started a private redis-server at {url} ({embedded.executable})")
    try:
        anyio.run(run, url, args.forever, backend=args.backend)
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            embedded.stop()
            print("private redis-server stopped")


if __name__ == "__main__":
    main()
