"""The job record: what is stored in Redis, and the typed ``Job`` handlers receive."""

from __future__ import annotations

import enum
import os
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import msgspec

P = TypeVar("P")


class JobStatus(enum.StrEnum):
    """Where a job is in its life. See :data:`TERMINAL_STATES` and :data:`ACTIVE_STATES`."""

    READY = "ready"
    SCHEDULED = "scheduled"
    DEFERRED = "deferred"
    PROCESSING = "processing"
    RETRY = "retry"
    COMPLETED = "completed"
    DEAD_LETTER = "dead_letter"
    CANCELED = "canceled"
    STOPPED = "stopped"
    FAILED = "failed"


_STATUS = {s.value: s for s in JobStatus}

#: States a job never leaves by itself; records in them expire after the retention TTL.
TERMINAL_STATES = frozenset(
    {
        JobStatus.COMPLETED,
        JobStatus.DEAD_LETTER,
        JobStatus.CANCELED,
        JobStatus.STOPPED,
        JobStatus.FAILED,
    }
)
#: States of a job that will still run (or is running).
ACTIVE_STATES = frozenset(JobStatus) - TERMINAL_STATES


class JobRecord(msgspec.Struct, omit_defaults=True):
    """The job as stored in the queue's ``jobs`` hash (JSON), without payload and result.

    Scripts read and rewrite it; unknown fields are kept by Lua and ignored here, so that
    rolling deploys of newer versions keep working. Times are Redis milliseconds.
    """

    id: str
    type: str
    queue: str
    status: str = "ready"
    attempt: int = 0
    retry_count: int = 0
    recoveries: int = 0
    max_retry: int | None = None
    timeout: float | None = None
    retry_intervals: list[float] | None = None
    meta: dict[str, str] | None = None
    enqueued_by: str | None = None
    unique: bool = False
    at_front: bool = False
    created_at: int | None = None
    scheduled_at: int | None = None
    started_at: int | None = None
    completed_at: int | None = None
    error: str | None = None
    last_error: str | None = None
    worker_id: str | None = None
    token: str | None = None
    depends_on: list[str] | None = None
    allow_failure: bool = False
    pending: dict[str, int] | None = None
    #: Only while enqueueing a dependent job: [parent id, parent queue] pairs.
    links: list[tuple[str, str]] | None = None


record_encoder = msgspec.json.Encoder()
record_decoder = msgspec.json.Decoder(JobRecord)
json_encoder = msgspec.json.Encoder()
any_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ts(ms: int | None) -> datetime | None:
    # Exact for any ms (float division loses microseconds far in the future).
    return None if ms is None else _EPOCH + timedelta(milliseconds=ms)


def score_ms(reply: Any) -> int | None:
    """A sorted-set score reply (``bytes`` on RESP2, ``float`` on RESP3, nil) holding
    milliseconds since the epoch, as an ``int`` (None for nil)."""
    return None if reply is None else int(float(reply))


class Job(msgspec.Struct, Generic[P], frozen=True, kw_only=True):
    """A job, as handlers receive it and as :meth:`Client.get_job` returns it.

    ``payload`` is decoded to the task's payload type (a ``dict`` for untyped jobs).
    ``result`` is the decoded return value of the handler once the job completed.
    ``lease_deadline`` is when the current claim's lease expires (it is renewed while the
    job runs); it is set only for processing jobs read through :meth:`Client.get_job` or
    :meth:`Client.list_jobs`, None otherwise (handlers see None).
    """

    id: str
    type: str
    queue: str
    payload: P
    status: JobStatus
    attempt: int = 0
    retry_count: int = 0
    recoveries: int = 0
    max_retry: int | None = None
    timeout: float | None = None
    retry_intervals: tuple[float, ...] | None = None
    meta: dict[str, str] = msgspec.field(default_factory=dict)
    enqueued_by: str | None = None
    unique: bool = False
    created_at: datetime | None = None
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    lease_deadline: datetime | None = None
    error: str | None = None
    worker_id: str | None = None
    depends_on: tuple[str, ...] = ()
    allow_failure: bool = False
    pending: tuple[str, ...] = ()
    result: Any = None

    @classmethod
    def _enqueued(cls, rec: JobRecord, payload: P) -> Job[P]:
        """The job just enqueued from ``rec``: as :meth:`_from_record`, faster for the
        usual job without options (it passes only the fields that differ from the
        defaults: a Struct is built at a cost per argument)."""
        if (
            rec.max_retry is None
            and rec.timeout is None
            and rec.retry_intervals is None
            and not rec.meta
            and rec.enqueued_by is None
            and not rec.unique
            and rec.scheduled_at is None
            and not rec.depends_on
        ):
            status = _STATUS.get(rec.status) or JobStatus(rec.status)
            return cls(id=rec.id, type=rec.type, queue=rec.queue, payload=payload, status=status)
        return cls._from_record(rec, payload)

    @classmethod
    def _from_record(
        cls,
        rec: JobRecord,
        payload: P,
        result: Any = None,
        *,
        lease_deadline_ms: int | None = None,
    ) -> Job[P]:
        """The job of a stored record; ``lease_deadline_ms`` (the job's score in its
        queue's ``leases`` set) is kept only while the job is processing."""
        status = _STATUS.get(rec.status) or JobStatus(rec.status)
        return cls(
            id=rec.id,
            type=rec.type,
            queue=rec.queue,
            payload=payload,
            status=status,
            attempt=rec.attempt,
            retry_count=rec.retry_count,
            recoveries=rec.recoveries,
            max_retry=rec.max_retry,
            timeout=rec.timeout,
            retry_intervals=tuple(rec.retry_intervals) if rec.retry_intervals else None,
            meta=rec.meta or {},
            enqueued_by=rec.enqueued_by,
            unique=rec.unique,
            created_at=_ts(rec.created_at),
            scheduled_at=_ts(rec.scheduled_at),
            started_at=_ts(rec.started_at),
            completed_at=_ts(rec.completed_at),
            lease_deadline=_ts(lease_deadline_ms) if status is JobStatus.PROCESSING else None,
            error=rec.error,
            worker_id=rec.worker_id,
            depends_on=tuple(rec.depends_on or ()),
            allow_failure=rec.allow_failure,
            pending=tuple(sorted(rec.pending or ())),
            result=result,
        )


_last_ms = 0
_counter = 0

#: The random bits of ids and nonces. Not ``os.urandom`` (a system call per id) and not
#: the ``random`` module's shared generator (an application's ``random.seed(42)`` would
#: make every process draw the same ids): a generator of our own, seeded from the OS,
#: and seeded again in a forked child so that parent and child never draw alike.
#: ``getrandbits`` is one C call, so threads cannot draw the same bits either.
_rng = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(32)))
random_bits = _rng.getrandbits


def uuid7() -> str:
    """A UUIDv7 string: time-ordered, so ids sort by creation time.

    Uses a 12-bit counter within the same millisecond (RFC 9562 method 1) so that ids
    made in one process are strictly increasing.
    """
    global _last_ms, _counter
    ms = time.time_ns() // 1_000_000
    if ms <= _last_ms:
        ms = _last_ms
        _counter += 1
        if _counter > 0xFFF:
            ms += 1
            _counter = 0
    else:
        _counter = random_bits(10)
    _last_ms = ms
    value = (ms << 80) | (0x7 << 76) | (_counter << 64) | (0b10 << 62) | random_bits(62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
