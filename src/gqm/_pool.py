"""A worker pool: one fetcher feeding N workers through a bounded stream.

The fetcher claims as many jobs as there are free workers, in one script call per queue,
in the order the dequeue strategy gives. With nothing to claim it sleeps on the wake
signal of its queues (published by Redis when work arrives), not on a polling timer.
"""

from __future__ import annotations

import enum
import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from . import _scripts as scripts
from ._finish import Finisher, FinishOp
from ._keys import Keys, QueueKeys, check_queue_name
from ._redis import with_fallback
from ._runner import Claimed, PoolSettings, Runner, forget
from ._wake import Signal, WakeHub
from .errors import ConfigurationError, RedisError
from .retry import RetryPolicy

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from anyio.abc import TaskStatus
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from ._redis import Driver

log = logging.getLogger("gqm.pool")

#: Claim at most this many jobs per script call.
MAX_CLAIM = 100
#: The longest a claim call may take before it is given up (and retried as a replay).
_CLAIM_TIMEOUT = 15.0
#: How long shutdown waits to hand unfinished jobs back before leaving them to the reaper.
HANDBACK_TIMEOUT = 5.0


class DequeueStrategy(enum.StrEnum):
    """How a pool that reads several queues picks the next one.

    * ``strict``: always the first non-empty queue in priority order;
    * ``round_robin``: each claim starts at the next queue in turn;
    * ``weighted``: the first queue is drawn at random with weights n, n-1, ..., 1 by
      priority, so higher queues get more turns but lower ones never starve.
    """

    STRICT = "strict"
    ROUND_ROBIN = "round_robin"
    WEIGHTED = "weighted"


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """An explicit worker pool (layer 3 of the progressive disclosure).

    :param name: unique among the server's pools.
    :param job_types: the job types whose handlers run here, or ``["*"]`` for every type
        no other pool claims.
    :param queues: the queues read, highest priority first.
    :param concurrency: the number of jobs run at once (0 means the number of CPUs).
    :param job_timeout: seconds; used when the job sets none (then the global default).
    :param dequeue_strategy: ``strict``, ``round_robin`` or ``weighted``.
    :param retry_policy: retries for jobs run here that set none themselves.
    :param prefetch: jobs claimed ahead of free workers, so that claims come in batches
        (default: as many as ``concurrency``). Prefetched jobs are leased like running
        ones and handed back at shutdown.
    """

    name: str
    job_types: Sequence[str] = ("*",)
    queues: Sequence[str] = ("default",)
    concurrency: int = 10
    job_timeout: float | None = None
    dequeue_strategy: DequeueStrategy | str = DequeueStrategy.WEIGHTED
    retry_policy: RetryPolicy | None = None
    prefetch: int | None = None
    _implicit: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigurationError("a pool needs a name")
        if not self.job_types:
            raise ConfigurationError(f"pool {self.name!r}: job_types must not be empty")
        if "*" in self.job_types and len(self.job_types) > 1:
            raise ConfigurationError(f"pool {self.name!r}: '*' must be the only job type")
        if not self.queues:
            raise ConfigurationError(f"pool {self.name!r}: queues must not be empty")
        for q in self.queues:
            check_queue_name(q)
        if len(set(self.queues)) != len(self.queues):
            raise ConfigurationError(f"pool {self.name!r}: a queue is listed twice")
        if self.concurrency < 0:
            raise ConfigurationError(f"pool {self.name!r}: concurrency must be >= 0")
        if self.concurrency == 0:
            object.__setattr__(self, "concurrency", os.cpu_count() or 1)
        if self.prefetch is not None and self.prefetch < 0:
            raise ConfigurationError(f"pool {self.name!r}: prefetch must be >= 0")
        if self.job_timeout is not None and self.job_timeout <= 0:
            raise ConfigurationError(f"pool {self.name!r}: job_timeout must be > 0")
        try:
            object.__setattr__(self, "dequeue_strategy", DequeueStrategy(self.dequeue_strategy))
        except ValueError:
            raise ConfigurationError(
                f"pool {self.name!r}: dequeue_strategy must be strict, round_robin or weighted"
            ) from None
        object.__setattr__(self, "job_types", tuple(self.job_types))
        object.__setattr__(self, "queues", tuple(self.queues))


