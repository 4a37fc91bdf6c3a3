"""The ``/api/v1`` routes and ``/health``: reads of queues, jobs, servers, pools, cron,
stats and dependency graphs, and the admin actions. Every route goes through the public
:class:`gqm.Client` API."""

from __future__ import annotations

import gc
import os
import platform
import resource
import sys
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import sniffio

from gqm import (
    TERMINAL_STATES,
    DagGraph,
    NotFoundError,
    PoolInfo,
    QueueInfo,
    ServerInfo,
    Totals,
)

from ._errors import ApiError, Code
from ._routing import Access, route
from ._types import (
    BatchOutcome,
    CronHistoryItem,
    CronToggled,
    CronTriggered,
    CronView,
    DailyQuery,
    DailyStat,
    DeferredQuery,
    EntryId,
    Envelope,
    GraphQuery,
    Health,
    HistoryQuery,
    JobDetail,
    JobId,
    JobIdsBody,
    JobOutcome,
    JobsQuery,
    JobView,
    PageMeta,
    PageQuery,
    QueueCount,
    QueueName,
    QueuePaused,
    RootsQuery,
    Runtime,
    ServerId,
    WorkerId,
    job_view,
)

if TYPE_CHECKING:
    from gqm._cron_runtime import StoredEntry

    from ._state import Web

V1 = "/api/v1"
R, A = Access.VIEWER, Access.ADMIN
QUEUE = {"name": QueueName}
JOB = {"id": JobId}
ENTRY = {"id": EntryId}


def _ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


async def _known_queue(web: Web, name: str) -> None:
    if name not in await web.client.queue_names():
        raise ApiError(Code.NOT_FOUND, f"no queue named {name!r}")


def _page(q: PageQuery, total: int) -> PageMeta:
    return PageMeta(page=q.page, limit=q.limit, total=total)


# -- health --------------------------------------------------------------------------------


@route("GET", "/health", access=Access.PUBLIC, data=Health, tag="health", errors=(503,))
async def health(web: Web) -> Envelope[Health] | tuple[Envelope[Health], int]:
    """Whether Redis answers and runs scripts (503 when it does not)."""
    try:
        latency = await web.client.ping()
    except Exception as err:
        body = Health(
            status="degraded",
            redis=False,
            latency_ms=None,
            error=type(err).__name__,
            uptime_seconds=web.uptime(),
        )
        return Envelope(data=body), 503
    return Envelope(
        data=Health(
            status="ok",
            redis=True,
            latency_ms=round(latency * 1000, 3),
            uptime_seconds=web.uptime(),
        )
    )


# -- queues ------------------------------------------------------------------------------


@route("GET", f"{V1}/queues", access=R, data=list[QueueInfo], tag="queues")
async def list_queues(web: Web) -> Envelope[list[QueueInfo]]:
    """Every queue: sizes per state, totals, paused."""
    return Envelope(data=await web.client.queues())


@route("GET", f"{V1}/queues/{{name}}", access=R, data=QueueInfo, tag="queues", params=QUEUE)
async def get_queue(web: Web, name: str) -> Envelope[QueueInfo]:
    """One queue: sizes per state, totals, paused."""
    return Envelope(data=await web.client.queue_info(name))


@route(
    "GET",
    f"{V1}/queues/{{name}}/jobs",
    access=R,
    data=list[JobView],
    tag="queues",
    params=QUEUE,
    query=JobsQuery,
    paged=True,
)
async def list_queue_jobs(web: Web, name: str, query: JobsQuery) -> Envelope[list[JobView]]:
    """A page of a queue's jobs in one state (payloads left out)."""
    return await _jobs_page(web, name, query.status, query)


@route(
    "GET",
    f"{V1}/queues/{{name}}/dead-letter",
    access=R,
    data=list[JobView],
    tag="queues",
    params=QUEUE,
    query=PageQuery,
    paged=True,
)
async def list_dead_letter(web: Web, name: str, query: PageQuery) -> Envelope[list[JobView]]:
    """A page of a queue's dead-letter jobs, newest first."""
    return await _jobs_page(web, name, "dead_letter", query)


async def _jobs_page(web: Web, name: str, status: str, q: PageQuery) -> Envelope[list[JobView]]:
    await _known_queue(web, name)
    jobs, total = await web.client.list_jobs(
        name, status, offset=(q.page - 1) * q.limit, limit=q.limit
    )
    now = web.now()
    return Envelope(data=[job_view(j, now) for j in jobs], meta=_page(q, total))


# -- jobs --------------------------------------------------------------------------------


@route("GET", f"{V1}/jobs/{{id}}", access=R, data=JobDetail, tag="jobs", params=JOB)
async def get_job(web: Web, id: str) -> Envelope[JobView]:
    """One job, with its payload and result."""
    job = await web.client.get_job(id)
    return Envelope(data=job_view(job, web.now(), detail=True))


