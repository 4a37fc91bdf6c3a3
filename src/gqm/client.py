"""The producer side: enqueue jobs, look them up, wait for results, pause queues."""

from __future__ import annotations

import ssl as _ssl
import time
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar, overload

import anyio
import msgspec

from . import _dag
from . import _scripts as scripts
from ._admin import AdminMixin
from ._cron_runtime import (
    HISTORY_KEEP,
    HistoryItem,
    StoredEntry,
    manual_job_id,
    redis_now_ms,
    stored_decoder,
    tick_after,
)
from ._job import (
    TERMINAL_STATES,
    Job,
    JobRecord,
    JobStatus,
    any_decoder,
    json_encoder,
    record_decoder,
    score_ms,
)
from ._keys import Keys, QueueKeys
from ._options import (
    build_record,
    encode_payload,
    encode_record,
    new_nonce,
    plain_record,
    seconds,
)
from ._redis import Arg, Command, Driver, RedisSettings, open_driver
from ._results import DoneListener
from .cron import CronSchedule
from .errors import (
    BatchTooLargeError,
    ConfigurationError,
    DependencyError,
    DuplicateJobError,
    JobFailedError,
    JobNotFoundError,
    NotFoundError,
    RedisConnectionError,
    SerializationError,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
    from types import TracebackType

    from anyio.abc import TaskGroup

    from ._dag import DagGraph
    from ._task import Task

P = TypeVar("P")
T = TypeVar("T")

#: The most jobs one ``enqueue_batch`` call takes (one pipeline).
MAX_BATCH = 1000
#: Retention of jobs canceled because a parent failed, when the client cancels them
#: itself (servers use their ``dead_ttl``): 30 days, as dead-letter jobs.
_DAG_CANCELED_TTL_MS = 30 * 86400 * 1000
#: How many times an enqueue whose connection was lost is sent again (see
#: ``Client._replaying``).
_ENQUEUE_REPLAYS = 2
_history_decoder = msgspec.json.Decoder(HistoryItem)


class BatchItem(Generic[P]):
    """One job of :meth:`Client.enqueue_batch`: a job type, its payload and options.

    Takes the keyword options of :meth:`Client.enqueue`, plus ``delay`` (seconds or a
    timedelta) to make it a delayed job.
    """

    __slots__ = ("delay", "job_type", "options", "payload")

    def __init__(
        self,
        job_type: Task[P] | str,
        payload: P | None = None,
        *,
        delay: float | timedelta | None = None,
        **options: Any,
    ) -> None:
        self.job_type = job_type
        self.payload = payload
        self.delay = seconds(delay, "delay")
        self.options = options


class Connection:
    """A driver and the key layout, opened lazily inside the running event loop.

    Shared by :class:`Client` and :class:`~gqm.Server`.
    """

    def __init__(self, redis: str | Any | None, prefix: str, settings: RedisSettings) -> None:
        self.keys = Keys(prefix)
        self._redis = redis
        self._settings = settings
        self._driver: Driver | None = None

    @property
    def is_open(self) -> bool:
        return self._driver is not None

    @property
    def settings(self) -> RedisSettings:
        return self._settings

    async def get(self) -> Driver:
        """The driver, opened on first use.

        On trio (coredis) the connection pool belongs to the task that opens it: open
        the client with ``async with`` in a task that outlives its use.
        """
        if self._driver is None:
            driver = open_driver(
                None if isinstance(self._redis, str) or self._redis is None else self._redis,
                self._settings,
            )
            await driver.open()
            self._driver = driver
        return self._driver

    @asynccontextmanager
    async def fresh(self) -> AsyncIterator[Driver]:
        """A new, private driver for the body of the ``async with`` (not an injected
        client's: that one cannot be cloned)."""
        if self._redis is not None and not isinstance(self._redis, str):
            raise ConfigurationError("cannot open a second connection from an injected client")
        driver = open_driver(None, self._settings)
        await driver.open()
        try:
            yield driver
        finally:
            await driver.aclose()

    async def aclose(self) -> None:
        if self._driver is not None:
            driver, self._driver = self._driver, None
            # Not inside a shielded scope: coredis closes a task group that was opened
            # outside it, and cancel scopes must nest.
            await driver.aclose()


def redis_settings(
    redis: str | Any | None,
    *,
    host: str,
    port: int,
    db: int | None,
    username: str | None,
    password: str | None,
    ssl: bool | _ssl.SSLContext,
    socket_timeout: float | None,
    max_connections: int | None = None,
    driver: str = "auto",
) -> RedisSettings:
    url = redis if isinstance(redis, str) else None
    return RedisSettings(
        url=url,
        host=host,
        port=port,
        db=db,
        username=username,
        password=password,
        ssl=bool(ssl),
        ssl_context=ssl if isinstance(ssl, _ssl.SSLContext) else None,
        socket_timeout=socket_timeout,
        max_connections=max_connections,
        driver=driver,
    )


class Client(AdminMixin):
    """Enqueue jobs and query them.

    ``redis`` is a URL (``redis://host:6379/0``, ``rediss://`` for TLS), an already built
    client (``redis.asyncio.Redis`` on asyncio, ``coredis.Redis`` on trio or asyncio;
    that is how Sentinel and custom setups come in) or ``None`` for the keyword settings.
    ``driver`` picks the Redis library: ``"auto"`` (``$GQM_DRIVER``, else ``"resp"``),
    ``"resp"`` (gqm's own thin driver on anyio streams and hiredis, the default: 1.5x less
    CPU per command than redis-py, 4x less than coredis), ``"redis-py"`` (asyncio only)
    or ``"coredis"``.
    The connection opens on first use; use the client as an async context manager (or
    call :meth:`aclose`) to release it::

        async with gqm.Client("redis://localhost:6379") as client:
            job = await client.enqueue("email.send", {"to": "a@x.com"})
    """

    def __init__(
        self,
        redis: str | Any | None = None,
        *,
        prefix: str = "gqm",
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int | None = None,
        username: str | None = None,
        password: str | None = None,
        ssl: bool | _ssl.SSLContext = False,
        socket_timeout: float | None = 10.0,
        max_connections: int | None = None,
        driver: str = "auto",
    ) -> None:
        settings = redis_settings(
            redis,
            host=host,
            port=port,
            db=db,
            username=username,
            password=password,
            ssl=ssl,
            socket_timeout=socket_timeout,
            max_connections=max_connections,
            driver=driver,
        )
        self._conn = Connection(redis, prefix, settings)
        self._known_queues: set[str] = set()
        self._stack: AsyncExitStack | None = None
        self._tasks: TaskGroup | None = None
        self._done_listener: DoneListener | None = None
        self._listener_lock = anyio.Lock()

    @classmethod
    def _sharing(cls, conn: Connection) -> Client:
        """A client over an already open connection (the server's own use)."""
        client = cls.__new__(cls)
        client._conn = conn
        client._known_queues = set()
        client._stack = None
        client._tasks = None
        client._done_listener = None
        client._listener_lock = anyio.Lock()
        return client

    @property
    def keys(self) -> Keys:
        return self._conn.keys

    async def _driver(self) -> Driver:
        return await self._conn.get()

    async def __aenter__(self) -> Self:
        await self._conn.get()
        stack = AsyncExitStack()
        # Background tasks (the shared result subscription) live in this task group,
        # entered and exited in the task that enters the client.
        self._tasks = await stack.enter_async_context(anyio.create_task_group())
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (an injected client is left open)."""
        stack, self._stack = self._stack, None
        if stack is not None and self._tasks is not None:
            self._tasks.cancel_scope.cancel()
            self._tasks = None
            self._done_listener = None
            await stack.aclose()
        await self._conn.aclose()

    # -- enqueue ---------------------------------------------------------------------

    @overload
    async def enqueue(
        self,
        task: Task[P],
        payload: P,
        *,
        queue: str | None = None,
        max_retry: int | None = None,
        timeout: float | timedelta | None = None,
        retry_intervals: Sequence[float] | None = None,
        job_id: str | None = None,
        meta: Mapping[str, str] | None = None,
        enqueued_by: str | None = None,
        at_front: bool = False,
        unique: bool = False,
        depends_on: Sequence[str] | None = None,
        allow_failure: bool = False,
    ) -> Job[P]: ...
    @overload
    async def enqueue(
        self,
        task: str,
        payload: Any = None,
        *,
        queue: str | None = None,
        max_retry: int | None = None,
        timeout: float | timedelta | None = None,
        retry_intervals: Sequence[float] | None = None,
        job_id: str | None = None,
        meta: Mapping[str, str] | None = None,
        enqueued_by: str | None = None,
        at_front: bool = False,
        unique: bool = False,
        depends_on: Sequence[str] | None = None,
        allow_failure: bool = False,
    ) -> Job[Any]: ...
    async def enqueue(
        self,
        task: Task[Any] | str,
        payload: Any = None,
        *,
        queue: str | None = None,
        max_retry: int | None = None,
        timeout: float | timedelta | None = None,
        retry_intervals: Sequence[float] | None = None,
        job_id: str | None = None,
        meta: Mapping[str, str] | None = None,
        enqueued_by: str | None = None,
        at_front: bool = False,
        unique: bool = False,
        depends_on: Sequence[str] | None = None,
        allow_failure: bool = False,
    ) -> Job[Any]:
        """Enqueue a job to run as soon as a worker is free.

        :param task: a :func:`gqm.task` handle (its payload type is checked) or a job type name.
        :param payload: the job's data; anything msgspec encodes to JSON (≤ 1 MiB encoded).
        :param queue: the queue (default ``"default"``).
        :param max_retry: retries after failures before the job goes to the dead-letter
            queue (default: the handler's or pool's policy, else 3).
        :param timeout: the job's run-time limit in seconds (default: pool, then global).
        :param retry_intervals: seconds to wait before each retry; the last one repeats.
        :param job_id: a custom id (default: a UUIDv7). While a job with this id is live,
            enqueueing the same id raises :class:`~gqm.DuplicateJobError`; once it has
            finished, the id can be used again.
        :param meta: string metadata kept with the job.
        :param enqueued_by: who enqueued the job (an audit trail).
        :param at_front: put the job at the head of the queue.
        :param unique: make ``job_id`` an idempotency key: the id stays taken until the
            job's finished record expires (its retention TTL), so a duplicate enqueue
            raises :class:`~gqm.DuplicateJobError` even after the job completed.
        :param depends_on: ids of jobs (on any queue) that must complete first; the job
            waits as ``deferred``. If a parent ends in the dead-letter queue or is
            canceled, this job is canceled too (and so are its own dependents)...
        :param allow_failure: ...unless this is set: then a failed parent counts as
            resolved, and the job runs once every parent has finished either way.
        :raises DuplicateJobError: the id is taken (see ``job_id`` and ``unique``).
        :raises DependencyError: a parent does not exist, or the edge would close a cycle.
        """
        rec = build_record(
            task,
            queue=queue,
            max_retry=max_retry,
            timeout=timeout,
            retry_intervals=retry_intervals,
            job_id=job_id,
            meta=meta,
            enqueued_by=enqueued_by,
            at_front=at_front,
            unique=unique,
        )
        if job_id is not None:
            await self._check_id_elsewhere([rec])
        if depends_on:
            return await self._enqueue_dependent(
                rec, payload, encode_payload(payload), depends_on, allow_failure
            )
        if allow_failure:
            raise ConfigurationError("allow_failure only applies together with depends_on")
        mode = "f" if at_front else "b"
        (job,) = await self._enqueue([(rec, payload, encode_payload(payload), mode, 0)])
        return job

    async def _enqueue_dependent(
        self,
        rec: JobRecord,
        payload: Any,
        data: bytes,
        depends_on: Sequence[str],
        allow_failure: bool,
    ) -> Job[Any]:
        parents = list(dict.fromkeys(depends_on))
        driver = await self._conn.get()
        records = await self._records(parents)
        unknown = [p for p in parents if p not in records]
        if unknown:
            raise DependencyError(f"unknown parent job(s): {', '.join(unknown)}")

        async def parents_of(job_id: str) -> Sequence[str]:
            found = records.get(job_id)
            if found is None:
                records.update(await self._records([job_id]))
                found = records.get(job_id)
            # Only a live job's edges can still matter: a finished parent is resolved.
            if found is None or found.status in TERMINAL_STATES:
                return ()
            return found.depends_on or ()

        cycle = await _dag.find_cycle(rec.id, parents, parents_of)
        if cycle is not None:
            raise DependencyError(f"dependency cycle: {' -> '.join(cycle)}")
        rec.depends_on = parents
        rec.pending = dict.fromkeys(parents, 1)
        rec.allow_failure = allow_failure
        rec.links = [(p, records[p].queue) for p in parents]
        (job,) = await self._enqueue([(rec, payload, data, "d", 0)])
        # The enqueue wrote the edges as link requests into the queue's outbox (so they
        # survive if we die now); apply them at once instead of waiting for a server.
        await _dag.drain_outboxes(
            driver, self.keys, [rec.queue], canceled_ttl_ms=_DAG_CANCELED_TTL_MS
        )
        stored = await driver.execute("HGET", self.keys.queue(rec.queue).jobs, rec.id)
        if stored is not None:
            job = Job._from_record(record_decoder.decode(stored), payload)
        return job

    async def enqueue_at(
        self, task: Task[P] | str, payload: P, when: datetime, **options: Any
    ) -> Job[P]:
        """Enqueue a job to become ready at ``when`` (an aware datetime; naive means UTC).

        Takes the keyword options of :meth:`enqueue`.
        """
        if not isinstance(when, datetime):
            raise ConfigurationError(f"when must be a datetime, got {when!r}")
        ts = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
        return await self._enqueue_later(task, payload, "a", int(ts * 1000), options)

    async def enqueue_in(
        self, task: Task[P] | str, payload: P, delay: float | timedelta, **options: Any
    ) -> Job[P]:
        """Enqueue a job to become ready after ``delay`` (seconds or a timedelta),
        measured on the Redis server's clock. Takes the options of :meth:`enqueue`."""
        delay_s = seconds(delay, "delay") or 0.0
        return await self._enqueue_later(task, payload, "i", int(delay_s * 1000), options)

    async def _enqueue_later(
        self, task: Task[Any] | str, payload: Any, mode: str, when: int, options: dict[str, Any]
    ) -> Job[Any]:
        rec = _record_from_options(task, options)
        if options.get("job_id") is not None:
            await self._check_id_elsewhere([rec])
        (job,) = await self._enqueue([(rec, payload, encode_payload(payload), mode, when)])
        return job

    async def enqueue_batch(self, items: Sequence[BatchItem[Any]]) -> list[Job[Any]]:
        """Enqueue up to 1000 jobs in one round trip (one script call per queue).

        Returns the jobs in the order given. Each item is checked before anything is sent;
        a duplicate id raises :class:`~gqm.DuplicateJobError` after the other jobs were
        enqueued (its ``job_id`` names the one that was refused). One id on two queues
        of the same batch raises :class:`~gqm.ConfigurationError` before anything is sent.
        """
        if len(items) > MAX_BATCH:
            raise BatchTooLargeError(
                f"enqueue_batch takes at most {MAX_BATCH} jobs per call, got {len(items)}: "
                "split the list into chunks"
            )
        entries = []
        for item in items:
            rec = _record_from_options(item.job_type, item.options)
            mode = "i" if item.delay else ("f" if rec.at_front else "b")
            when = int((item.delay or 0) * 1000)
            entries.append((rec, item.payload, encode_payload(item.payload), mode, when))
        # Each queue's enqueue script sees only its own queue, and the id lookup only jobs
        # that exist already: the same id on two queues of one batch would make two live
        # jobs with one id.
        queue_of: dict[str, str] = {}
        for rec, *_rest in entries:
            if queue_of.setdefault(rec.id, rec.queue) != rec.queue:
                raise ConfigurationError(
                    f"job id {rec.id!r} is given on two queues ({queue_of[rec.id]!r} and "
                    f"{rec.queue!r}) in one batch"
                )
        await self._check_id_elsewhere(
            [e[0] for e, item in zip(entries, items, strict=True) if "job_id" in item.options]
        )
        return await self._enqueue(entries)

    async def _check_id_elsewhere(self, records: Sequence[JobRecord]) -> None:
        """Refuse a custom id that a job on *another* queue holds (the enqueue script
        checks its own queue): live there, or retained there for a unique job."""
        if not records:
            return
        found = await self._records([r.id for r in records])
        for r in records:
            other = found.get(r.id)
            if other is None or other.queue == r.queue:
                continue  # no job, or on the same queue: the enqueue script decides
            if r.unique or other.status not in TERMINAL_STATES:
                raise DuplicateJobError(r.id, other.status)

    async def _records(self, ids: Sequence[str]) -> dict[str, JobRecord]:
        """The stored records of ``ids`` (looked up through the id index; ids without
        a record are left out), in two pipelined round trips."""
        driver = await self._conn.get()
        queues = await driver.pipeline([["HGET", self.keys.ids, i] for i in ids])
        indexed = [(i, q.decode()) for i, q in zip(ids, queues, strict=True) if q is not None]
        if not indexed:
            return {}
        raws = await driver.pipeline([["HGET", self.keys.queue(q).jobs, i] for i, q in indexed])
        return {
            i: record_decoder.decode(raw)
            for (i, _q), raw in zip(indexed, raws, strict=True)
            if raw is not None
        }

    async def _enqueue(
        self, entries: Sequence[tuple[JobRecord, Any, bytes, str, int]]
    ) -> list[Job[Any]]:
        if not entries:
            return []
        keys = self.keys
        by_queue: dict[str, list[int]] = {}
        for i, (rec, *_rest) in enumerate(entries):
            by_queue.setdefault(rec.queue, []).append(i)
        calls: list[tuple[scripts.Script, Sequence[str], Sequence[Arg]]] = []
        order: list[list[int]] = []
        enqueue = scripts.script("enqueue")
        for name, idxs in by_queue.items():
            q = keys.queue(name)
            args: list[Arg] = [q.wake]
            for i in idxs:
                rec, _payload, data, mode, when = entries[i]
                args += [rec.id, encode_record(rec), data, mode, when, new_nonce()]
            calls.append((enqueue, scripts.enqueue_keys(q), args))
            order.append(idxs)
        driver = await self._conn.get()
        # The id index and the queue registry live outside the queue's slot; they go in
        # the same round trip (an index entry without its job is harmless).
        index: list[Arg] = ["HSET", keys.ids]
        for rec, *_rest in entries:
            index += [rec.id, rec.queue]
        extra: list[Command] = [index]
        new_queues = [name for name in by_queue if name not in self._known_queues]
        if new_queues:
            extra.append(["SADD", keys.queues, *new_queues])
        replies = await self._replaying(lambda: scripts.run_many(driver, calls, extra=extra))
        # Registered once per client and queue: the set only ever grows.
        self._known_queues.update(new_queues)
        jobs: list[Job[Any] | None] = [None] * len(entries)
        duplicate: DuplicateJobError | None = None
        for idxs, reply in zip(order, replies, strict=True):
            for i, (code, status) in zip(idxs, reply, strict=True):
                rec, payload, *_ = entries[i]
                st = status.decode() if isinstance(status, bytes) else str(status)
                if code == -1:
                    duplicate = duplicate or DuplicateJobError(rec.id, st)
                    continue
                jobs[i] = Job._enqueued(_with_status(rec, st), payload)
        if duplicate is not None:
            raise duplicate
        return [j for j in jobs if j is not None]

    async def _replaying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run an enqueue call, sending the very same call again if its connection was
        lost: Redis may have applied it and only the reply was lost, and the script
        recognises a replay by the call's nonces, so the jobs are not created twice.

        Only quick failures are replayed (a reset, a closed connection), at most
        ``_ENQUEUE_REPLAYS`` times: a call that used up the socket timeout (Redis does
        not answer) is reported at once, so that the caller hears of it within that
        timeout.
        """
        timeout = self._conn.settings.socket_timeout
        # Wall time, as the socket timeout is (and cheaper than asking the event loop).
        started = time.monotonic()
        for _ in range(_ENQUEUE_REPLAYS):
            try:
                return await call()
            except RedisConnectionError:
                if timeout is not None and time.monotonic() - started >= timeout / 2:
                    raise
        return await call()

    # -- queries ---------------------------------------------------------------------

    async def _queue_of(self, job_id: str) -> QueueKeys:
        name = await (await self._conn.get()).execute("HGET", self.keys.ids, job_id)
        if name is None:
            raise JobNotFoundError(f"no job with id {job_id!r}")
        return self.keys.queue(name.decode())

    async def get_job(self, job_id: str) -> Job[Any]:
        """Return the job with this id; the payload and result are decoded as JSON.

        A processing job has its ``lease_deadline`` set.
        """
        q = await self._queue_of(job_id)
        raw, payload, result, lease = await (await self._conn.get()).pipeline(
            [
                ["HGET", q.jobs, job_id],
                ["HGET", q.payloads, job_id],
                ["HGET", q.results, job_id],
                ["ZSCORE", q.leases, job_id],
            ]
        )
        if raw is None:
            raise JobNotFoundError(f"no job with id {job_id!r} (its record may have expired)")
        rec = record_decoder.decode(raw)
        return Job._from_record(
            rec,
            any_decoder.decode(payload) if payload else None,
            any_decoder.decode(result) if result else None,
            lease_deadline_ms=score_ms(lease),
        )

    async def result(self, job_id: str, *, timeout: float | None = None) -> Any:
        """Wait until the job finishes and return its handler's return value.

        Waits on a notification published by the finishing script, not by polling.
        Inside ``async with Client(...)`` all waits share one subscription; otherwise
        each call opens its own.

        :raises JobFailedError: the job ended in the dead-letter queue or was canceled.
        :raises TimeoutError: ``timeout`` seconds passed first.
        :raises JobNotFoundError: there is no such job.
        """
        q = await self._queue_of(job_id)
        driver = await self._conn.get()
        watch = scripts.script("watch")
        with anyio.fail_after(timeout):
            listener = await self._listener()
            if listener is None:
                async with driver.subscribe(self.keys.done_channel) as sub:
                    while True:
                        reply = await scripts.run(driver, watch, scripts.watch_keys(q), [job_id])
                        if len(reply) != 1:
                            return _outcome(job_id, reply)
                        while (await sub.get_message())[1] != job_id.encode():
                            pass
            while True:
                event = listener.register(job_id)
                try:
                    reply = await scripts.run(driver, watch, scripts.watch_keys(q), [job_id])
                    if len(reply) != 1:
                        return _outcome(job_id, reply)
                    await event.wait()
                finally:
                    listener.unregister(job_id, event)

    async def _listener(self) -> DoneListener | None:
        if self._tasks is None:
            return None
        async with self._listener_lock:
            if self._done_listener is None:
                listener = DoneListener(self.keys.done_channel)
                await self._tasks.start(listener.run, await self._conn.get())
                self._done_listener = listener
        return self._done_listener

    async def abort(self, job_id: str, *, reason: str = "aborted by request") -> str:
        """Stop a job. A waiting job (ready, scheduled, deferred, retry) is canceled at
        once; a running one has its cancel scope cancelled by whichever server runs it,
        and ends as ``stopped``. Its dependents are canceled as for a failure.

        Returns ``"canceled"``, ``"signalled"`` (running: its server stops it), or the
        terminal status the job already had.
        """
        q = await self._queue_of(job_id)
        reply = await scripts.run(
            await self._conn.get(),
            scripts.script("abort"),
            scripts.abort_keys(q),
            [
                job_id,
                reason,
                _DAG_CANCELED_TTL_MS,
                self.keys.abort_channel,
                self.keys.done_channel,
                q.wake,
            ],
        )
        status: str = reply.decode()
        if status == "missing":
            raise JobNotFoundError(f"no job with id {job_id!r}")
        return status

    # -- dependencies ------------------------------------------------------------------

    async def dag_deferred(
        self, queue: str | None = None, *, offset: int = 0, limit: int = 100
    ) -> list[Job[Any]]:
        """Jobs waiting for their parents (oldest first); ``Job.pending`` names the
        parents still awaited. Without ``queue``, every queue's (in name order)."""
        driver = await self._conn.get()
        if queue is not None:
            names = [queue]
        else:
            names = sorted(n.decode() for n in await driver.execute("SMEMBERS", self.keys.queues))
        found: list[Job[Any]] = []
        skip = offset
        for name in names:
            q = self.keys.queue(name)
            ids = await driver.execute("ZRANGE", q.deferred, 0, -1)
            if skip >= len(ids):
                skip -= len(ids)
                continue
            ids = ids[skip : skip + limit - len(found)]
            skip = 0
            raws = await driver.pipeline([["HGET", q.jobs, i] for i in ids])
            found += [Job._from_record(record_decoder.decode(r), None) for r in raws if r]
            if len(found) >= limit:
                break
        return found

    async def dag_deferred_count(self, queue: str | None = None) -> int:
        """How many jobs wait for their parents: in ``queue``, or in every queue (the
        total that :meth:`dag_deferred` pages through)."""
        driver = await self._conn.get()
        if queue is not None:
            return int(await driver.execute("ZCARD", self.keys.queue(queue).deferred))
        names = [n.decode() for n in await driver.execute("SMEMBERS", self.keys.queues)]
        if not names:
            return 0
        counts = await driver.pipeline([["ZCARD", self.keys.queue(n).deferred] for n in names])
        return sum(int(c) for c in counts)

    async def dag_graph(self, job_id: str, *, depth: int = 3, max_nodes: int = 200) -> DagGraph:
        """The jobs around ``job_id`` (parents and children, ``depth`` steps, at most
        ``max_nodes``); see :class:`~gqm._dag.DagGraph`."""
        await self._queue_of(job_id)
        return await _dag.read_graph(
            await self._conn.get(), self.keys, job_id, depth=depth, max_nodes=max_nodes
        )

    async def dag_roots(self, *, limit: int = 100) -> list[Job[Any]]:
        """Jobs that have dependents but no parents of their own (the tops of graphs)."""
        driver = await self._conn.get()
        names = sorted(n.decode() for n in await driver.execute("SMEMBERS", self.keys.queues))
        roots: list[Job[Any]] = []
        for name in names:
            q = self.keys.queue(name)
            parents = await driver.execute("HKEYS", q.dependents)
            raws = await driver.pipeline([["HGET", q.jobs, p] for p in parents])
            for raw in raws:
                if raw is None:
                    continue
                rec = record_decoder.decode(raw)
                if not rec.depends_on:
                    roots.append(Job._from_record(rec, None))
                    if len(roots) >= limit:
                        return roots
        return roots

    # -- cron --------------------------------------------------------------------------

    async def cron_entries(self) -> list[StoredEntry]:
        """Every cron entry registered in Redis, with its enabled state."""
        driver = await self._conn.get()
        raws = await driver.execute("HVALS", self.keys.cron_entries)
        return sorted((stored_decoder.decode(raw) for raw in raws), key=lambda e: e.id)

    async def cron_entry(self, entry_id: str) -> StoredEntry:
        """The cron entry registered in Redis under ``entry_id``, with its enabled state.

        :raises NotFoundError: there is no such entry.
        """
        raw = await (await self._conn.get()).execute("HGET", self.keys.cron_entries, entry_id)
        if raw is None:
            raise NotFoundError(f"no cron entry {entry_id!r}")
        return stored_decoder.decode(raw)

    async def cron_next_run(self, entry_id: str) -> datetime | None:
        """When the entry fires next (None while disabled)."""
        score = await (await self._conn.get()).execute("ZSCORE", self.keys.cron_next, entry_id)
        return None if score is None else datetime.fromtimestamp(float(score) / 1000, UTC)

    async def cron_last_run(self, entry_id: str) -> datetime | None:
        """The tick of the entry's latest fire that made a job (None if it never did)."""
        tick = await (await self._conn.get()).execute("HGET", self.keys.cron_fired, entry_id)
        return None if tick is None else datetime.fromtimestamp(int(tick) / 1000, UTC)

    async def cron_history(self, entry_id: str, *, limit: int = 100) -> list[HistoryItem]:
        """The entry's latest fires, newest first."""
        raws = await (await self._conn.get()).execute(
            "ZREVRANGE", self.keys.cron_history(entry_id), 0, max(limit, 1) - 1
        )
        return [_history_decoder.decode(raw) for raw in raws]

    async def cron_enable(self, entry_id: str) -> None:
        """Enable a cron entry on every server (its next tick counts from now)."""
        await self._cron_toggle(entry_id, enable=True)

    async def cron_disable(self, entry_id: str) -> None:
        """Disable a cron entry on every server."""
        await self._cron_toggle(entry_id, enable=False)

    async def _cron_toggle(self, entry_id: str, *, enable: bool) -> None:
        driver = await self._conn.get()
        next_tick = -1
        if enable:
            raw = await driver.execute("HGET", self.keys.cron_entries, entry_id)
            if raw is None:
                raise JobNotFoundError(f"no cron entry {entry_id!r}")
            entry = stored_decoder.decode(raw)
            schedule = CronSchedule.parse(entry.cron_expr, entry.timezone)
            next_tick = tick_after(schedule, await redis_now_ms(driver))
        found = await scripts.run(
            driver,
            scripts.script("cron_toggle"),
            [self.keys.cron_entries, self.keys.cron_next],
            [entry_id, "1" if enable else "0", next_tick],
        )
        if not found:
            raise JobNotFoundError(f"no cron entry {entry_id!r}")
        await driver.execute("PUBLISH", self.keys.cron_wake, entry_id)

    async def cron_delete(self, entry_id: str) -> bool:
        """Remove a cron entry from Redis, for every server (an entry dropped from the
        code is not removed by itself: servers fire every entry stored). Returns False if
        there was no such entry. A server that still registers it re-creates it."""
        driver = await self._conn.get()
        removed, *_ = await driver.pipeline(
            [
                ["HDEL", self.keys.cron_entries, entry_id],
                ["ZREM", self.keys.cron_next, entry_id],
                ["HDEL", self.keys.cron_fired, entry_id],
                ["DEL", self.keys.cron_history(entry_id)],
            ]
        )
        await driver.execute("PUBLISH", self.keys.cron_wake, entry_id)
        return bool(removed)

    async def cron_trigger(self, entry_id: str) -> Job[Any]:
        """Enqueue the entry's job now, outside its schedule (and its overlap policy)."""
        driver = await self._conn.get()
        raw = await driver.execute("HGET", self.keys.cron_entries, entry_id)
        if raw is None:
            raise JobNotFoundError(f"no cron entry {entry_id!r}")
        entry = stored_decoder.decode(raw)
        job = await self.enqueue(
            entry.job_type, entry.payload, queue=entry.queue, job_id=manual_job_id(entry_id)
        )
        now = await redis_now_ms(driver)
        member = json_encoder.encode(
            HistoryItem(job_id=job.id, tick=now, fired_at=now, outcome="triggered")
        )
        await driver.pipeline(
            [
                ["ZADD", self.keys.cron_history(entry_id), now, member],
                ["ZREMRANGEBYRANK", self.keys.cron_history(entry_id), 0, -(HISTORY_KEEP + 1)],
            ]
        )
        return job

    # -- queue control -----------------------------------------------------------------

    async def pause(self, queue: str) -> bool:
        """Stop handing out the queue's jobs (enqueueing still works). Returns False if
        it was already paused."""
        return await self._set_paused(queue, True)

    async def resume(self, queue: str) -> bool:
        """Resume a paused queue. Returns False if it was not paused."""
        return await self._set_paused(queue, False)

    async def _set_paused(self, queue: str, paused: bool) -> bool:
        q = self.keys.queue(queue)
        changed = await scripts.run(
            await self._conn.get(),
            scripts.script("pause"),
            scripts.pause_keys(q),
            ["1" if paused else "0", q.wake],
        )
        return bool(changed)

    async def is_paused(self, queue: str) -> bool:
        """Whether the queue is paused."""
        q = self.keys.queue(queue)
        flag: bytes | None = await (await self._conn.get()).execute("HGET", q.meta, "paused")
        return flag == b"1"

    async def ping(self) -> float:
        """Check that Redis answers and runs gqm's scripts; returns the round trip in
        seconds. Raises :class:`RedisError` when it does not."""
        started = time.perf_counter()
        await scripts.run(await self._conn.get(), scripts.script("ping"), [], [])
        return time.perf_counter() - started


#: The keyword options of ``enqueue`` that ``enqueue_at``/``enqueue_in`` and
#: ``BatchItem`` pass through.
_ENQUEUE_OPTIONS = frozenset(
    {
        "queue",
        "max_retry",
        "timeout",
        "retry_intervals",
        "job_id",
        "meta",
        "enqueued_by",
        "at_front",
        "unique",
    }
)


def _record_from_options(task: Task[Any] | str, options: dict[str, Any]) -> JobRecord:
    if not options:
        return plain_record(task)
    if not options.keys() <= _ENQUEUE_OPTIONS:
        unknown = sorted(set(options) - _ENQUEUE_OPTIONS)
        raise ConfigurationError(f"unknown enqueue option(s): {', '.join(unknown)}")
    return build_record(
        task,
        queue=options.get("queue"),
        max_retry=options.get("max_retry"),
        timeout=options.get("timeout"),
        retry_intervals=options.get("retry_intervals"),
        job_id=options.get("job_id"),
        meta=options.get("meta"),
        enqueued_by=options.get("enqueued_by"),
        at_front=bool(options.get("at_front", False)),
        unique=bool(options.get("unique", False)),
    )


def _with_status(rec: JobRecord, status: str) -> JobRecord:
    rec.status = status
    return rec


def _outcome(job_id: str, reply: list[Any]) -> Any:
    if not reply:
        raise JobNotFoundError(f"no job with id {job_id!r}")
    status = reply[0].decode()
    error = reply[1].decode() if reply[1] else None
    if status != JobStatus.COMPLETED:
        raise JobFailedError(job_id, status, error)
    raw = reply[2] if len(reply) > 2 else None
    if not raw:
        return None
    try:
        return any_decoder.decode(raw)
    except Exception as err:  # pragma: no cover - results are written by gqm itself
        raise SerializationError(f"result of job {job_id!r} is not valid JSON: {err}") from err