class Pool:
    """The running form of a :class:`PoolConfig`."""

    def __init__(
        self,
        config: PoolConfig,
        *,
        driver: Driver,
        keys: Keys,
        runner: Runner,
        finisher: Finisher,
        inflight: dict[str, Claimed],
        hub: WakeHub,
        worker_id: str,
        lease_ms: int,
        idle_wait: float,
        progress: Signal,
        fresh_driver: Callable[[], AbstractAsyncContextManager[Driver]],
    ) -> None:
        self.config = config
        self._driver = driver
        self._runner = runner
        self._finisher = finisher
        self._inflight = inflight
        self._worker_id = worker_id
        self._lease_ms = lease_ms
        self._idle_wait = idle_wait
        self._progress = progress
        self._fresh_driver = fresh_driver
        self._queues: list[QueueKeys] = [keys.queue(q) for q in config.queues]
        self._settings = PoolSettings(config.name, config.job_timeout, config.retry_policy)
        prefetch = config.concurrency if config.prefetch is None else config.prefetch
        self._free = config.concurrency + prefetch
        self._slot = Signal()
        self._work = Signal()
        self._turn = 0
        self._claims = 0
        # Tokens must be unique across pools, processes and restarts with a fixed id.
        self._token_base = f"{worker_id}:{os.urandom(4).hex()}"
        self._retry_attempts: dict[str, str] = {}
        self.stopping = False
        self.active = 0
        for q in self._queues:
            hub.on_ready(q, self._work)

    def stop(self) -> None:
        """Stop claiming; unstarted jobs are handed back when the pool exits."""
        self.stopping = True
        self._work.fire()
        self._slot.fire()

    def _queue_order(self) -> list[QueueKeys]:
        qs = self._queues
        if len(qs) == 1 or self.config.dequeue_strategy is DequeueStrategy.STRICT:
            return qs
        if self.config.dequeue_strategy is DequeueStrategy.ROUND_ROBIN:
            self._turn = (self._turn + 1) % len(qs)
            return qs[self._turn :] + qs[: self._turn]
        n = len(qs)
        first = random.choices(range(n), weights=range(n, 0, -1))[0]
        return [qs[first], *qs[:first], *qs[first + 1 :]]

    async def _claim(self, want: int) -> tuple[list[Claimed], bool]:
        """Claim up to ``want`` jobs across the queues in strategy order.

        Returns the claims and whether a queue could not be reached (then the fetcher
        backs off). Each attempt has an id, kept for a retry after a failure, so that a
        claim whose reply was lost is replayed rather than stranded.
        """
        got: list[Claimed] = []
        failed = False
        for q in self._queue_order():
            claimed = await self._claim_queue(q, want - len(got))
            if claimed is None:
                failed = True
                continue
            got += claimed
            if len(got) >= want:
                break
        return got, failed

    async def _claim_queue(self, q: QueueKeys, want: int) -> list[Claimed] | None:
        attempt = self._retry_attempts.pop(q.name, None)
        if attempt is None:
            self._claims += 1
            attempt = f"{self._token_base}:{self._claims}"
        reply = None
        # Shielded (and bounded): once sent, a claim's reply must be read and registered,
        # even if the server is being cancelled, so that its jobs are handed back.
        with anyio.move_on_after(_CLAIM_TIMEOUT, shield=True):
            try:
                reply = await scripts.run(
                    self._driver,
                    scripts.script("claim"),
                    scripts.claim_keys(q, attempt),
                    [want, self._lease_ms, self._worker_id, attempt],
                )
            except RedisError as err:
                log.warning("pool %s: claim on %s failed (%s)", self.config.name, q.name, err)
        if reply is None:
            self._retry_attempts[q.name] = attempt
            return None
        claimed = []
        for i in range(0, len(reply), 4):
            job_id = reply[i].decode()
            token = reply[i + 1].decode()
            stale = self._inflight.get(job_id)
            if stale is not None and stale.token == token:
                continue  # a replayed attempt: already registered
            c = Claimed(q.name, job_id, reply[i + 2], reply[i + 3], token, self.config.name)
            if stale is not None:
                # We claimed a job we are still running: our lease on it was lost
                # (reaped after a stall). The old run must stop; the new claim owns it.
                stale.stop("lease lost (the job was re-claimed)")
            self._inflight[job_id] = c
            claimed.append(c)
        return claimed

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the fetcher and workers until stopped or cancelled."""
        send, recv = anyio.create_memory_object_stream[Claimed](self._free)
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(self.config.concurrency):
                    tg.start_soon(self._worker, recv.clone())
                recv.close()
                tg.start_soon(self._fetcher, send)
                task_status.started()
        finally:
            await self._hand_back()

    async def _fetcher(self, send: MemoryObjectSendStream[Claimed]) -> None:
        delay = 0.05
        async with send:
            while not self.stopping:
                if self._free <= 0:
                    slot = self._slot.current()
                    if self._free <= 0 and not self.stopping:
                        await slot.wait()
                    continue
                work = self._work.current()
                claimed, failed = await self._claim(min(self._free, MAX_CLAIM))
                if failed and not claimed:
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                delay = 0.05
                if not claimed:
                    with anyio.move_on_after(self._idle_wait):
                        await work.wait()
                    continue
                self._free -= len(claimed)
                for c in claimed:
                    await send.send(c)

    async def _worker(self, recv: MemoryObjectReceiveStream[Claimed]) -> None:
        async with recv:
            async for c in recv:
                try:
                    if c.aborted:
                        await self._runner.stopped(c)  # aborted before it started
                        continue
                    if c.stop_reason is not None:
                        forget(self._inflight, c)  # lost before it started
                        continue
                    if self.stopping:
                        continue  # left in the registry: handed back when the pool exits
                    self.active += 1
                    try:
                        await self._runner.run(c, self._settings)
                    finally:
                        self.active -= 1
                except Exception as err:
                    # A bug of ours, not the handler's: record it so that the job does not
                    # sit in processing with a lease renewed for ever.
                    log.exception(
                        "pool %s: unexpected error running job %s", self.config.name, c.job_id
                    )
                    if c.outcome is None:
                        await self._runner.bury(c, f"internal error while running the job: {err!r}")
                finally:
                    self._free += 1
                    self._slot.fire()
                    self._progress.fire()

    async def _hand_back(self) -> None:
        """Give every job this pool claimed but did not finish back to its queue, now,
        so that no lease is left to expire (shielded and time-bounded)."""
        mine = [
            c
            for c in self._inflight.values()
            if c.pool == self.config.name and (c.stop_reason is None or c.aborted)
        ]
        if not mine:
            return
        # A job whose outcome is already on its way keeps it (writing it twice is harmless:
        # the second write is recognised as a replay); the others are handed back.
        ops = [c.outcome or FinishOp(c.queue, c.job_id, c.token, "h") for c in mine]
        with anyio.move_on_after(HANDBACK_TIMEOUT, shield=True):
            try:
                await with_fallback(
                    self._driver,
                    self._fresh_driver,
                    lambda d: self._finisher.write(ops, retry=False, driver=d),
                )
            except Exception as err:
                log.warning(
                    "pool %s: hand-back of %d jobs failed (%s); the reaper will recover them",
                    self.config.name,
                    len(ops),
                    err,
                )
                return
            for c in mine:
                forget(self._inflight, c)
            log.info("pool %s: handed back %d unfinished jobs", self.config.name, len(ops))
