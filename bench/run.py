"""gqm benchmarks: ``nox -s bench`` (or ``python bench/run.py``).

Every scenario runs in its own subprocess (so peak RSS and CPU time belong to it alone)
against a private redis-server that this script starts. Prints a table and writes
``bench/results/<timestamp>.json``.

Scenarios (no-op jobs, as in the original's table):

* ``enqueue``: one producer awaiting each ``enqueue`` call;
* ``batch100`` / ``batch1000``: ``enqueue_batch`` of 100 / 1000 jobs;
* ``drain``: N jobs enqueued first, then a server with 10 workers starts; jobs/s from
  its start to the last completion (results stored, leases, stats: full guarantees);
* ``burst30``: the same with 30 workers;
* ``e2e``: a producer enqueues while the server (10 workers) runs;
* ``payload10k`` / ``payload100k``: drain with 10 KB / 100 KB payloads;
* ``latency``: 1,000 jobs enqueued 2 ms apart to an idle server; enqueue-to-start ms;
* ``baseline``: not gqm, a yardstick for the machine of the day: a plain redis-py loop
  (asyncio only; run on whichever backend is asked) storing a job hash field and pushing
  its id (``HSET`` + ``LPUSH``, pipelined, one job per round trip, no Lua, no lease, no
  id index); compare ``enqueue`` with it;
* ``sustained`` (not in the default list; ``--scenarios sustained --duration 600``): a
  producer process enqueues at a steady rate (``--rate``, default 1,000 jobs/s) while the
  worker process serves; the worker samples its RSS every 10 s and reports the first and
  last samples (after a 60 s warm-up) and their difference.

For the drain-like scenarios (``drain``, ``burst30``, ``payload*``) the jobs are enqueued
by a separate process first, so the measured process is the worker alone: its jobs/s,
``cpu_us_per_job`` (process CPU time, user + system, of the serving part, divided by the
jobs) and ``peak_rss_mb`` (the worker process's peak RSS) are the server's own.
For the other scenarios they are those of the one process that runs them.

``--driver`` picks the Redis driver (``resp``, the default; ``redis-py`` on asyncio;
``coredis``) for comparisons.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio

import gqm
from gqm._embedded import EmbeddedRedis

SCENARIOS = [
    "enqueue",
    "batch100",
    "batch1000",
    "drain",
    "burst30",
    "e2e",
    "payload10k",
    "payload100k",
    "latency",
    "baseline",
]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _throughput(n: int, elapsed: float, cpu: float) -> dict[str, Any]:
    """The figures of a run of ``n`` jobs that took ``elapsed`` s and ``cpu`` s of CPU."""
    return {
        "jobs": n,
        "seconds": elapsed,
        "jobs_per_s": n / elapsed,
        "cpu_us_per_job": cpu / n * 1e6,
    }


async def _flush(url: str) -> None:
    async with gqm.Client(url) as c:
        await (await c._conn.get()).execute("FLUSHALL")


async def _enqueue_batches(client: gqm.Client, n: int, payload: Any, size: int = 1000) -> None:
    for start in range(0, n, size):
        await client.enqueue_batch(
            [gqm.BatchItem("noop", payload) for _ in range(min(size, n - start))]
        )


#: The drain-like scenarios: (jobs cap, workers, payload). Their jobs are enqueued by
#: a separate process (``--fill``) before the measured worker process starts.
DRAINS: dict[str, tuple[int | None, int, Any]] = {
    "drain": (None, 10, None),
    "burst30": (None, 30, None),
    "payload10k": (5000, 10, "x" * 10_000),
    "payload100k": (1000, 10, "x" * 100_000),
}


def _drain_size(name: str, n: int) -> int:
    cap = DRAINS[name][0]
    return n if cap is None else min(n, cap)


async def _fill(name: str, url: str, n: int) -> None:
    await _flush(url)
    async with gqm.Client(url) as client:
        await _enqueue_batches(client, _drain_size(name, n), DRAINS[name][2])


async def _drain(url: str, n: int, workers: int) -> dict[str, float]:
    server = gqm.Server(url, concurrency=workers, handle_signals=False)
    done = anyio.Event()
    count = 0

    @server.handler("noop")
    async def noop(job: gqm.Job[Any]) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    cpu0, t0 = _cpu(), time.perf_counter()
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        await done.wait()
        elapsed, cpu = time.perf_counter() - t0, _cpu() - cpu0
        server.shutdown()
    return _throughput(n, elapsed, cpu)


async def _scenario(name: str, url: str, n: int) -> dict[str, Any]:
    if name in DRAINS:
        return await _drain(url, _drain_size(name, n), DRAINS[name][1])
    await _flush(url)
    if name == "baseline":
        return await _baseline(url, n)
    if name == "enqueue":
        async with gqm.Client(url) as client:
            await client.enqueue("noop", None)  # connect and load the script first
            cpu0, t0 = _cpu(), time.perf_counter()
            for _ in range(n):
                await client.enqueue("noop", None)
            elapsed, cpu = time.perf_counter() - t0, _cpu() - cpu0
        return _throughput(n, elapsed, cpu)
    if name in ("batch100", "batch1000"):
        size = 100 if name == "batch100" else 1000
        async with gqm.Client(url) as client:
            await client.enqueue("noop", None)
            cpu0, t0 = _cpu(), time.perf_counter()
            await _enqueue_batches(client, n, None, size)
            elapsed, cpu = time.perf_counter() - t0, _cpu() - cpu0
        return _throughput(n, elapsed, cpu)
    if name == "e2e":
        return await _e2e(url, n)
    if name == "latency":
        return await _latency(url)
    raise SystemExit(f"unknown scenario {name}")


async def _e2e(url: str, n: int) -> dict[str, Any]:
    server = gqm.Server(url, concurrency=10, handle_signals=False)
    done = anyio.Event()
    count = 0

    @server.handler("noop")
    async def noop(job: gqm.Job[Any]) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    async with gqm.Client(url) as client, anyio.create_task_group() as tg:
        await tg.start(server.serve)
        cpu0, t0 = _cpu(), time.perf_counter()
        for _ in range(n):
            await client.enqueue("noop", None)
        await done.wait()
        elapsed, cpu = time.perf_counter() - t0, _cpu() - cpu0
        server.shutdown()
    return _throughput(n, elapsed, cpu)


async def _baseline(url: str, n: int) -> dict[str, Any]:
    import redis.asyncio as redis  # only this yardstick uses redis-py

    r = redis.Redis.from_url(url)
    payload = json.dumps({"type": "noop", "payload": None})
    await r.ping()
    cpu0, t0 = _cpu(), time.perf_counter()
    for i in range(n):
        job_id = f"baseline-{i}"
        async with r.pipeline(transaction=False) as pipe:
            pipe.hset("baseline:jobs", job_id, payload)
            pipe.lpush("baseline:ready", job_id)
            await pipe.execute()
    elapsed, cpu = time.perf_counter() - t0, _cpu() - cpu0
    await r.aclose()
    return _throughput(n, elapsed, cpu)


async def _latency(url: str, n: int = 1000, spacing: float = 0.002) -> dict[str, Any]:
    server = gqm.Server(url, concurrency=10, handle_signals=False)
    sent: dict[str, float] = {}
    lat: list[float] = []
    done = anyio.Event()

    @server.handler("noop")
    async def noop(job: gqm.Job[Any]) -> None:
        lat.append((time.perf_counter() - sent[job.id]) * 1000)
        if len(lat) == n:
            done.set()

    async with gqm.Client(url) as client, anyio.create_task_group() as tg:
        await tg.start(server.serve)
        for i in range(n):
            job_id = f"lat-{i}"
            sent[job_id] = time.perf_counter()
            await client.enqueue("noop", None, job_id=job_id)
            await anyio.sleep(spacing)
        await done.wait()
        server.shutdown()
    lat.sort()
    return {
        "jobs": n,
        "p50_ms": statistics.median(lat),
        "p99_ms": lat[int(n * 0.99) - 1],
        "max_ms": lat[-1],
    }


def _current_rss_mb() -> float:
    """The resident set size now (not the peak), from /proc."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def _produce(url: str, rate: int, duration: float) -> None:
    """Enqueue ``rate`` jobs/s for ``duration`` seconds, in ticks of 10 ms (a batch of
    rate/100 jobs each), catching up when a tick runs late."""
    per_tick = max(1, rate // 100)
    async with gqm.Client(url) as client:
        start = anyio.current_time()
        sent = 0
        while (now := anyio.current_time()) - start < duration:
            due = int((now - start) * rate)
            while sent < due:
                size = min(per_tick * 10, due - sent)
                await client.enqueue_batch([gqm.BatchItem("noop", None) for _ in range(size)])
                sent += size
            await anyio.sleep(0.01)
        print(json.dumps({"sent": sent}))


async def _sustained(url: str, rate: int, duration: float, backend: str) -> dict[str, Any]:
    """The worker side of ``sustained``: serve while a producer process runs, sample RSS."""
    await _flush(url)
    server = gqm.Server(url, concurrency=10, handle_signals=False)
    count = 0
    target: int | None = None
    drained = anyio.Event()

    @server.handler("noop")
    async def noop(job: gqm.Job[Any]) -> None:
        nonlocal count
        count += 1
        if target is not None and count >= target:
            drained.set()

    samples: list[tuple[float, float, int]] = []
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        cpu0, t0 = _cpu(), time.perf_counter()
        producer = await anyio.open_process(
            [sys.executable, __file__, "--produce", "--url", url, "--backend", backend,
             "--rate", str(rate), "--duration", str(duration)]
        )  # fmt: skip
        async with producer:
            while producer.returncode is None:
                with anyio.move_on_after(10):
                    await producer.wait()
                samples.append((time.perf_counter() - t0, _current_rss_mb(), count))
            assert producer.stdout is not None
            line = (await producer.stdout.receive()).decode().splitlines()[-1]
            sent = target = json.loads(line)["sent"]
        if count >= sent:
            drained.set()
        await drained.wait()
        server.shutdown()
    warm = [s for s in samples if s[0] >= 60] or samples
    return {
        "jobs": sent,
        "seconds": time.perf_counter() - t0,
        "jobs_per_s": sent / (time.perf_counter() - t0),
        "cpu_us_per_job": (_cpu() - cpu0) / max(sent, 1) * 1e6,
        "rss_first_mb": warm[0][1],
        "rss_last_mb": warm[-1][1],
        "rss_growth_mb": warm[-1][1] - warm[0][1],
        "rss_samples": [[round(t, 1), round(r, 2), c] for t, r, c in samples],
    }


def _run(backend: str, fn: Any, *args: Any) -> Any:
    if backend == "trio" and fn is _scenario and args[0] == "baseline":
        backend = "asyncio"  # redis-py cannot run on trio; the yardstick is the same
    if backend == "uvloop":
        import uvloop  # noqa: F401 - fail early if missing

        return anyio.run(fn, *args, backend="asyncio", backend_options={"use_uvloop": True})
    return anyio.run(fn, *args, backend=backend)


def _child(args: argparse.Namespace) -> None:
    if args.fill:
        _run(args.backend, _fill, args.one, args.url, args.n)
        return
    if args.one == "sustained":
        result = _run(args.backend, _sustained, args.url, args.rate, args.duration, args.backend)
    else:
        result = _run(args.backend, _scenario, args.one, args.url, args.n)
    result["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000, help="jobs per scenario (default 20000)")
    parser.add_argument("--backends", default="asyncio,uvloop,trio")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per scenario; the median is reported"
    )
    parser.add_argument(
        "--driver",
        default=os.environ.get("GQM_DRIVER", "auto"),
        help="Redis driver: auto (resp), resp, redis-py (asyncio only) or coredis",
    )
    parser.add_argument("--rate", type=int, default=1000, help="sustained: jobs/s produced")
    parser.add_argument("--duration", type=float, default=600, help="sustained: seconds")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--fill", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--produce", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.produce:
        _run(args.backend, _produce, args.url, args.rate, args.duration)
        return
    if args.one:
        _child(args)
        return
    env = {**os.environ, "GQM_DRIVER": args.driver}
    results: list[dict[str, Any]] = []
    with EmbeddedRedis() as url:
        for backend in args.backends.split(","):
            for scenario in args.scenarios.split(","):
                runs = []
                for _ in range(args.runs):
                    base = [sys.executable, __file__, "--one", scenario, "--backend", backend,
                            "--url", url, "--n", str(args.n), "--rate", str(args.rate),
                            "--duration", str(args.duration)]  # fmt: skip
                    if scenario in DRAINS:
                        subprocess.run([*base, "--fill"], env=env, check=True)
                    out = subprocess.run(base, env=env, capture_output=True, text=True, check=False)
                    if out.returncode != 0:
                        print(out.stderr[-3000:], file=sys.stderr)
                        raise SystemExit(f"{backend}/{scenario} failed")
                    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                key = "p50_ms" if scenario == "latency" else "jobs_per_s"
                runs.sort(key=lambda r: r[key])
                median = runs[len(runs) // 2]
                row = {"backend": backend, "scenario": scenario, **median, "runs": runs}
                results.append(row)
                _print_row(row)
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {
        "n": args.n,
        "runs": args.runs,
        "driver": args.driver,
        "python": sys.version,
        "gqm": gqm.__version__,
        "cpus": os.cpu_count(),
    }
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"\nwrote {path}")


def _print_row(row: dict[str, Any]) -> None:
    if row["scenario"] == "latency":
        figures = (
            f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  max {row['max_ms']:.2f} ms"
        )
    else:
        figures = f"{row['jobs_per_s']:>9,.0f} jobs/s  {row['cpu_us_per_job']:>7.1f} µs CPU/job"
    if row["scenario"] == "sustained":
        figures = (
            f"{row['jobs_per_s']:>9,.0f} jobs/s  RSS {row['rss_first_mb']:.1f} -> "
            f"{row['rss_last_mb']:.1f} MB ({row['rss_growth_mb']:+.2f} MB)"
        )
    rss = f"peak RSS {row['peak_rss_mb']:.0f} MB"
    print(f"{row['backend']:<8} {row['scenario']:<12} {figures}  {rss}", flush=True)


if __name__ == "__main__":
    main()