@route(
    "POST",
    f"{V1}/jobs/{{id}}/retry",
    access=A,
    data=JobOutcome,
    tag="jobs",
    params=JOB,
    errors=(409,),
)
async def retry_job(web: Web, id: str) -> Envelope[JobOutcome]:
    """Requeue a dead-letter, canceled or stopped job (409 in any other state)."""
    outcome = await _retry(web, [id])
    if outcome[id] == "not_found":
        raise ApiError(Code.NOT_FOUND, f"no job with id {id!r}")
    if outcome[id] != "retried":
        raise ApiError(Code.CONFLICT, f"job {id!r} is not dead, canceled or stopped")
    return Envelope(data=JobOutcome(job_id=id, outcome="retried"))


@route(
    "POST",
    f"{V1}/jobs/{{id}}/cancel",
    access=A,
    data=JobOutcome,
    tag="jobs",
    params=JOB,
    errors=(409,),
)
async def cancel_job(web: Web, id: str) -> Envelope[JobOutcome]:
    """Cancel a waiting job, or stop a running one (409 when it already finished)."""
    # ``abort`` answers "canceled" both when it cancels the job and when the job had been
    # canceled before, so a finished job is told apart by its status first.
    status = (await web.client.get_job(id)).status
    if status in TERMINAL_STATES:
        raise ApiError(Code.CONFLICT, f"job {id!r} already ended as {status}")
    outcome = await web.client.abort(id, reason="canceled from the API")
    if outcome not in ("canceled", "signalled"):
        raise ApiError(Code.CONFLICT, f"job {id!r} already ended as {outcome}")
    return Envelope(data=JobOutcome(job_id=id, outcome=outcome))


@route(
    "DELETE",
    f"{V1}/jobs/{{id}}",
    access=A,
    data=None,
    tag="jobs",
    params=JOB,
    status=204,
    errors=(409,),
)
async def delete_job(web: Web, id: str) -> None:
    """Delete a job that is not running (409 while it runs: cancel it first)."""
    outcome = (await web.client.delete(id))[id]
    if outcome == "not_found":
        raise ApiError(Code.NOT_FOUND, f"no job with id {id!r}")
    if outcome == "processing":
        raise ApiError(Code.CONFLICT, f"job {id!r} is running: cancel it first")


async def _retry(web: Web, ids: list[str]) -> dict[str, str]:
    done = await web.client.retry(*ids)
    missing = [i for i, ok in done.items() if not ok]
    out = {i: "retried" for i, ok in done.items() if ok}
    for job_id in missing:
        try:
            await web.client.get_job(job_id)
            out[job_id] = "not_retryable"
        except NotFoundError:
            out[job_id] = "not_found"
    return out


@route("POST", f"{V1}/jobs/batch/retry", access=A, data=BatchOutcome, tag="jobs", body=JobIdsBody)
async def retry_jobs(web: Web, body: JobIdsBody) -> Envelope[BatchOutcome]:
    """Retry up to 100 jobs: per id ``retried``, ``not_retryable`` or ``not_found``."""
    return Envelope(data=BatchOutcome(results=await _retry(web, list(dict.fromkeys(body.job_ids)))))


@route("POST", f"{V1}/jobs/batch/delete", access=A, data=BatchOutcome, tag="jobs", body=JobIdsBody)
async def delete_jobs(web: Web, body: JobIdsBody) -> Envelope[BatchOutcome]:
    """Delete up to 100 jobs: per id ``deleted``, ``processing`` or ``not_found``."""
    return Envelope(data=BatchOutcome(results=await web.client.delete(*body.job_ids)))


# -- queue admin ---------------------------------------------------------------------------


@route(
    "POST", f"{V1}/queues/{{name}}/pause", access=A, data=QueuePaused, tag="queues", params=QUEUE
)
async def pause_queue(web: Web, name: str) -> Envelope[QueuePaused]:
    """Stop handing out the queue's jobs (running ones finish)."""
    await _known_queue(web, name)
    await web.client.pause(name)
    return Envelope(data=QueuePaused(queue=name, paused=True))


@route(
    "POST", f"{V1}/queues/{{name}}/resume", access=A, data=QueuePaused, tag="queues", params=QUEUE
)
async def resume_queue(web: Web, name: str) -> Envelope[QueuePaused]:
    """Hand out the queue's jobs again."""
    await _known_queue(web, name)
    await web.client.resume(name)
    return Envelope(data=QueuePaused(queue=name, paused=False))


@route(
    "DELETE", f"{V1}/queues/{{name}}/empty", access=A, data=QueueCount, tag="queues", params=QUEUE
)
async def empty_queue(web: Web, name: str) -> Envelope[QueueCount]:
    """Cancel up to 1,000 ready jobs (and their dependents)."""
    await _known_queue(web, name)
    count = await web.client.empty(name)
    return Envelope(data=QueueCount(queue=name, action="canceled", count=count))


