"""Running one job: decode, middleware, timeout scope, outcome, callbacks.

Each job runs in its own cancel scope, kept in the server's in-flight registry, so that a
timeout or a lost lease cancels exactly that job. Why the job stopped is recorded in an
explicit flag (``Claimed.stop_reason``), never guessed from clocks. Exceptions raised by a
handler or a callback are caught per job: the pool keeps running.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec

from ._finish import DONE, REFUSED, REPLAYED, Finisher, FinishOp
from ._job import Job, JobRecord, json_encoder, record_decoder
from ._task import Task
from .errors import SkipRetry
from .retry import DEFAULT_MAX_RETRY, DEFAULT_RETRY_DELAY, RetryPolicy, interval_delay

log = logging.getLogger("gqm.worker")

Handler = Callable[[Job[Any]], Awaitable[Any]]
Middleware = Callable[[Handler], Handler]
IsFailure = Callable[[BaseException], bool]
SuccessCallback = Callable[[Job[Any], Any], Any]
FailureCallback = Callable[[Job[Any], BaseException], Any]
CompleteCallback = Callable[[Job[Any], BaseException | None], Any]

_MAX_ERROR_CHARS = 4000


@dataclass(slots=True)
class HandlerSpec:
    """A registered handler and its per-handler settings."""

    job_type: str
    fn: Handler
    task: Task[Any] | None = None
    workers: int | None = None
    queue: str | None = None
    timeout: float | None = None
    max_retry: int | None = None
    retry: RetryPolicy | None = None
    is_failure: IsFailure | None = None
    on_success: SuccessCallback | None = None
    on_failure: FailureCallback | None = None
    on_complete: CompleteCallback | None = None
    wrapped: Handler | None = field(default=None, repr=False)

    def decode(self, raw: bytes) -> Any:
        if self.task is not None:
            return self.task.decoder().decode(raw)
        return msgspec.json.decode(raw) if raw else None


class Claimed:
    """A job this server claimed: in the registry from claim until its outcome is written."""

    __slots__ = (
        "aborted",
        "job_id",
        "outcome",
        "pool",
        "queue",
        "raw_payload",
        "raw_record",
        "scope",
        "stop_reason",
        "token",
    )

    def __init__(
        self, queue: str, job_id: str, raw_record: bytes, raw_payload: bytes, token: str, pool: str
    ) -> None:
        self.queue = queue
        self.job_id = job_id
        self.raw_record = raw_record
        self.raw_payload = raw_payload
        self.token = token
        self.pool = pool
        self.scope: anyio.CancelScope | None = None
        self.stop_reason: str | None = None
        #: Stopped by an abort request (recorded as stopped), not by a lost lease.
        self.aborted = False
        #: The outcome submitted for writing, if any (shutdown writes it, not a hand-back).
        self.outcome: FinishOp | None = None

    def stop(self, reason: str, *, abort: bool = False) -> None:
        """Cancel the running handler, saying why: a lost lease (nothing is recorded:
        another claim owns the job) or an abort request (recorded as stopped)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.aborted = abort
        if self.scope is not None:
            self.scope.cancel()


def forget(inflight: dict[str, Claimed], claimed: Claimed) -> None:
    """Drop ``claimed`` from the registry, unless a newer claim of the job replaced it."""
    if inflight.get(claimed.job_id) is claimed:
        del inflight[claimed.job_id]


def _describe(err: BaseException) -> str:
    if isinstance(err, SkipRetry):
        # The reason is the message, or the error it wraps (`raise SkipRetry() from e`).
        if not str(err) and err.__cause__ is not None:
            err = err.__cause__
        else:
            return f"SkipRetry: {err}"[:_MAX_ERROR_CHARS]
    text = "".join(traceback.format_exception_only(err)).strip()
    return text[:_MAX_ERROR_CHARS]


