"""Driver micro-benchmark: the cost of one Redis call through each driver.

``python bench/drivers.py [--n 20000] [--pipelines 2000] [--size 10]``

Against a private redis-server that it starts (``gqm._embedded.EmbeddedRedis``), each
driver/backend pair runs in its own subprocess:

* ``evalsha``: ``--n`` sequential ``EVALSHA`` calls of a trivial script, one at a time;
* ``pipeline``: ``--pipelines`` sequential pipelines of ``--size`` such ``EVALSHA``.

Pairs: redis-py (asyncio), coredis (asyncio, trio), resp (asyncio, uvloop, trio) and
resp-anyio (asyncio, trio: the resp driver on anyio streams, ``GQM_RESP_TRANSPORT=anyio``,
which is what it did before its asyncio protocol and bare trio sockets). Reported:
calls per second (wall clock) and the process CPU time (user + system, from
``resource.getrusage``) per call, where a call is one ``execute`` or one ``pipeline``.
The redis-server's own CPU time is not included. A short warm-up precedes each run.
Every pair runs ``--repeat`` times, interleaved with the others, and the best run
(least CPU per call) is shown: on a shared machine, noise only ever adds time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import anyio

from gqm._embedded import EmbeddedRedis
from gqm._redis._settings import RedisSettings

if TYPE_CHECKING:
    from gqm._redis._protocol import Driver

PAIRS = [
    ("redis-py", "asyncio"),
    ("coredis", "asyncio"),
    ("coredis", "trio"),
    ("resp", "asyncio"),
    ("resp", "uvloop"),
    ("resp", "trio"),
    ("resp-anyio", "asyncio"),
    ("resp-anyio", "trio"),
]
SCRIPT = "return ARGV[1]"
WARMUP = 500


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _make(kind: str, url: str) -> Driver:
    settings = RedisSettings(url=url)
    if kind == "redis-py":
        from gqm._redis._redispy import RedisPyDriver

        return RedisPyDriver.from_settings(settings)
    if kind == "coredis":
        from gqm._redis._coredis import CoredisDriver

        return CoredisDriver.from_settings(settings)
    from gqm._redis._resp import RespDriver

    return RespDriver(settings, transport="anyio" if kind == "resp-anyio" else "auto")


async def _measure(kind: str, url: str, n: int, pipelines: int, size: int) -> dict[str, Any]:
    driver = _make(kind, url)
    await driver.open()
    try:
        sha = (await driver.execute("SCRIPT", "LOAD", SCRIPT)).decode()
        call = ("EVALSHA", sha, 1, "gqm-bench:key", "payload")
        batch = [call] * size
        assert await driver.execute(*call) == b"payload"
        assert await driver.pipeline(batch) == [b"payload"] * size

        results: dict[str, Any] = {}
        for _ in range(WARMUP):
            await driver.execute(*call)
        cpu, wall = _cpu(), time.perf_counter()
        for _ in range(n):
            await driver.execute(*call)
        wall, cpu = time.perf_counter() - wall, _cpu() - cpu
        results["evalsha"] = {"calls": n, "per_s": n / wall, "cpu_us": cpu / n * 1e6}

        for _ in range(WARMUP // size):
            await driver.pipeline(batch)
        cpu, wall = _cpu(), time.perf_counter()
        for _ in range(pipelines):
            await driver.pipeline(batch)
        wall, cpu = time.perf_counter() - wall, _cpu() - cpu
        results["pipeline"] = {
            "calls": pipelines,
            "per_s": pipelines / wall,
            "cpu_us": cpu / pipelines * 1e6,
        }
        return results
    finally:
        await driver.aclose()


def _run_one(kind: str, backend: str, url: str, n: int, pipelines: int, size: int) -> None:
    if backend == "uvloop":
        result = anyio.run(
            _measure, kind, url, n, pipelines, size, backend="asyncio",
            backend_options={"use_uvloop": True},
        )  # fmt: skip
    else:
        result = anyio.run(_measure, kind, url, n, pipelines, size, backend=backend)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="sequential EVALSHA calls")
    parser.add_argument("--pipelines", type=int, default=2000, help="sequential pipelines")
    parser.add_argument("--size", type=int, default=10, help="commands per pipeline")
    parser.add_argument("--repeat", type=int, default=3, help="runs per pair (best shown)")
    parser.add_argument("--only", help="run one pair, e.g. resp:trio")
    parser.add_argument("--one", nargs=3, metavar=("DRIVER", "BACKEND", "URL"), help="internal")
    args = parser.parse_args()
    if args.one:
        kind, backend, url = args.one
        _run_one(kind, backend, url, args.n, args.pipelines, args.size)
        return

    pairs = [tuple(args.only.split(":"))] if args.only else PAIRS
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {pair: [] for pair in pairs}
    with EmbeddedRedis() as url:
        for _ in range(args.repeat):
            for kind, backend in pairs:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--one", kind, backend, url,
                        "--n", str(args.n),
                        "--pipelines", str(args.pipelines),
                        "--size", str(args.size),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )  # fmt: skip
                runs[kind, backend].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = [
        (
            kind,
            backend,
            {
                scenario: min((r[scenario] for r in results), key=lambda m: m["cpu_us"])
                for scenario in ("evalsha", "pipeline")
            },
        )
        for (kind, backend), results in runs.items()
    ]

    print(
        f"{args.n} sequential EVALSHA; {args.pipelines} pipelines of {args.size} EVALSHA; "
        f"best of {args.repeat} (CPU: the client process only, user + system)\n"
    )
    header = (
        f"{'driver':<10} {'backend':<8} | {'EVALSHA/s':>10} {'CPU us/call':>12} "
        f"| {'pipelines/s':>11} {'CPU us/pipeline':>15} {'CPU us/cmd':>10}"
    )
    print(header)
    print("-" * len(header))
    for kind, backend, r in rows:
        e, p = r["evalsha"], r["pipeline"]
        print(
            f"{kind:<10} {backend:<8} | {e['per_s']:>10,.0f} {e['cpu_us']:>12.1f} "
            f"| {p['per_s']:>11,.0f} {p['cpu_us']:>15.1f} {p['cpu_us'] / args.size:>10.1f}"
        )


if __name__ == "__main__":
    main()
