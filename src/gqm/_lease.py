"""Leases: renewing the ones this server holds, and reaping the ones nobody renews.

A claimed job sits in its queue's ``leases`` set, scored by expiry on the Redis clock.
One renewer per server extends the leases of all its in-flight jobs every ``lease/3``,
in one script call per queue. A reaper on every server returns expired leases to the
front of their queue (a recovery, not a failure), so a job whose worker was SIGKILLed
runs again within ``lease + reap interval``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from . import _scripts as scripts
from .errors import RedisError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._keys import Keys, QueueKeys
    from ._redis import Arg, Driver
    from ._runner import Claimed

log = logging.getLogger("gqm.lease")


async def renew_forever(
    driver: Driver, keys: Keys, inflight: dict[str, Claimed], *, lease_ms: int, interval: float
) -> None:
    """Extend the leases of ``inflight`` jobs every ``interval`` seconds; stop the jobs
    whose lease was lost (they were reaped, or canceled)."""
    renew = scripts.script("renew")
    while True:
        await anyio.sleep(interval)
        by_queue: dict[str, list[Claimed]] = {}
        for c in list(inflight.values()):
            by_queue.setdefault(c.queue, []).append(c)
        if not by_queue:
            continue
        calls: list[scripts.ScriptCall] = []
        for name, held in by_queue.items():
            args: list[Arg] = [lease_ms]
            for c in held:
                args += [c.job_id, c.token]
            calls.append((renew, scripts.renew_keys(keys.queue(name)), args))
        try:
            replies = await scripts.run_many(driver, calls)
        except RedisError as err:
            log.warning("lease renewal failed (%s); retrying next round", err)
            continue
        for lost in replies:
            for raw in lost:
                gone = inflight.get(raw.decode())
                if gone is not None:
                    log.warning("lease of job %s lost; stopping it", gone.job_id)
                    gone.stop("lease lost")


async def reap_forever(
    driver: Driver,
    queues: Sequence[QueueKeys],
    *,
    interval: float,
    max_recoveries: int,
    dead_ttl_ms: int,
    done_channel: str,
) -> None:
    """Recover expired leases of ``queues``, at least every ``interval`` seconds."""
    reap = scripts.script("reap")
    calls: list[scripts.ScriptCall] = [
        (
            reap,
            scripts.reap_keys(q),
            [1000, max_recoveries, dead_ttl_ms, q.wake, done_channel],
        )
        for q in queues
    ]
    while True:
        wait = interval
        try:
            replies = await scripts.run_many(driver, calls)
        except RedisError as err:
            log.warning("reaping failed (%s); retrying in %.1fs", err, interval)
        else:
            for q, (recovered, buried, next_ms) in zip(queues, replies, strict=True):
                if recovered or buried:
                    log.warning(
                        "queue %s: recovered %d jobs with expired leases, %d sent to the DLQ",
                        q.name,
                        recovered,
                        buried,
                    )
                if recovered + buried >= 1000:
                    wait = 0
                elif next_ms >= 0:
                    wait = min(wait, next_ms / 1000 + 0.01)
        await anyio.sleep(wait)
