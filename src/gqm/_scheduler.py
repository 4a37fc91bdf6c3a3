"""Promotion of delayed jobs and retries when they fall due.

Every server runs the promoter for the queues it serves (the script is idempotent, so
several servers may race harmlessly). It sleeps until the earliest due time that Redis
reported, or until Redis says a sooner job arrived, capped at ``poll_interval``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from . import _scripts as scripts
from .errors import RedisError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._keys import QueueKeys
    from ._redis import Driver
    from ._wake import Signal

log = logging.getLogger("gqm.scheduler")

_BATCH = 1000


async def promote_forever(
    driver: Driver, queues: Sequence[QueueKeys], signal: Signal, *, poll_interval: float
) -> None:
    """Move due jobs of ``queues`` to their ready lists, for ever. ``signal`` fires when
    Redis reports a sooner due time (register it with the wake hub first)."""
    promote = scripts.script("promote")
    calls: list[scripts.ScriptCall] = [
        (promote, scripts.promote_keys(q), [_BATCH, q.wake]) for q in queues
    ]
    while True:
        event = signal.current()
        wait = poll_interval
        try:
            replies = await scripts.run_many(driver, calls)
        except RedisError as err:
            log.warning("promoting due jobs failed (%s)", err)
        else:
            for moved, next_ms in replies:
                if moved >= _BATCH:
                    wait = 0
                elif next_ms >= 0:
                    wait = min(wait, next_ms / 1000)
        if wait > 0:
            with anyio.move_on_after(wait):
                await event.wait()
        else:
            await anyio.lowlevel.checkpoint()
