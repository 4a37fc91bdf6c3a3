"""Queue inspection and admin operations (the CLI and the HTTP API build on these).

Mixed into :class:`~gqm.Client`; every method is a public client method.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import msgspec

from . import _scripts as scripts
from ._job import Job, JobStatus, record_decoder, score_ms
from .errors import ConfigurationError, JobNotFoundError, NotFoundError, RedisReplyError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._keys import Keys, QueueKeys
    from ._redis import Command, Driver

#: Most jobs one bulk admin call (retry all, clear, empty) handles.
ADMIN_BATCH = 1000
#: Retention of jobs canceled by an admin call (as dead-letter jobs): 30 days.
_CANCELED_TTL_MS = 30 * 86400 * 1000


class QueueInfo(msgspec.Struct, kw_only=True):
    """Sizes of a queue per state, its totals, and whether it is paused."""

    name: str
    ready: int
    scheduled: int
    processing: int
    deferred: int
    completed: int
    dead_letter: int
    canceled: int
    processed_total: int
    failed_total: int
    paused: bool


class Totals(msgspec.Struct, kw_only=True):
    """Sizes and totals summed over every queue, and the live servers and workers.

    ``queues`` counts the queues, ``paused`` the paused ones; ``servers`` counts the
    live servers and ``workers`` sums the concurrency of their pools.
    """

    queues: int
    ready: int
    scheduled: int
    processing: int
    deferred: int
    completed: int
    dead_letter: int
    canceled: int
    processed_total: int
    failed_total: int
    paused: int
    servers: int
    workers: int


class PoolStatus(msgspec.Struct, kw_only=True):
    """One pool of a live server, as its heartbeat reports it."""

    name: str
    queues: list[str] = msgspec.field(default_factory=list)
    concurrency: int = 0
    #: Jobs the pool is running right now.
    active: int = 0
    #: The dequeue strategy (``strict``, ``round_robin`` or ``weighted``).
    strategy: str = ""


class ServerInfo(msgspec.Struct, kw_only=True):
    """A live server, from its heartbeat (times are unix seconds)."""

    id: str
    host: str = ""
    pid: int = 0
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    inflight: int = 0
    processed: int = 0
    failed: int = 0
    pools: list[PoolStatus] = msgspec.field(default_factory=list)


class PoolInfo(msgspec.Struct, kw_only=True):
    """One pool of workers of a live server.

    ``id`` is ``"<server id>:<pool name>"``; ``heartbeat_at`` (unix seconds) is when
    its server last reported it.
    """

    id: str
    name: str
    server_id: str
    queues: list[str]
    concurrency: int
    active: int
    strategy: str
    heartbeat_at: float


_server_decoder = msgspec.json.Decoder(ServerInfo)


def _pools_of(server: ServerInfo) -> list[PoolInfo]:
    return [
        PoolInfo(
            id=f"{server.id}:{p.name}",
            name=p.name,
            server_id=server.id,
            queues=list(p.queues),
            concurrency=p.concurrency,
            active=p.active,
            strategy=p.strategy,
            heartbeat_at=server.heartbeat_at,
        )
        for p in server.pools
    ]


def _size_commands(q: QueueKeys) -> list[Command]:
    """The commands whose replies :func:`_queue_info` reads, in its order."""
    return [
        ["LLEN", q.ready],
        ["ZCARD", q.scheduled],
        ["ZCARD", q.leases],
        ["ZCARD", q.deferred],
        ["ZCARD", q.completed],
        ["ZCARD", q.dead],
        ["ZCARD", q.canceled],
        ["HMGET", q.meta, "processed", "failed", "paused"],
    ]


#: How many replies one queue's :func:`_size_commands` give.
_SIZE_REPLIES = 8


def _queue_info(name: str, replies: Sequence[Any]) -> QueueInfo:
    """The QueueInfo of the replies to :func:`_size_commands`."""
    ready, scheduled, processing, deferred, completed, dead, canceled, meta = replies
    processed, failed, paused = meta
    return QueueInfo(
        name=name,
        ready=ready,
        scheduled=scheduled,
        processing=processing,
        deferred=deferred,
        completed=completed,
        dead_letter=dead,
        canceled=canceled,
        processed_total=int(processed or 0),
        failed_total=int(failed or 0),
        paused=paused == b"1",
    )


#: Where each listable status lives: (key attribute, kind, newest first).
_INDEX = {
    JobStatus.READY: ("ready", "list"),
    JobStatus.SCHEDULED: ("scheduled", "zset"),
    JobStatus.RETRY: ("scheduled", "zset"),
    JobStatus.PROCESSING: ("leases", "zset"),
    JobStatus.DEFERRED: ("deferred", "zset"),
    JobStatus.COMPLETED: ("completed", "zset-desc"),
    JobStatus.DEAD_LETTER: ("dead", "zset-desc"),
    JobStatus.CANCELED: ("canceled", "zset-desc"),
    JobStatus.STOPPED: ("canceled", "zset-desc"),
}


class AdminMixin:
    """Read models and admin operations; see the methods."""

    if TYPE_CHECKING:

        @property
        def keys(self) -> Keys: ...

        async def _driver(self) -> Driver: ...

        async def _queue_of(self, job_id: str) -> QueueKeys: ...

    async def queue_names(self) -> list[str]:
        """Every queue that ever received a job or was served."""
        driver = await self._driver()
        return sorted(n.decode() for n in await driver.execute("SMEMBERS", self.keys.queues))

    async def queues(self) -> list[QueueInfo]:
        """Every queue's sizes and totals, in name order (one pipeline for all)."""
        names = await self.queue_names()
        if not names:
            return []
        driver = await self._driver()
        commands: list[Command] = []
        for name in names:
            commands += _size_commands(self.keys.queue(name))
        replies = await driver.pipeline(commands)
        return [
            _queue_info(name, replies[i * _SIZE_REPLIES : (i + 1) * _SIZE_REPLIES])
            for i, name in enumerate(names)
        ]

    async def queue_info(self, name: str) -> QueueInfo:
        """One queue's sizes and totals.

        :raises NotFoundError: no queue of that name ever received a job or was served.
        """
        driver = await self._driver()
        known, *replies = await driver.pipeline(
            [["SISMEMBER", self.keys.queues, name], *_size_commands(self.keys.queue(name))]
        )
        if not known:
            raise NotFoundError(f"no queue named {name!r}")
        return _queue_info(name, replies)

    async def stats(self) -> Totals:
        """Sizes and totals summed over every queue, with the number of live servers
        and of their workers (the sum of their pools' concurrency)."""
        infos = await self.queues()
        servers = await self.servers()
        return Totals(
            queues=len(infos),
            ready=sum(i.ready for i in infos),
            scheduled=sum(i.scheduled for i in infos),
            processing=sum(i.processing for i in infos),
            deferred=sum(i.deferred for i in infos),
            completed=sum(i.completed for i in infos),
            dead_letter=sum(i.dead_letter for i in infos),
            canceled=sum(i.canceled for i in infos),
            processed_total=sum(i.processed_total for i in infos),
            failed_total=sum(i.failed_total for i in infos),
            paused=sum(i.paused for i in infos),
            servers=len(servers),
            workers=sum(p.concurrency for s in servers for p in s.pools),
        )

    async def list_jobs(
        self, queue: str, status: JobStatus | str, *, offset: int = 0, limit: int = 100
    ) -> tuple[list[Job[Any]], int]:
        """A page of a queue's jobs in one state, and how many there are in all.

        Ready jobs come in the order they will run; finished ones newest first.
        Payloads are not loaded (``payload`` is None): use :meth:`get_job` for one job.
        ``scheduled`` and ``retry`` share one index, as do ``canceled`` and ``stopped``:
        for those the page holds only the state asked for, and ``total`` counts both.
        """
        try:
            wanted = JobStatus(status)
        except ValueError:
            raise ConfigurationError(
                f"unknown status {status!r}: use one of {', '.join(s.value for s in _INDEX)}"
            ) from None
        if wanted not in _INDEX:
            raise ConfigurationError(f"jobs cannot be listed by status {wanted.value!r}")
        if offset < 0 or limit < 1:
            raise ConfigurationError("offset must be >= 0 and limit >= 1")
        attr, kind = _INDEX[wanted]
        q = self.keys.queue(queue)
        key = getattr(q, attr)
        driver = await self._driver()
        if kind == "list":
            total = await driver.execute("LLEN", key)
            # The head of the queue is the right end of the list.
            ids = await driver.execute("LRANGE", key, -(offset + limit), -(offset + 1))
            ids = list(reversed(ids))
        else:
            total = await driver.execute("ZCARD", key)
            command = "ZREVRANGE" if kind == "zset-desc" else "ZRANGE"
            ids = await driver.execute(command, key, offset, offset + limit - 1)
        if attr == "leases":
            # Each job's score in ``leases`` is its lease deadline (Redis ms).
            commands: list[Command] = []
            for i in ids:
                commands += [["HGET", q.jobs, i], ["ZSCORE", q.leases, i]]
            replies = await driver.pipeline(commands) if ids else []
            pairs = list(zip(replies[::2], replies[1::2], strict=True))
        else:
            raws = await driver.pipeline([["HGET", q.jobs, i] for i in ids]) if ids else []
            pairs = [(r, None) for r in raws]
        jobs = [
            Job._from_record(record_decoder.decode(r), None, lease_deadline_ms=score_ms(score))
            for r, score in pairs
            if r is not None
        ]
        if attr in ("scheduled", "canceled"):
            # These indexes hold two states each.
            jobs = [j for j in jobs if j.status is wanted]
        return jobs, int(total)

    async def retry(self, *job_ids: str) -> dict[str, bool]:
        """Requeue dead-letter, canceled or stopped jobs as fresh jobs (counters reset).
        Returns, per id, whether it was requeued."""
        driver = await self._driver()
        result: dict[str, bool] = {}
        for job_id in dict.fromkeys(job_ids):
            try:
                q = await self._queue_of(job_id)
            except JobNotFoundError:
                result[job_id] = False
                continue
            (done,) = await scripts.run(
                driver, scripts.script("admin_retry"), scripts.admin_retry_keys(q), [q.wake, job_id]
            )
            result[job_id] = bool(done)
        return result

    async def retry_dead(self, queue: str, *, limit: int = ADMIN_BATCH) -> int:
        """Requeue up to ``limit`` of a queue's dead-letter jobs (oldest first)."""
        driver = await self._driver()
        q = self.keys.queue(queue)
        ids = await driver.execute("ZRANGE", q.dead, 0, min(limit, ADMIN_BATCH) - 1)
        if not ids:
            return 0
        done = await scripts.run(
            driver, scripts.script("admin_retry"), scripts.admin_retry_keys(q), [q.wake, *ids]
        )
        return sum(done)

    async def delete(self, *job_ids: str) -> dict[str, str]:
        """Delete jobs. Per id: ``deleted``, ``not_found`` or ``processing`` (refused:
        abort a running job first)."""
        driver = await self._driver()
        outcome = {1: "deleted", -1: "not_found", -2: "processing"}
        result: dict[str, str] = {}
        for job_id in dict.fromkeys(job_ids):
            try:
                q = await self._queue_of(job_id)
            except JobNotFoundError:
                result[job_id] = "not_found"
                continue
            (code,) = await scripts.run(
                driver,
                scripts.script("admin_delete"),
                scripts.admin_delete_keys(q),
                [q.wake, job_id],
            )
            result[job_id] = outcome[int(code)]
            if code == 1:
                await scripts.forget_ids(driver, self.keys, {q.name: [job_id]})
        return result

    async def clear_dead(self, queue: str, *, limit: int = ADMIN_BATCH) -> int:
        """Delete up to ``limit`` of a queue's dead-letter jobs (oldest first)."""
        driver = await self._driver()
        q = self.keys.queue(queue)
        ids = await driver.execute("ZRANGE", q.dead, 0, min(limit, ADMIN_BATCH) - 1)
        if not ids:
            return 0
        codes = await scripts.run(
            driver, scripts.script("admin_delete"), scripts.admin_delete_keys(q), [q.wake, *ids]
        )
        gone = [i for i, c in zip(ids, codes, strict=True) if c == 1]
        await scripts.forget_ids(driver, self.keys, {q.name: gone})
        return len(gone)

    async def empty(self, queue: str, *, limit: int = ADMIN_BATCH) -> int:
        """Cancel up to ``limit`` of a queue's ready jobs (oldest first); their
        dependents are canceled too. Returns how many were canceled."""
        driver = await self._driver()
        q = self.keys.queue(queue)
        count = await scripts.run(
            driver,
            scripts.script("empty"),
            scripts.empty_keys(q),
            [min(limit, ADMIN_BATCH), _CANCELED_TTL_MS, self.keys.done_channel, q.wake],
        )
        return int(count)

    async def daily_stats(self, queue: str, *, days: int = 7) -> list[tuple[str, int, int]]:
        """``(date, processed, failed)`` per UTC day, oldest first, the last ``days`` days."""
        import datetime as dt

        if not 1 <= days <= 90:
            raise ConfigurationError("days must be between 1 and 90")
        driver = await self._driver()
        seconds, _micros = await driver.execute("TIME")
        today = int(seconds) // 86400
        fields = []
        for day in range(today - days + 1, today + 1):
            fields += [f"processed:{day}", f"failed:{day}"]
        values = await driver.execute("HMGET", self.keys.queue(queue).meta, *fields)
        out = []
        for n, day in enumerate(range(today - days + 1, today + 1)):
            date = (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()
            out.append((date, int(values[2 * n] or 0), int(values[2 * n + 1] or 0)))
        return out

    async def servers(self) -> list[ServerInfo]:
        """Live servers (those whose heartbeat has not expired).

        A server that died without deregistering (SIGKILL, a crash) leaves its id in
        the registry; once its heartbeat has expired the id is dropped here, so the
        registry does not grow with every crash (a live server re-adds itself at its
        next heartbeat)."""
        driver = await self._driver()
        ids = await driver.execute("ZRANGE", self.keys.servers, 0, -1)
        if not ids:
            return []
        raws = await driver.pipeline([["GET", self.keys.server(i.decode())] for i in ids])
        dead = [i for i, r in zip(ids, raws, strict=True) if r is None]
        if dead:
            with contextlib.suppress(RedisReplyError):  # a read-only replica: leave them
                await driver.execute("ZREM", self.keys.servers, *dead)
        return [_server_decoder.decode(r) for r in raws if r is not None]

    async def server(self, server_id: str) -> ServerInfo:
        """One live server, from its heartbeat.

        :raises NotFoundError: no live server has that id (it never ran, stopped, or
            its heartbeat expired).
        """
        driver = await self._driver()
        raw = await driver.execute("GET", self.keys.server(server_id))
        if raw is None:
            raise NotFoundError(f"no live server {server_id!r}")
        return _server_decoder.decode(raw)

    async def workers(self) -> list[PoolInfo]:
        """Every pool of every live server, sorted by id (``"<server id>:<pool name>"``)."""
        return sorted(
            (pool for server in await self.servers() for pool in _pools_of(server)),
            key=lambda p: p.id,
        )

    async def worker(self, worker_id: str) -> PoolInfo:
        """One pool of a live server, by its id ``"<server id>:<pool name>"``.

        :raises NotFoundError: no live server has a pool of that id.
        """
        # Pool names may hold ":" (``handler:email``), so the id is matched whole.
        for pool in await self.workers():
            if pool.id == worker_id:
                return pool
        raise NotFoundError(f"no live pool {worker_id!r}")