async def _call_quietly(what: str, job_id: str, fn: Callable[..., Any], *args: Any) -> None:
    try:
        result = fn(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("%s callback of job %s raised; ignored", what, job_id)


@dataclass(slots=True)
class PoolSettings:
    """What a running job needs from its pool."""

    name: str
    timeout: float | None
    retry: RetryPolicy | None


class Runner:
    """Runs claimed jobs for a server."""

    def __init__(
        self,
        *,
        handlers: dict[str, HandlerSpec],
        finisher: Finisher,
        inflight: dict[str, Claimed],
        global_timeout: float,
    ) -> None:
        self._handlers = handlers
        self._finisher = finisher
        self._inflight = inflight
        self._global_timeout = global_timeout
        self.processed = 0
        self.failed = 0

    async def run(self, claimed: Claimed, pool: PoolSettings) -> None:
        """Run one claimed job to its recorded outcome."""
        rec = record_decoder.decode(claimed.raw_record)
        spec = self._handlers.get(rec.type)
        if spec is None:
            # Not the job's fault (a rolling deploy, or a queue shared with servers that
            # have the handler): retry later without counting it.
            err = LookupError(f"no handler for job type {rec.type!r} on this server")
            await self._fail(claimed, rec, None, pool, err, counted=False)
            return
        try:
            payload = spec.decode(claimed.raw_payload)
        except Exception as err:  # msgspec errors, or a payload type's __post_init__
            await self._finish(claimed, "d", f"undecodable payload: {err}")
            self.failed += 1
            return
        job: Job[Any] = Job._from_record(rec, payload)
        timeout = rec.timeout or spec.timeout or pool.timeout or self._global_timeout
        handler = spec.wrapped or spec.fn
        result: Any = None
        error: Exception | None = None
        with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
            claimed.scope = scope
            try:
                result = await handler(job)
            except Exception as exc:
                error = exc
        claimed.scope = None
        if error is not None:
            await self._fail(claimed, rec, spec, pool, error, job=job)
            return
        if scope.cancelled_caught:
            if claimed.aborted:
                log.info("job %s aborted: %s", rec.id, claimed.stop_reason)
                await self._finish(claimed, "s", f"aborted: {claimed.stop_reason}")
                return
            if claimed.stop_reason is not None:
                # The lease is gone: another claim owns the job now.
                log.warning("job %s stopped: %s", rec.id, claimed.stop_reason)
                forget(self._inflight, claimed)
                return
            await self._fail(
                claimed, rec, spec, pool, TimeoutError(f"job timed out after {timeout:g}s"), job=job
            )
            return
        try:
            encoded = json_encoder.encode(result) if result is not None else b""
        except Exception as err:  # unsupported types, cycles (RecursionError), ...
            await self._fail(
                claimed, rec, spec, pool, SkipRetry(f"result is not JSON-encodable: {err}"), job=job
            )
            return
        wait = spec.on_success is not None or spec.on_complete is not None
        code = await self._finish(claimed, "c", encoded, 1 if result is not None else 0, wait=wait)
        self.processed += 1
        if code == DONE:
            if spec.on_success is not None:
                await _call_quietly("on_success", rec.id, spec.on_success, job, result)
            if spec.on_complete is not None:
                await _call_quietly("on_complete", rec.id, spec.on_complete, job, None)

    async def stopped(self, claimed: Claimed) -> None:
        """Record an aborted job as stopped."""
        await self._finish(claimed, "s", f"aborted: {claimed.stop_reason}")

    async def bury(self, claimed: Claimed, reason: str) -> None:
        """Send a claimed job to the dead-letter queue with ``reason``."""
        self.failed += 1
        await self._finish(claimed, "d", reason[:_MAX_ERROR_CHARS])

    async def _finish(
        self,
        claimed: Claimed,
        outcome: str,
        data: bytes | str = b"",
        n1: int = 0,
        n2: int = 0,
        *,
        wait: bool = True,
    ) -> int:
        """Record an outcome. With ``wait=False`` the worker moves on at once (the claim
        leaves the registry once written); callbacks need ``wait``, since they run after
        the outcome is in Redis. Returns the finish code (DONE when not waited for)."""
        op = FinishOp(claimed.queue, claimed.job_id, claimed.token, outcome, data, n1, n2)
        op.after = lambda op: self._written(claimed, op)
        claimed.outcome = op
        try:
            if not wait:
                self._finisher.submit_nowait(op)
                return DONE
            code = await self._finisher.submit(op)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            # The server is stopping and its finisher is gone: the pool's hand-back
            # writes `claimed.outcome` on its own connection.
            return REFUSED
        return DONE if code == REPLAYED else code

    def _written(self, claimed: Claimed, op: FinishOp) -> None:
        forget(self._inflight, claimed)
        if op.code not in (DONE, REPLAYED) and op.outcome != "h":
            log.warning(
                "job %s: outcome %r refused (the claim no longer owns the job)",
                claimed.job_id,
                op.outcome,
            )

    async def _fail(
        self,
        claimed: Claimed,
        rec: JobRecord,
        spec: HandlerSpec | None,
        pool: PoolSettings,
        err: BaseException,
        *,
        job: Job[Any] | None = None,
        counted: bool | None = None,
    ) -> None:
        self.failed += 1
        message = _describe(err)
        if counted is None:
            counted = True
            if spec is not None and spec.is_failure is not None and not isinstance(err, SkipRetry):
                try:
                    counted = bool(spec.is_failure(err))
                except Exception:
                    log.exception("is_failure of job %s raised; counting the failure", rec.id)
        policy = (spec.retry if spec else None) or pool.retry
        max_retry = rec.max_retry
        if max_retry is None and spec is not None:
            max_retry = spec.max_retry
        if max_retry is None:
            max_retry = policy.max_retry if policy is not None else DEFAULT_MAX_RETRY
        retries = rec.retry_count + (1 if counted else 0)
        if isinstance(err, SkipRetry) or (counted and retries > max_retry):
            outcome, delay = "d", 0.0
        else:
            outcome = "r"
            n = max(retries, 1)
            if rec.retry_intervals:
                delay = interval_delay(rec.retry_intervals, n)
            elif policy is not None:
                delay = policy.delay(n)
            else:
                delay = DEFAULT_RETRY_DELAY
        wait = spec is not None and (spec.on_failure is not None or spec.on_complete is not None)
        code = await self._finish(
            claimed, outcome, message, int(delay * 1000), 1 if counted else 0, wait=wait
        )
        if code == DONE and spec is not None and job is not None:
            if spec.on_failure is not None:
                await _call_quietly("on_failure", rec.id, spec.on_failure, job, err)
            if spec.on_complete is not None:
                await _call_quietly("on_complete", rec.id, spec.on_complete, job, err)
