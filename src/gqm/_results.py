"""Waiting for job outcomes without polling.

Finishing scripts publish a job's id on the prefix's ``done`` channel when someone asked
to be told (``watch.lua`` sets a flag on the record). A :class:`DoneListener` holds one
subscription for a whole client and wakes the waiters of that id; a waiter registers
*before* it reads the job's state, so a finish that lands in between is never missed.
After a reconnect every waiter is woken to look again, since messages may have been lost.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from .errors import RedisError

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from ._redis import Driver

log = logging.getLogger("gqm.client")


class DoneListener:
    """One subscription to the ``done`` channel, shared by every waiting call."""

    def __init__(self, channel: str) -> None:
        self._channel = channel
        self._waiters: dict[str, list[anyio.Event]] = {}

    def register(self, job_id: str) -> anyio.Event:
        event = anyio.Event()
        self._waiters.setdefault(job_id, []).append(event)
        return event

    def unregister(self, job_id: str, event: anyio.Event) -> None:
        events = self._waiters.get(job_id)
        if events is not None and event in events:
            events.remove(event)
            if not events:
                del self._waiters[job_id]

    def _wake(self, job_id: str) -> None:
        for event in self._waiters.pop(job_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for job_id in list(self._waiters):
            self._wake(job_id)

    async def run(self, driver: Driver, *, task_status: TaskStatus[None]) -> None:
        """Listen until cancelled. A failure to subscribe the first time is raised to
        the caller of ``start``; later connection losses are retried with backoff."""
        started = False
        delay = 0.1
        while True:
            try:
                async with driver.subscribe(self._channel) as sub:
                    if started:
                        self._wake_all()
                    else:
                        task_status.started()
                        started = True
                    delay = 0.1
                    while True:
                        _channel, data = await sub.get_message()
                        self._wake(data.decode())
            except RedisError as err:
                if not started:
                    raise
                log.warning("result subscription lost (%s); reconnecting in %.1fs", err, delay)
                self._wake_all()
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