@route(
    "POST",
    f"{V1}/queues/{{name}}/dead-letter/retry-all",
    access=A,
    data=QueueCount,
    tag="queues",
    params=QUEUE,
)
async def retry_dead_letter(web: Web, name: str) -> Envelope[QueueCount]:
    """Requeue up to 1,000 dead-letter jobs, oldest first."""
    await _known_queue(web, name)
    count = await web.client.retry_dead(name)
    return Envelope(data=QueueCount(queue=name, action="retried", count=count))


@route(
    "DELETE",
    f"{V1}/queues/{{name}}/dead-letter/clear",
    access=A,
    data=QueueCount,
    tag="queues",
    params=QUEUE,
)
async def clear_dead_letter(web: Web, name: str) -> Envelope[QueueCount]:
    """Delete up to 1,000 dead-letter jobs, oldest first."""
    await _known_queue(web, name)
    count = await web.client.clear_dead(name)
    return Envelope(data=QueueCount(queue=name, action="cleared", count=count))


# -- servers and pools -------------------------------------------------------------------


@route("GET", f"{V1}/servers", access=R, data=list[ServerInfo], tag="servers")
async def list_servers(web: Web) -> Envelope[list[ServerInfo]]:
    """Live servers, from their heartbeats."""
    return Envelope(data=await web.client.servers())


@route(
    "GET",
    f"{V1}/servers/{{id}}",
    access=R,
    data=ServerInfo,
    tag="servers",
    params={"id": ServerId},
)
async def get_server(web: Web, id: str) -> Envelope[ServerInfo]:
    """One live server."""
    return Envelope(data=await web.client.server(id))


@route("GET", f"{V1}/workers", access=R, data=list[PoolInfo], tag="servers")
async def list_workers(web: Web) -> Envelope[list[PoolInfo]]:
    """Every worker pool of every live server."""
    return Envelope(data=await web.client.workers())


@route(
    "GET",
    f"{V1}/workers/{{id}}",
    access=R,
    data=PoolInfo,
    tag="servers",
    params={"id": WorkerId},
)
async def get_worker(web: Web, id: str) -> Envelope[PoolInfo]:
    """One worker pool (``<server id>:<pool name>``)."""
    return Envelope(data=await web.client.worker(id))


# -- cron ------------------------------------------------------------------------------------


async def _cron_view(web: Web, entry: StoredEntry) -> CronView:
    return CronView(
        id=entry.id,
        name=entry.name,
        cron_expr=entry.cron_expr,
        timezone=entry.timezone,
        job_type=entry.job_type,
        queue=entry.queue,
        payload=entry.payload,
        overlap_policy=entry.overlap_policy,
        enabled=entry.enabled,
        next_run=await web.client.cron_next_run(entry.id),
        last_run=await web.client.cron_last_run(entry.id),
    )


@route("GET", f"{V1}/cron", access=R, data=list[CronView], tag="cron")
async def list_cron(web: Web) -> Envelope[list[CronView]]:
    """Every cron entry with its next and last fire."""
    return Envelope(data=[await _cron_view(web, e) for e in await web.client.cron_entries()])


@route("GET", f"{V1}/cron/{{id}}", access=R, data=CronView, tag="cron", params=ENTRY)
async def get_cron(web: Web, id: str) -> Envelope[CronView]:
    """One cron entry with its next and last fire."""
    return Envelope(data=await _cron_view(web, await web.client.cron_entry(id)))


@route(
    "GET",
    f"{V1}/cron/{{id}}/history",
    access=R,
    data=list[CronHistoryItem],
    tag="cron",
    params=ENTRY,
    query=HistoryQuery,
)
async def cron_history(web: Web, id: str, query: HistoryQuery) -> Envelope[list[CronHistoryItem]]:
    """The latest fires of a cron entry, newest first."""
    await web.client.cron_entry(id)
    items = await web.client.cron_history(id, limit=query.limit)
    return Envelope(
        data=[
            CronHistoryItem(
                job_id=i.job_id, tick=_ms(i.tick), fired_at=_ms(i.fired_at), outcome=i.outcome
            )
            for i in items
        ]
    )


@route("POST", f"{V1}/cron/{{id}}/trigger", access=A, data=CronTriggered, tag="cron", params=ENTRY)
async def trigger_cron(web: Web, id: str) -> Envelope[CronTriggered]:
    """Enqueue the entry's job now (outside its schedule and overlap policy)."""
    job = await web.client.cron_trigger(id)
    return Envelope(data=CronTriggered(entry_id=id, job_id=job.id))


