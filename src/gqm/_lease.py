"""Leases: renewing the ones this server holds, and reaping the ones nobody renews.

A claimed job sits in its queue's ``leases`` set, scored by expiry on the Redis clock.
One renewer per server extends the leases of all its in-flight jobs every ``lease/3``,
in one script call per queue. A reaper on every server returns expired leases to the
front of their queue (a recovery, not a failure), so a job whose worker was SIGKILLed
runs again within ``lease + reap interval``.
"""

from __future__ import annotations

import contextlib
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
    whose lease was lost (they were reaped, or canceled).

    A failed round is retried after a short pause rather than a whole interval, and each
    round is bounded, so one slow reply cannot let every lease run out.
    """
    renew = scripts.script("renew")
    wait = interval
    while True:
        await anyio.sleep(wait)
        by_queue: dict[str, list[Claimed]] = {}
        for c in list(inflight.values()):
            by_queue.setdefault(c.queue, []).append(c)
        if not by_queue:
            wait = interval
            continue
        calls: list[scripts.ScriptCall] = []
        sent: list[list[Claimed]] = []
        for name, held in by_queue.items():
            args: list[Arg] = [lease_ms]
            for c in held:
                args += [c.job_id, c.token]
            calls.append((renew, scripts.renew_keys(keys.queue(name)), args))
            sent.append(held)
        replies = None
        with anyio.move_on_after(interval):
            try:
                replies = await scripts.run_many(driver, calls)
            except RedisError as err:
                log.warning("lease renewal failed (%s); retrying soon", err)
        if replies is None:
            wait = min(1.0, interval / 3)
            continue
        wait = interval
        for held, (lost, aborted) in zip(sent, replies, strict=True):
            if not lost and not aborted:
                continue
            lost_ids = {raw.decode() for raw in lost}
            reasons = {raw_id.decode(): reason.decode() for raw_id, reason in aborted}
            for c in held:
                # Only the claim whose token was refused: the job may have been claimed
                # again by this very server since, and that newer claim is valid.
                if inflight.get(c.job_id) is not c:
                    continue
                if c.job_id in lost_ids:
                    log.warning("lease of job %s lost; stopping it", c.job_id)
                    c.stop("lease lost")
                elif c.job_id in reasons:
                    c.stop(reasons[c.job_id], abort=True)


async def reap_forever(
    driver: Driver,
    queues: Sequence[QueueKeys],
    *,
    interval: float,
    max_recoveries: int,
    dead_ttl_ms: int,
    completed_ttl_ms: int,
    done_channel: str,
    keys: Keys,
) -> None:
    """Recover expired leases of ``queues``, at least every ``interval`` seconds."""
    reap = scripts.script("reap")
    calls: list[scripts.ScriptCall] = [
        (
            reap,
            scripts.reap_keys(q),
            [1000, max_recoveries, dead_ttl_ms, q.wake, done_channel, completed_ttl_ms],
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
            swept = {q.name: reply[3] for q, reply in zip(queues, replies, strict=True)}
            with contextlib.suppress(RedisError):
                await scripts.forget_ids(driver, keys, swept)
            for q, (recovered, buried, next_ms, _) in zip(queues, replies, strict=True):
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
