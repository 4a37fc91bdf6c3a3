"""The request and response bodies of the API, as msgspec types.

The handlers build and parse these, and the OpenAPI document is generated from them, so
the documented schema and the served JSON cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta

from gqm import Job, JobStatus

from ._errors import Code

T = TypeVar("T")

#: The end of a pattern. Python's ``$`` also matches just before a final newline, so
#: ``"q\n"`` would pass ``^...$``; the lookahead refuses that (in the ECMA regexes of
#: JSON Schema ``$`` only matches at the end, and the lookahead changes nothing).
_END = r"$(?!\n)"
#: A character of an id: not whitespace (Python's ``str.isspace``) and not a C0/C1
#: control character. Spelled out rather than written with ``\s``, which means other
#: characters in the ECMA regexes of JSON Schema than in Python's ``re``.
_ID_CHAR = r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


def _id_meta(max_length: int, description: str) -> Meta:
    """The constraint of an id in a path: 1 to ``max_length`` characters of ``_ID_CHAR``.

    Its ``hint`` is what a refused value is told (a regex is no answer for a person); it
    rides in ``Meta.extra``, which JSON Schema generation ignores.
    """
    return Meta(
        pattern=rf"^{_ID_CHAR}{{1,{max_length}}}{_END}",
        description=description,
        extra={
            "hint": f"1 to {max_length} characters, none of them whitespace or control characters"
        },
    )


QueueName = Annotated[
    str,
    Meta(
        pattern=rf"^[A-Za-z0-9._:-]{{1,128}}{_END}",
        description="A queue name.",
        extra={"hint": "1 to 128 characters among A-Z a-z 0-9 . _ : -"},
    ),
]
JobId = Annotated[str, _id_meta(256, "A job id.")]
EntryId = Annotated[str, _id_meta(256, "A cron entry id.")]
ServerId = Annotated[str, _id_meta(256, "A server id.")]
WorkerId = Annotated[str, _id_meta(512, "A pool id: '<server id>:<pool name>'.")]
Page = Annotated[int, Meta(ge=1, le=10_000, description="1-based page number.")]
Limit = Annotated[int, Meta(ge=1, le=100, description="Items per page.")]

#: The states jobs can be listed by.
ListStatus = Literal[
    "ready",
    "scheduled",
    "retry",
    "processing",
    "deferred",
    "completed",
    "dead_letter",
    "canceled",
    "stopped",
]


# -- envelopes -------------------------------------------------------------------------------


class PageMeta(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Where a page sits in its list (``truncated``: the list was cut short)."""

    page: int | None = None
    limit: int | None = None
    total: int | None = None
    truncated: bool | None = None


class Envelope(msgspec.Struct, Generic[T], kw_only=True, omit_defaults=True):
    """Every successful response: ``{"data": ..., "meta": {...}}``."""

    data: T
    meta: PageMeta | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error response: a human message and a stable code."""

    error: str
    code: Code


# -- request bodies ----------------------------------------------------------------------------


class LoginBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /auth/login``."""

    username: Annotated[str, Meta(min_length=1, max_length=256)]
    password: Annotated[str, Meta(min_length=1, max_length=1024)]


class JobIdsBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A batch admin call: at most 100 ids (duplicates are handled once)."""

    job_ids: Annotated[list[JobId], Meta(min_length=1, max_length=100)]


# -- queries -------------------------------------------------------------------------------------


class PageQuery(msgspec.Struct, kw_only=True):
    page: Page = 1
    limit: Limit = 20


class JobsQuery(PageQuery, kw_only=True):
    status: ListStatus = "ready"


class DeferredQuery(PageQuery, kw_only=True):
    queue: QueueName | None = None


class HistoryQuery(msgspec.Struct, kw_only=True):
    limit: Limit = 20


class RootsQuery(msgspec.Struct, kw_only=True):
    limit: Limit = 50


class DailyQuery(msgspec.Struct, kw_only=True):
    queue: QueueName | None = None
    days: Annotated[int, Meta(ge=1, le=90)] = 7


class GraphQuery(msgspec.Struct, kw_only=True):
    depth: Annotated[int, Meta(ge=1, le=20)] = 3
    max_nodes: Annotated[int, Meta(ge=1, le=200)] = 200


# -- response bodies -------------------------------------------------------------------------------


class Health(msgspec.Struct, kw_only=True):
    """``GET /health``: ``ok`` when Redis answers and runs scripts, else ``degraded``."""

    status: Literal["ok", "degraded"]
    redis: bool
    latency_ms: float | None
    error: str | None = None
    uptime_seconds: float


class Me(msgspec.Struct, kw_only=True):
    """Who the caller is: ``via`` is ``session``, ``api_key`` or ``none`` (auth off)."""

    username: str
    role: Literal["admin", "viewer"]
    via: Literal["session", "api_key", "none"]


class LoggedOut(msgspec.Struct, kw_only=True):
    logged_out: bool


class JobView(msgspec.Struct, kw_only=True):
    """A job without its payload and result (as listings show it). ``stale``: its lease
    expired, so its worker is presumed dead and the reaper will recover it."""

    id: str
    type: str
    queue: str
    status: JobStatus
    attempt: int
    retry_count: int
    recoveries: int
    max_retry: int | None
    timeout: float | None
    unique: bool
    allow_failure: bool
    meta: dict[str, str]
    enqueued_by: str | None
    depends_on: list[str]
    pending: list[str]
    created_at: datetime | None
    scheduled_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    lease_deadline: datetime | None
    stale: bool
    error: str | None
    worker_id: str | None


class JobDetail(JobView, kw_only=True):
    """A job with its payload and (once completed) its result, both as JSON values."""

    payload: Any = None
    result: Any = None


def job_view(job: Job[Any], now: datetime, *, detail: bool = False) -> JobView:
    """The API shape of a job."""
    fields: dict[str, Any] = {
        "id": job.id,
        "type": job.type,
        "queue": job.queue,
        "status": job.status,
        "attempt": job.attempt,
        "retry_count": job.retry_count,
        "recoveries": job.recoveries,
        "max_retry": job.max_retry,
        "timeout": job.timeout,
        "unique": job.unique,
        "allow_failure": job.allow_failure,
        "meta": dict(job.meta),
        "enqueued_by": job.enqueued_by,
        "depends_on": list(job.depends_on),
        "pending": list(job.pending),
        "created_at": job.created_at,
        "scheduled_at": job.scheduled_at,
        "started_at": job.started_at,
        "completed_at": job.completed_at,
        "lease_deadline": job.lease_deadline,
        "stale": job.lease_deadline is not None and job.lease_deadline < now,
        "error": job.error,
        "worker_id": job.worker_id,
    }
    if detail:
        return JobDetail(**fields, payload=job.payload, result=job.result)
    return JobView(**fields)


class JobOutcome(msgspec.Struct, kw_only=True):
    """The result of an action on one job."""

    job_id: str
    outcome: str


class BatchOutcome(msgspec.Struct, kw_only=True):
    """Per-id results of a batch action."""

    results: dict[str, str]


class QueuePaused(msgspec.Struct, kw_only=True):
    queue: str
    paused: bool


class QueueCount(msgspec.Struct, kw_only=True):
    """How many jobs a bulk queue action touched (at most 1,000 per call; call again
    while ``count`` is 1,000)."""

    queue: str
    action: Literal["canceled", "retried", "cleared"]
    count: int


class CronView(msgspec.Struct, kw_only=True):
    """A cron entry, its state and its next and last fire."""

    id: str
    name: str
    cron_expr: str
    timezone: str
    job_type: str
    queue: str
    payload: Any
    overlap_policy: str
    enabled: bool
    next_run: datetime | None
    last_run: datetime | None


class CronHistoryItem(msgspec.Struct, kw_only=True):
    """One fire: the tick it was for, when it fired, the job it enqueued and what
    became of the fire (``enqueued``, ``skipped``...)."""

    job_id: str | None
    tick: datetime
    fired_at: datetime
    outcome: str


class CronTriggered(msgspec.Struct, kw_only=True):
    entry_id: str
    job_id: str


class CronToggled(msgspec.Struct, kw_only=True):
    entry_id: str
    enabled: bool


class DailyStat(msgspec.Struct, kw_only=True):
    date: str
    queue: str
    processed: int
    failed: int


class Runtime(msgspec.Struct, kw_only=True):
    """Figures of the Python process serving the API."""

    pid: int
    python: str
    implementation: str
    async_backend: str
    uptime_seconds: float
    rss_bytes: int | None
    max_rss_bytes: int | None
    cpu_user_seconds: float
    cpu_system_seconds: float
    threads: int
    tasks: int | None
    gc_counts: list[int]
    gc_collections: list[int]
    gc_objects: int
