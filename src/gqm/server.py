"""The worker side: the composition root that runs pools, leases and the scheduler.

::

    server = gqm.Server("redis://localhost:6379")

    @server.handler(send_email, workers=5)
    async def deliver(job: gqm.Job[Email]) -> None: ...

    anyio.run(server.serve)                    # or anyio.run(server.serve, backend="trio")

``serve`` opens one task group that holds the wake subscription, the finisher (batched
acknowledgements), the lease renewer, the reaper, the promoter, the heartbeat and one task
group per pool. SIGINT/SIGTERM or :meth:`Server.shutdown` drain gracefully: pools stop
claiming, running jobs get ``grace_period`` seconds, then they are cancelled and handed
back at once. Cancelling the caller's scope skips the grace period and hands back at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

import anyio
import msgspec

from . import _scripts as scripts
from ._cron_runtime import CronEntry, cron_forever
from ._cron_runtime import register as register_cron
from ._dag import resolve_forever
from ._finish import Finisher
from ._job import uuid7
from ._keys import check_queue_name
from ._lease import reap_forever, renew_forever
from ._options import DEFAULT_QUEUE, seconds
from ._pool import Pool, PoolConfig
from ._redis import with_fallback
from ._runner import (
    Claimed,
    CompleteCallback,
    FailureCallback,
    Handler,
    HandlerSpec,
    IsFailure,
    Middleware,
    Runner,
    SuccessCallback,
)
from ._scheduler import promote_forever
from ._task import Task, check_job_type
from ._wake import Signal, WakeHub
from .client import Client, Connection, redis_settings
from .errors import ConfigurationError, RedisError, RedisReplyError, ServerStateError

if TYPE_CHECKING:
    import ssl as _ssl
    from collections.abc import Callable

    from anyio.abc import TaskGroup, TaskStatus

    from ._keys import QueueKeys
    from ._redis import Command, Driver
    from .config import GqmConfig
    from .retry import RetryPolicy

log = logging.getLogger("gqm.server")

H = TypeVar("H", bound=Handler)

#: The global job timeout: always enforced, cannot be disabled.
DEFAULT_GLOBAL_TIMEOUT = 30 * 60.0
DAY = 86400.0
_HEARTBEAT_INTERVAL = 5.0


def _web_settings(api: str | Any | None) -> Any:
    """The API settings of ``Server(api=...)``; gqm_web is imported only when asked for."""
    if api is None:
        return None
    try:
        import gqm_web
    except ImportError as err:
        raise ConfigurationError(
            f"the HTTP API needs the web extra: pip install 'gqm[web]' ({err})"
        ) from None
    if isinstance(api, str):
        return gqm_web.WebSettings(addr=api)
    if not isinstance(api, gqm_web.WebSettings):
        raise ConfigurationError("api must be an address such as '127.0.0.1:8080' or WebSettings")
    return api


def _ttl_ms(value: float | timedelta, what: str) -> int:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if value == -1:
        return -1
    if value < 0:
        raise ConfigurationError(f"{what} must be >= 0 seconds, or -1 to keep for ever")
    return int(value * 1000)


class Server:
    """Runs handlers for jobs. See the module docstring for the anatomy.

    :param redis: a URL, an injected client, or ``None`` for the keyword settings (as
        :class:`~gqm.Client`).
    :param concurrency: workers of the default pool (for handlers without their own).
    :param lease_ttl: seconds a claim stays valid without renewal; the renewer extends it
        every ``lease_ttl / 3``. A crashed worker's jobs run again after at most
        ``lease_ttl + reap_interval``.
    :param reap_interval: how often expired leases are looked for (default ``lease_ttl / 3``).
    :param max_recoveries: lease expiries a job survives before it goes to the DLQ as a
        poison pill.
    :param grace_period: seconds running jobs get to finish after a shutdown request.
    :param global_timeout: the run-time limit of jobs that set none (job > handler >
        pool > this); it cannot be disabled.
    :param completed_ttl: seconds a completed job's record is kept (-1 forever, 0 not at all).
    :param dead_ttl: the same for dead-letter jobs.
    :param poll_interval: the longest a promoter or idle fetcher sleeps without a wake-up
        from Redis (a safety net; wake-ups come from Redis at once).
    :param retry: the default retry policy of jobs and pools that set none.
    :param handle_signals: install SIGINT/SIGTERM handlers while serving (main thread only).
    :param scheduler: run the cron scheduler on this server (every entry in Redis, not
        only the ones this server registered; one fire per tick across all servers).
    :param misfire_grace: seconds a cron tick may be late and still fire; later ticks
        are skipped (see :class:`CronEntry`).
    :param eviction_check: what to do at start when Redis may evict keys (a
        ``maxmemory-policy`` other than ``noeviction`` silently loses jobs under memory
        pressure): ``"warn"`` (log a warning), ``"refuse"`` (raise) or ``"off"``.
    :param api: serve the HTTP API (``gqm[web]``) inside this server: an address such as
        ``"127.0.0.1:8080"`` (no authentication, so loopback only) or a
        ``gqm_web.WebSettings``. It starts before the pools and stops after them,
        letting in-flight requests finish. :attr:`api_address` is the bound address.
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
        concurrency: int = 10,
        lease_ttl: float = 30.0,
        reap_interval: float | None = None,
        max_recoveries: int = 3,
        grace_period: float = 10.0,
        global_timeout: float | timedelta = DEFAULT_GLOBAL_TIMEOUT,
        completed_ttl: float | timedelta = 7 * DAY,
        dead_ttl: float | timedelta = 30 * DAY,
        poll_interval: float = 5.0,
        retry: RetryPolicy | None = None,
        server_id: str | None = None,
        handle_signals: bool = True,
        scheduler: bool = True,
        misfire_grace: float = 60.0,
        eviction_check: str = "warn",
        api: str | Any | None = None,
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
        if concurrency < 0:
            raise ConfigurationError("concurrency must be >= 0 (0 means the number of CPUs)")
        self.concurrency = concurrency or os.cpu_count() or 1
        if lease_ttl < 1:
            raise ConfigurationError("lease_ttl must be at least 1 second")
        self.lease_ttl = float(lease_ttl)
        self.reap_interval = (
            float(reap_interval) if reap_interval is not None else self.lease_ttl / 3
        )
        if self.reap_interval <= 0:
            raise ConfigurationError("reap_interval must be > 0")
        if max_recoveries < 0:
            raise ConfigurationError("max_recoveries must be >= 0")
        self.max_recoveries = max_recoveries
        self.grace_period = seconds(grace_period, "grace_period") or 0.0
        timeout = seconds(global_timeout, "global_timeout")
        if not timeout:
            raise ConfigurationError(
                "global_timeout must be > 0: the global timeout cannot be disabled"
            )
        self.global_timeout = timeout
        self.completed_ttl_ms = _ttl_ms(completed_ttl, "completed_ttl")
        self.dead_ttl_ms = _ttl_ms(dead_ttl, "dead_ttl")
        if poll_interval <= 0:
            raise ConfigurationError("poll_interval must be > 0")
        self.poll_interval = float(poll_interval)
        self.retry = retry
        self.server_id = server_id or f"{socket.gethostname()}-{os.getpid()}-{uuid7()[-6:]}"
        self.handle_signals = handle_signals
        self.scheduler = scheduler
        if misfire_grace <= 0:
            raise ConfigurationError(
                "misfire_grace must be > 0 seconds (a fire always runs a little after its tick)"
            )
        self.misfire_grace = float(misfire_grace)
        self._cron: dict[str, CronEntry] = {}
        if eviction_check not in ("warn", "refuse", "off"):
            raise ConfigurationError("eviction_check must be 'warn', 'refuse' or 'off'")
        self.eviction_check = eviction_check
        self._api_settings = _web_settings(api)
        #: The ``(host, port)`` the API listens on while serving (None without the API).
        self.api_address: tuple[str, int] | None = None
        self._handlers: dict[str, HandlerSpec] = {}
        self._pool_configs: list[PoolConfig] = []
        self._middleware: list[Middleware] = []
        self._started = False
        self._stop: anyio.Event | None = None
        self._pools: list[Pool] = []
        self._inflight: dict[str, Claimed] = {}
        self._runner: Runner | None = None
        self._progress = Signal()
        self._pools_scope: anyio.CancelScope | None = None
        #: The queues this server serves (re-registered by every heartbeat).
        self._queue_names: list[str] = []
        #: Whether Redis holds this server's cron entries (the heartbeat retries if not).
        self._cron_registered = False

    @classmethod
    def from_config(cls, config: GqmConfig, **overrides: Any) -> Server:
        """Build a server from a loaded config file (layer 4). Keywords given here
        override the file: code always wins. Handlers are registered afterwards::

            server = gqm.Server.from_config(gqm.load_config_file("gqm.yaml"), scheduler=False)
            server.handle("email.send", send_email)
        """
        from .config import server_options

        options = server_options(config)
        server = cls(**{**options.kwargs, **overrides})
        for pool in options.pools:
            server.pool(pool)
        for entry in options.cron:
            server.schedule(entry)
        return server

    # -- registration ------------------------------------------------------------------

    def handle(
        self,
        task: Task[Any] | str,
        fn: Handler,
        *,
        workers: int | None = None,
        queue: str | None = None,
        timeout: float | timedelta | None = None,
        max_retry: int | None = None,
        retry: RetryPolicy | None = None,
        is_failure: IsFailure | None = None,
        on_success: SuccessCallback | None = None,
        on_failure: FailureCallback | None = None,
        on_complete: CompleteCallback | None = None,
    ) -> None:
        """Register ``fn`` as the handler of a job type.

        :param task: a :func:`gqm.task` handle (payloads are decoded to its type) or a name
            (payloads are decoded as JSON: dicts, lists, ...).
        :param fn: ``async def fn(job: gqm.Job[P]) -> R``; ``R`` is stored as the result.
        :param workers: give the handler a dedicated pool of this many workers, reading
            ``queue`` (else the task's queue, else ``"default"``).
        :param timeout: seconds, used when the job sets none.
        :param max_retry: retries when the job sets none.
        :param retry: the retry policy (delays) of this handler's jobs.
        :param is_failure: ``is_failure(err) is False`` marks a transient error: the job is
            retried without counting toward ``max_retry``.
        :param on_success: ``(job, result)``, after the completion is recorded.
        :param on_failure: ``(job, error)``, after each failed attempt is recorded.
        :param on_complete: ``(job, error or None)``, after either.

        Callbacks may be plain or async functions; their exceptions are logged and ignored.
        """
        self._check_not_started("handle")
        name = task.name if isinstance(task, Task) else check_job_type(task)
        if name in self._handlers:
            raise ConfigurationError(f"a handler for {name!r} is already registered")
        if not callable(fn):
            raise ConfigurationError(f"the handler of {name!r} is not callable")
        if workers is not None and workers < 1:
            raise ConfigurationError("workers must be >= 1")
        if queue is not None:
            check_queue_name(queue)
        timeout_s = seconds(timeout, "timeout")
        if timeout_s is not None and timeout_s <= 0:
            raise ConfigurationError("timeout must be > 0")
        if max_retry is not None and max_retry < 0:
            raise ConfigurationError("max_retry must be >= 0")
        self._handlers[name] = HandlerSpec(
            job_type=name,
            fn=fn,
            task=task if isinstance(task, Task) else None,
            workers=workers,
            queue=queue or (task.queue if isinstance(task, Task) else None),
            timeout=timeout_s,
            max_retry=max_retry,
            retry=retry,
            is_failure=is_failure,
            on_success=on_success,
            on_failure=on_failure,
            on_complete=on_complete,
        )

    @overload
    def handler(self, task: Task[Any] | str) -> Callable[[H], H]: ...
    @overload
    def handler(self, task: Task[Any] | str, **options: Any) -> Callable[[H], H]: ...
    def handler(self, task: Task[Any] | str, **options: Any) -> Callable[[H], H]:
        """Decorator form of :meth:`handle`: ``@server.handler(send_email, workers=5)``."""

        def register(fn: H) -> H:
            self.handle(task, fn, **options)
            return fn

        return register

    def pool(self, config: PoolConfig) -> None:
        """Add an explicit worker pool (see :class:`PoolConfig`)."""
        self._check_not_started("pool")
        if any(p.name == config.name for p in self._pool_configs):
            raise ConfigurationError(f"a pool named {config.name!r} already exists")
        if "*" in config.job_types and any("*" in p.job_types for p in self._pool_configs):
            raise ConfigurationError("only one pool may have the catch-all job type '*'")
        for p in self._pool_configs:
            both = set(p.job_types) & set(config.job_types) - {"*"}
            if both:
                raise ConfigurationError(
                    f"job type(s) {', '.join(sorted(both))} already belong to pool {p.name!r}"
                )
        self._pool_configs.append(config)

    def schedule(self, entry: CronEntry) -> None:
        """Register a cron entry (its definition is stored in Redis when serving starts)."""
        self._check_not_started("schedule")
        if entry.id in self._cron:
            raise ConfigurationError(f"a cron entry {entry.id!r} is already scheduled")
        self._cron[entry.id] = entry

    def use(self, middleware: Middleware) -> None:
        """Wrap every handler in ``middleware`` (``handler -> handler``).

        The first registered is the outermost (a -> b -> handler -> b -> a).
        """
        self._check_not_started("use")
        if middleware is None or not callable(middleware):
            raise ConfigurationError("middleware must be a callable taking and returning a handler")
        self._middleware.append(middleware)

    def _check_not_started(self, what: str) -> None:
        if self._started:
            raise ServerStateError(f"{what}() must be called before the server starts")

    # -- planning ----------------------------------------------------------------------

    def _plan_pools(self) -> list[PoolConfig]:
        """The explicit pools, plus a dedicated pool per ``workers=N`` handler and a
        default pool for the remaining handlers."""
        configs = list(self._pool_configs)
        claimed_types = {t for p in configs for t in p.job_types}
        catch_all = any("*" in p.job_types for p in configs)
        default_queues: list[str] = []
        for spec in self._handlers.values():
            if spec.job_type in claimed_types:
                if spec.workers is not None:
                    raise ConfigurationError(
                        f"handler {spec.job_type!r} sets workers= but belongs to an explicit pool"
                    )
                continue
            queue = spec.queue or DEFAULT_QUEUE
            if spec.workers is not None:
                configs.append(
                    PoolConfig(
                        name=f"handler:{spec.job_type}",
                        job_types=(spec.job_type,),
                        queues=(queue,),
                        concurrency=spec.workers,
                        job_timeout=spec.timeout,
                        retry_policy=spec.retry or self.retry,
                        _implicit=True,
                    )
                )
            elif not catch_all and queue not in default_queues:
                default_queues.append(queue)
        if default_queues:
            configs.append(
                PoolConfig(
                    name="default",
                    queues=tuple(default_queues),
                    concurrency=self.concurrency,
                    retry_policy=self.retry,
                    _implicit=True,
                )
            )
        if not configs and not (self.scheduler and self._cron):
            raise ConfigurationError("nothing to serve: register a handler, a pool or a cron entry")
        return configs

    def _wrap_handlers(self) -> None:
        for spec in self._handlers.values():
            wrapped: Handler = spec.fn
            for mw in reversed(self._middleware):
                wrapped = mw(wrapped)
            spec.wrapped = wrapped

    # -- running -----------------------------------------------------------------------

    def shutdown(self) -> None:
        """Start a graceful shutdown (from any task of the serving event loop)."""
        if self._stop is not None:
            self._stop.set()

    @property
    def inflight(self) -> int:
        """The number of jobs claimed and not yet finished."""
        return len(self._inflight)

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Process jobs until :meth:`shutdown`, a signal, or cancellation.

        ``task_status.started()`` is called once the scripts are loaded and every pool
        is running (use ``await task_group.start(server.serve)``).
        """
        if self._started:
            raise ServerStateError("a Server can serve only once; create a new one")
        self._started = True
        configs = self._plan_pools()
        self._wrap_handlers()
        self._stop = anyio.Event()
        conn = self._conn
        keys = conn.keys
        try:
            driver = await conn.get()
            await self._check_eviction(driver)
            await scripts.load_all(driver)
            finisher = Finisher(
                driver, keys, completed_ttl_ms=self.completed_ttl_ms, dead_ttl_ms=self.dead_ttl_ms
            )
            runner = self._runner = Runner(
                handlers=self._handlers,
                finisher=finisher,
                inflight=self._inflight,
                global_timeout=self.global_timeout,
            )
            hub = WakeHub()
            lease_ms = int(self.lease_ttl * 1000)
            self._pools = [
                Pool(
                    cfg,
                    driver=driver,
                    keys=keys,
                    runner=runner,
                    finisher=finisher,
                    inflight=self._inflight,
                    hub=hub,
                    worker_id=self.server_id,
                    lease_ms=lease_ms,
                    idle_wait=self.poll_interval,
                    progress=self._progress,
                    fresh_driver=conn.fresh,
                )
                for cfg in configs
            ]
            queues = [keys.queue(n) for n in dict.fromkeys(q for c in configs for q in c.queues)]
            promote_signal = Signal()
            resolve_signal = Signal()
            for q in queues:
                hub.on_scheduled(q, promote_signal)
                hub.on_outbox(q, resolve_signal)
            if queues:
                try:
                    await driver.execute("SADD", keys.queues, *(q.name for q in queues))
                except RedisReplyError as err:
                    # Redis refuses writes (OOM, say): the registry is for listing queues
                    # only, and the heartbeat writes it again; serving must not wait.
                    log.warning("could not register the queues (%s); will retry", err)
            self._cron_registered = await self._register_cron(driver)
            cron_signal = Signal()
            hub.on_message(keys.abort_channel, self._on_abort)
            hub.on_message(keys.cron_wake, lambda _data: cron_signal.fire())
            async with anyio.create_task_group() as infra:
                await infra.start(hub.run, driver)
                await infra.start(finisher.run)
                self._start_background(
                    infra,
                    driver,
                    queues,
                    lease_ms=lease_ms,
                    promote_signal=promote_signal,
                    resolve_signal=resolve_signal,
                    cron_signal=cron_signal,
                )
                if self.handle_signals:
                    await infra.start(self._watch_signals)
                api_stop = anyio.Event()
                api_done = anyio.Event()
                if self._api_settings is not None:
                    self.api_address = await infra.start(self._serve_api, api_stop, api_done)
                async with anyio.create_task_group() as pools:
                    self._pools_scope = pools.cancel_scope
                    for pool in self._pools:
                        await pools.start(pool.run)
                    log.info(
                        "server %s serving %d pool(s) on queues %s",
                        self.server_id,
                        len(self._pools),
                        ", ".join(q.name for q in queues),
                    )
                    task_status.started()
                    await self._stop.wait()
                    log.info(
                        "server %s shutting down: %d job(s) running",
                        self.server_id,
                        len(self._inflight),
                    )
                    for pool in self._pools:
                        pool.stop()
                    with anyio.move_on_after(self.grace_period):
                        while any(p.active for p in self._pools):
                            await self._progress.current().wait()
                    pools.cancel_scope.cancel()
                if self._api_settings is not None:
                    api_stop.set()
                    with anyio.move_on_after(self._api_settings.graceful_timeout + 1):
                        await api_done.wait()
                infra.cancel_scope.cancel()
        finally:
            self.api_address = None
            if conn.is_open:
                await self._deregister()
            await conn.aclose()
            log.info("server %s stopped", self.server_id)

    async def _serve_api(
        self,
        stop: anyio.Event,
        done: anyio.Event,
        *,
        task_status: TaskStatus[tuple[str, int]],
    ) -> None:
        import gqm_web

        app = gqm_web.create_app(Client._sharing(self._conn), self._api_settings)
        try:
            await gqm_web.serve_app(
                app, self._api_settings, shutdown_trigger=stop.wait, task_status=task_status
            )
        finally:
            done.set()

    def _start_background(
        self,
        infra: TaskGroup,
        driver: Driver,
        queues: list[QueueKeys],
        *,
        lease_ms: int,
        promote_signal: Signal,
        resolve_signal: Signal,
        cron_signal: Signal,
    ) -> None:
        """Start the server-wide tasks: lease renewal, reaper, promoter, dependency
        resolver, heartbeat and (if enabled) the cron scheduler."""
        conn = self._conn
        keys = conn.keys
        infra.start_soon(
            lambda: renew_forever(
                driver, keys, self._inflight, lease_ms=lease_ms, interval=self.lease_ttl / 3
            )
        )
        infra.start_soon(
            lambda: reap_forever(
                driver,
                queues,
                interval=self.reap_interval,
                max_recoveries=self.max_recoveries,
                dead_ttl_ms=self.dead_ttl_ms,
                completed_ttl_ms=self.completed_ttl_ms,
                done_channel=keys.done_channel,
                keys=keys,
            )
        )
        infra.start_soon(
            lambda: promote_forever(
                driver, queues, promote_signal, poll_interval=self.poll_interval
            )
        )
        infra.start_soon(
            lambda: resolve_forever(
                driver,
                keys,
                resolve_signal,
                poll_interval=self.poll_interval,
                canceled_ttl_ms=self.dead_ttl_ms,
            )
        )
        self._queue_names = [q.name for q in queues]
        infra.start_soon(self._heartbeat, driver)
        if self.scheduler:
            infra.start_soon(
                lambda: cron_forever(
                    Client._sharing(conn),
                    keys,
                    cron_signal,
                    poll_interval=self.poll_interval,
                    misfire_grace=self.misfire_grace,
                )
            )

    async def _check_eviction(self, driver: Driver) -> None:
        """Warn about (or refuse) a Redis that may evict keys: evicted job records are
        lost jobs, with no error anywhere."""
        if self.eviction_check == "off":
            return
        try:
            reply = await driver.execute("CONFIG", "GET", "maxmemory-policy")
        except RedisReplyError:
            log.info("cannot read maxmemory-policy (CONFIG is disabled); not checked")
            return
        values = list(reply.values()) if isinstance(reply, dict) else reply[1::2]
        policy = values[0].decode() if values else "noeviction"
        if policy == "noeviction":
            return
        message = (
            f"Redis maxmemory-policy is {policy!r}: under memory pressure Redis may evict "
            "job records and jobs would be lost without an error. Set it to 'noeviction' "
            "(CONFIG SET maxmemory-policy noeviction, and in redis.conf)."
        )
        if self.eviction_check == "refuse":
            raise ConfigurationError(message)
        log.warning("%s", message)

    def _on_abort(self, data: bytes) -> None:
        try:
            job_id, reason = msgspec.json.decode(data, type=tuple[str, str])
        except msgspec.DecodeError:
            return
        claimed = self._inflight.get(job_id)
        if claimed is not None:
            claimed.stop(reason, abort=True)

    async def _deregister(self) -> None:
        keys = self._conn.keys
        commands: list[Command] = [
            ["ZREM", keys.servers, self.server_id],
            ["DEL", keys.server(self.server_id)],
        ]
        with anyio.move_on_after(2, shield=True):
            try:
                await with_fallback(
                    await self._conn.get(), self._conn.fresh, lambda d: d.pipeline(commands)
                )
            except Exception as err:
                log.debug("could not deregister server %s: %s", self.server_id, err)

    async def _watch_signals(self, *, task_status: TaskStatus[None]) -> None:
        if sys.platform == "win32":  # pragma: no cover
            task_status.started()
            return
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                if self._stop is not None and not self._stop.is_set():
                    log.info(
                        "received %s: draining (again to stop at once)", signal.Signals(signum).name
                    )
                    self.shutdown()
                else:
                    log.warning(
                        "received %s again: handing running jobs back now",
                        signal.Signals(signum).name,
                    )
                    if self._pools_scope is not None:
                        self._pools_scope.cancel()

    async def _register_cron(self, driver: Any) -> bool:
        """Write this server's cron entries; False when Redis refused the writes (OOM,
        a read-only replica), which the heartbeat then tries again: a full Redis must
        not keep a server from starting and draining it."""
        try:
            await register_cron(driver, self._conn.keys, list(self._cron.values()))
        except RedisReplyError as err:
            log.warning("could not register the cron entries (%s); will retry", err)
            return False
        return True

    async def _heartbeat(self, driver: Any) -> None:
        """Publish this server's record every few seconds, and re-register its queues.

        The ``servers`` entry is written with ZADD, which answers 1 when the entry is
        new: after the first beat that means Redis lost it, almost always because its
        dataset was reset (a restart without persistence, FLUSHALL, a failover to an
        empty replica). That is logged, and what only the start wrote (the queue
        registry, the cron definitions) is written again; the jobs that were queued
        are gone with the data.
        """
        started = time.time()
        beats = 0
        while True:
            info = {
                "id": self.server_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started_at": started,
                "heartbeat_at": time.time(),
                "inflight": len(self._inflight),
                "processed": self._runner.processed if self._runner else 0,
                "failed": self._runner.failed if self._runner else 0,
                "pools": [
                    {
                        "name": p.config.name,
                        "queues": list(p.config.queues),
                        "concurrency": p.config.concurrency,
                        "active": p.active,
                        "strategy": str(p.config.dequeue_strategy),
                    }
                    for p in self._pools
                ],
            }
            commands: list[Command] = [
                [
                    "SET",
                    self._conn.keys.server(self.server_id),
                    msgspec.json.encode(info),
                    "EX",
                    int(_HEARTBEAT_INTERVAL * 3),
                ],
                ["ZADD", self._conn.keys.servers, time.time(), self.server_id],
            ]
            if self._queue_names:
                commands.append(["SADD", self._conn.keys.queues, *self._queue_names])
            try:
                replies = await driver.pipeline(commands)
                if beats and replies[1] == 1:
                    log.warning(
                        "server %s: its registration vanished from Redis: the dataset was "
                        "probably reset (restart without persistence, FLUSHALL, failover); "
                        "jobs queued before are lost. Registering queues and cron entries "
                        "again",
                        self.server_id,
                    )
                    self._cron_registered = False
                if not self._cron_registered:
                    self._cron_registered = await self._register_cron(driver)
                beats += 1
            except RedisError as err:
                log.warning("heartbeat failed: %s", err)
            await anyio.sleep(_HEARTBEAT_INTERVAL)
