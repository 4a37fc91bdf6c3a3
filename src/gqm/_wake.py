"""Wake-ups: idle fetchers and the promoter sleep until Redis says there is work.

The scripts publish on a queue's ``wake`` channel when its ready list goes from empty to
non-empty (``r``), when the earliest due time of its scheduled set moves closer
(``s``), or when a finished job left outcomes for its dependents in the outbox
(``d``). One subscription per server listens to the channels of every queue it serves
and sets the matching :class:`Signal`. A fetcher takes the signal's current event
*before* it claims, so a message that arrives between an empty claim and the wait is
never lost.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from .errors import RedisError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from anyio.abc import TaskStatus

    from ._keys import QueueKeys
    from ._redis import Driver

log = logging.getLogger("gqm.wake")


class Signal:
    """A resettable event: :meth:`current` returns the event the next :meth:`fire` sets."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def current(self) -> anyio.Event:
        return self._event

    def fire(self) -> None:
        event, self._event = self._event, anyio.Event()
        event.set()


class WakeHub:
    """Routes wake messages of many queues to the signals that wait on them."""

    def __init__(self) -> None:
        self._ready: dict[str, list[Signal]] = {}
        self._scheduled: dict[str, list[Signal]] = {}
        self._resolved: dict[str, list[Signal]] = {}
        self._channels: dict[str, str] = {}
        self._callbacks: dict[str, Callable[[bytes], None]] = {}

    def on_ready(self, queue: QueueKeys, signal: Signal) -> None:
        self._ready.setdefault(queue.name, []).append(signal)
        self._channels[queue.wake] = queue.name

    def on_scheduled(self, queue: QueueKeys, signal: Signal) -> None:
        self._scheduled.setdefault(queue.name, []).append(signal)
        self._channels[queue.wake] = queue.name

    def on_outbox(self, queue: QueueKeys, signal: Signal) -> None:
        """Fire ``signal`` when a job of ``queue`` finished with dependents waiting."""
        self._resolved.setdefault(queue.name, []).append(signal)
        self._channels[queue.wake] = queue.name

    def on_message(self, channel: str, callback: Callable[[bytes], None]) -> None:
        """Call ``callback(data)`` for each message on ``channel`` (not a queue's)."""
        self._callbacks[channel] = callback

    def _fire_all(self) -> None:
        tables = (self._ready, self._scheduled, self._resolved)
        for signals in (s for table in tables for s in table.values()):
            for s in signals:
                s.fire()

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        name = channel.decode()
        callback = self._callbacks.get(name)
        if callback is not None:
            callback(data)
            return
        queue = self._channels.get(name)
        if queue is None:
            return
        if data == b"s":
            table = self._scheduled
        elif data == b"d":
            table = self._resolved
        else:
            table = self._ready
        for s in table.get(queue, ()):
            s.fire()

    async def run(self, driver: Driver, *, task_status: TaskStatus[None]) -> None:
        """Listen until cancelled; re-subscribe after connection losses."""
        channels: Iterable[str] = sorted({*self._channels, *self._callbacks})
        if not channels:
            task_status.started()
            await anyio.sleep_forever()
        started = False
        delay = 0.1
        while True:
            try:
                async with driver.subscribe(*channels) as sub:
                    if not started:
                        task_status.started()
                        started = True
                    else:
                        # Messages may have been lost while disconnected: look again.
                        self._fire_all()
                    delay = 0.1
                    while True:
                        channel, data = await sub.get_message()
                        self._dispatch(channel, data)
            except RedisError as err:
                log.warning("wake subscription lost (%s); reconnecting in %.1fs", err, delay)
                if not started:
                    task_status.started()
                    started = True
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
