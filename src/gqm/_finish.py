"""Recording outcomes: one task batches the finish calls of every worker.

Workers hand their outcome (completed, retry, dead, hand back) to the :class:`Finisher`
and wait for it to be written. The finisher takes everything that is waiting, groups it
by queue and sends one ``finish`` script call per queue, all in one round trip: under load
many acknowledgements share a round trip, and an idle worker still gets its answer after
one. Connection errors are retried (the script is safe to replay: a repeated call is
recognised by its claim token).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import anyio

from . import _scripts as scripts
from .errors import RedisError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from anyio.abc import TaskStatus

    from ._keys import Keys
    from ._redis import Arg, Driver

log = logging.getLogger("gqm.finish")

#: Outcome codes of the finish script.
REFUSED, DONE, REPLAYED = 0, 1, 2
_MAX_BATCH = 500


class FinishOp:
    """One job's outcome on its way to Redis."""

    __slots__ = ("after", "code", "data", "done", "job_id", "n1", "n2", "outcome", "queue", "token")

    def __init__(
        self,
        queue: str,
        job_id: str,
        token: str,
        outcome: str,
        data: bytes | str = b"",
        n1: int = 0,
        n2: int = 0,
    ) -> None:
        self.queue = queue
        self.job_id = job_id
        self.token = token
        self.outcome = outcome
        self.data = data
        self.n1 = n1
        self.n2 = n2
        #: Set once written; made only for a submitter that waits (most do not, and an
        #: event per job is a measurable share of the hot path).
        self.done: anyio.Event | None = None
        self.code = REFUSED
        #: Called once the outcome is written (with the op, its code set).
        self.after: Callable[[FinishOp], None] | None = None


class Finisher:
    """Batches :class:`FinishOp` s into pipelined ``finish`` script calls."""

    def __init__(
        self, driver: Driver, keys: Keys, *, completed_ttl_ms: int, dead_ttl_ms: int
    ) -> None:
        self._driver = driver
        self._keys = keys
        self._ttls: list[Arg] = [completed_ttl_ms, dead_ttl_ms, keys.done_channel]
        self._send, self._recv = anyio.create_memory_object_stream[FinishOp](math.inf)

    async def submit(self, op: FinishOp) -> int:
        """Queue ``op`` and wait until it is written; returns its finish code."""
        op.done = done = anyio.Event()
        self._send.send_nowait(op)
        await done.wait()
        return op.code

    def submit_nowait(self, op: FinishOp) -> None:
        """Queue ``op`` without waiting (``op.after`` runs once it is written)."""
        self._send.send_nowait(op)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with self._recv, self._send:
            async for op in self._recv:
                batch = [op]
                while len(batch) < _MAX_BATCH:
                    try:
                        batch.append(self._recv.receive_nowait())
                    except anyio.WouldBlock:
                        break
                await self.write(batch, retry=True)

    async def write(
        self, batch: Sequence[FinishOp], *, retry: bool, driver: Driver | None = None
    ) -> None:
        """Write ``batch`` now; with ``retry``, keep trying through connection errors.

        ``driver`` overrides the shared one (for hand-backs after cancellation).
        """
        by_queue: dict[str, list[FinishOp]] = {}
        for op in batch:
            by_queue.setdefault(op.queue, []).append(op)
        finish = scripts.script("finish")
        calls = []
        groups = []
        for name, ops in by_queue.items():
            q = self._keys.queue(name)
            args: list[Arg] = [*self._ttls, q.wake]
            for op in ops:
                args += [op.job_id, op.token, op.outcome, op.data, op.n1, op.n2]
            calls.append((finish, scripts.finish_keys(q), args))
            groups.append(ops)
        delay = 0.05
        while True:
            try:
                replies = await scripts.run_many(driver or self._driver, calls)
                break
            except RedisError as err:
                # Connection losses, and error replies such as READONLY during a
                # failover: keep trying rather than kill the server.
                if not retry:
                    raise
                log.warning(
                    "recording %d outcomes failed (%s); retrying in %.2fs", len(batch), err, delay
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
        swept: dict[str, list[Any]] = {}
        for name, ops, (codes, gone, _fanned) in zip(by_queue, groups, replies, strict=True):
            for op, code in zip(ops, codes, strict=True):
                op.code = int(code)
                if op.done is not None:
                    op.done.set()
                if op.after is not None:
                    op.after(op)
            swept[name] = gone
        try:
            # Records whose retention ended: drop them from the id index too.
            await scripts.forget_ids(driver or self._driver, self._keys, swept)
        except RedisError as err:
            log.warning("could not trim the id index (%s); stale entries are harmless", err)