@route("POST", f"{V1}/cron/{{id}}/enable", access=A, data=CronToggled, tag="cron", params=ENTRY)
async def enable_cron(web: Web, id: str) -> Envelope[CronToggled]:
    """Enable an entry on every server."""
    await web.client.cron_entry(id)
    await web.client.cron_enable(id)
    return Envelope(data=CronToggled(entry_id=id, enabled=True))


@route("POST", f"{V1}/cron/{{id}}/disable", access=A, data=CronToggled, tag="cron", params=ENTRY)
async def disable_cron(web: Web, id: str) -> Envelope[CronToggled]:
    """Disable an entry on every server."""
    await web.client.cron_entry(id)
    await web.client.cron_disable(id)
    return Envelope(data=CronToggled(entry_id=id, enabled=False))


# -- stats -------------------------------------------------------------------------------------


@route("GET", f"{V1}/stats", access=R, data=Totals, tag="stats")
async def stats(web: Web) -> Envelope[Totals]:
    """Totals across every queue, and live servers and workers."""
    return Envelope(data=await web.client.stats())


@route("GET", f"{V1}/stats/daily", access=R, data=list[DailyStat], tag="stats", query=DailyQuery)
async def daily_stats(web: Web, query: DailyQuery) -> Envelope[list[DailyStat]]:
    """Jobs processed and failed per UTC day, per queue (oldest day first)."""
    if query.queue is not None:
        await _known_queue(web, query.queue)
        names = [query.queue]
    else:
        names = await web.client.queue_names()
    out: list[DailyStat] = []
    for name in names:
        for date, processed, failed in await web.client.daily_stats(name, days=query.days):
            out.append(DailyStat(date=date, queue=name, processed=processed, failed=failed))
    return Envelope(data=out)


@route("GET", f"{V1}/stats/runtime", access=R, data=Runtime, tag="stats")
async def runtime(web: Web) -> Envelope[Runtime]:
    """Figures of the Python process serving this API (memory, CPU, tasks, GC)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    backend = sniffio.current_async_library()
    return Envelope(
        data=Runtime(
            pid=os.getpid(),
            python=platform.python_version(),
            implementation=sys.implementation.name,
            async_backend=backend,
            uptime_seconds=web.uptime(),
            rss_bytes=_rss_bytes(),
            max_rss_bytes=usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024),
            cpu_user_seconds=round(usage.ru_utime, 3),
            cpu_system_seconds=round(usage.ru_stime, 3),
            threads=threading.active_count(),
            tasks=_task_count(backend),
            gc_counts=list(gc.get_count()),
            gc_collections=[s["collections"] for s in gc.get_stats()],
            gc_objects=len(gc.get_objects()),
        )
    )


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _task_count(backend: str) -> int | None:
    if backend == "trio":
        import trio

        return int(trio.lowlevel.current_statistics().tasks_living)
    if backend == "asyncio":
        import asyncio  # noqa: TID251 -- counting tasks is backend-specific

        return len(asyncio.all_tasks())
    return None


# -- dependency graphs ---------------------------------------------------------------------


@route(
    "GET",
    f"{V1}/dag/roots",
    access=R,
    data=list[JobView],
    tag="dag",
    query=RootsQuery,
    paged=True,
)
async def dag_roots(web: Web, query: RootsQuery) -> Envelope[list[JobView]]:
    """Jobs that have dependents and no parents (``meta.truncated``: more exist)."""
    roots = await web.client.dag_roots(limit=query.limit + 1)
    now = web.now()
    return Envelope(
        data=[job_view(j, now) for j in roots[: query.limit]],
        meta=PageMeta(limit=query.limit, truncated=len(roots) > query.limit),
    )


@route(
    "GET",
    f"{V1}/dag/deferred",
    access=R,
    data=list[JobView],
    tag="dag",
    query=DeferredQuery,
    paged=True,
)
async def dag_deferred(web: Web, query: DeferredQuery) -> Envelope[list[JobView]]:
    """Jobs waiting for their parents (``pending`` lists the parents still awaited)."""
    if query.queue is not None:
        await _known_queue(web, query.queue)
    jobs = await web.client.dag_deferred(
        query.queue, offset=(query.page - 1) * query.limit, limit=query.limit
    )
    total = await web.client.dag_deferred_count(query.queue)
    now = web.now()
    return Envelope(data=[job_view(j, now) for j in jobs], meta=_page(query, total))


@route(
    "GET",
    f"{V1}/dag/graph/{{id}}",
    access=R,
    data=DagGraph,
    tag="dag",
    params=JOB,
    query=GraphQuery,
)
async def dag_graph(web: Web, id: str, query: GraphQuery) -> Envelope[DagGraph]:
    """The jobs around one job: parents and children, breadth-first."""
    graph = await web.client.dag_graph(id, depth=query.depth, max_nodes=query.max_nodes)
    return Envelope(data=graph, meta=PageMeta(truncated=graph.truncated))
