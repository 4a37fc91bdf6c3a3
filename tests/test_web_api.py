"""The HTTP API (``gqm_web``) end to end: real Redis, real hypercorn, real HTTP.

Every ``/api/v1`` route and ``/health`` is called with real jobs, servers and cron
entries and its body checked; bad input must get a 4xx with a stable ``code`` (never a
500, never a traceback); the API served by ``gqm.Server(api=...)`` starts and stops with
the server; in-flight requests finish during a shutdown; and the OpenAPI document
describes every route.
"""

from __future__ import annotations

import os
import platform
import uuid
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import msgspec
import pytest

import gqm
import gqm_web
from gqm import _scripts as scripts
from gqm._embedded import free_port
from gqm_web import Code
from gqm_web._errors import STATUS
from gqm_web._routing import ROUTES, Access, Route
from gqm_web._types import JobDetail, JobIdsBody, JobView, LoginBody

from .helpers import raw, run_script, serving, serving_after_heartbeat
from .webapp import CSRF, KEYS, Api, FakeClock, running_api, settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

pytestmark = pytest.mark.anyio

ADMIN = {"X-API-Key": KEYS["admin"]}
V1 = "/api/v1"
#: A cron expression that does not fire during a test run (midnight, January 1st).
YEARLY = "0 0 0 1 1 *"
#: Far enough away that an unfinished retry or schedule never comes due in a test.
HOUR_MS = 3_600_000


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture
async def api(client: gqm.Client) -> AsyncIterator[Api]:
    """The API over ``client``, authenticated by API keys only (no password users, so
    no argon2 work per app); ``api.http`` sends the admin key by default."""
    async with running_api(client, settings(users=())) as served:
        served.http.headers.update(ADMIN)
        yield served


def data(response: httpx.Response, status: int = 200) -> Any:
    """The ``data`` of a success envelope, after checking its status and shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert "data" in body
    assert set(body) <= {"data", "meta"}, body
    return body["data"]


def meta(response: httpx.Response) -> Any:
    return response.json()["meta"]


def refused(response: httpx.Response, code: Code) -> str:
    """Check an error response (status of ``code``, ``{error, code}`` JSON body with the
    security headers, no traceback); returns the message."""
    assert "Traceback" not in response.text
    assert response.status_code == STATUS[code], (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-content-type-options"] == "nosniff"
    body = response.json()
    assert set(body) == {"error", "code"}, body
    assert body["code"] == code
    assert isinstance(body["error"], str)
    assert body["error"]
    return str(body["error"])


def as_json(value: Any) -> Any:
    """``value`` as the API encodes it (datetimes as RFC 3339 strings, structs as objects)."""
    return msgspec.json.decode(msgspec.json.encode(value))


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


async def claim(client: gqm.Client, queue: str, *, lease_ms: int = 30_000) -> tuple[str, bytes]:
    """Claim the next ready job of ``queue`` as a worker would; returns (id, token)."""
    q = client.keys.queue(queue)
    attempt = uuid.uuid4().hex
    reply = await run_script(
        client, "claim", scripts.claim_keys(q, attempt), [1, lease_ms, "w", attempt]
    )
    assert reply, f"nothing to claim in {queue!r}"
    return reply[0].decode(), reply[1]


async def finish(
    client: gqm.Client,
    queue: str,
    claimed: tuple[str, bytes],
    outcome: str,
    value: bytes | str = b"",
    n1: int = 0,
    n2: int = 0,
) -> None:
    """Record a claimed job's outcome as a worker would: ``c`` completed (``value`` the
    encoded result, ``n1=1``), ``r`` retry (``value`` the error, ``n1`` the delay in ms,
    ``n2=1`` counts it), ``d`` dead and ``s`` stopped (``value`` the error)."""
    q = client.keys.queue(queue)
    job_id, token = claimed
    args: list[Any] = [-1, -1, client.keys.done_channel, q.wake]
    args += [job_id, token, outcome, value, n1, n2]
    await run_script(client, "finish", scripts.finish_keys(q), args)


async def job_in(client: gqm.Client, queue: str, state: str, payload: Any = None) -> str:
    """A new job of ``queue`` put in ``state`` (the queue must have no other ready job)."""
    if state == "scheduled":
        return (await client.enqueue_in("t", payload, 3600, queue=queue)).id
    job = await client.enqueue("t", payload, queue=queue)
    if state == "ready":
        return job.id
    if state == "canceled":
        assert await client.abort(job.id) == "canceled"
        return job.id
    claimed = await claim(client, queue)
    assert claimed[0] == job.id
    if state == "completed":
        await finish(client, queue, claimed, "c", msgspec.json.encode({"echo": payload}), 1)
    elif state == "dead_letter":
        await finish(client, queue, claimed, "d", "boom")
    elif state == "retry":
        await finish(client, queue, claimed, "r", "flaky", HOUR_MS, 1)
    elif state == "stopped":
        await finish(client, queue, claimed, "s", "stopped by a test")
    else:
        assert state == "processing", state
    return job.id


async def noop(job: gqm.Job[Any]) -> None:
    return None


# -- /health -------------------------------------------------------------------------------


async def test_health_is_public_and_reports_redis(api: Api) -> None:
    """/health needs no credentials and says Redis answers."""
    r = await api.http.get("/health", headers={"X-API-Key": ""})
    health = data(r)
    assert health["status"] == "ok"
    assert health["redis"] is True
    assert health["latency_ms"] >= 0
    assert health["uptime_seconds"] >= 0
    assert health["error"] is None
    assert r.headers["cache-control"] == "no-store"


async def test_health_without_redis_is_degraded_not_an_error() -> None:
    """Redis down: /health answers 503 ``degraded`` and the routes 503 UNAVAILABLE."""
    dead = f"redis://127.0.0.1:{free_port()}"
    async with (
        gqm.Client(dead, prefix="nowhere") as client,
        running_api(client, settings(users=(), api_keys=())) as served,
    ):
        r = await served.http.get("/health")
        assert r.status_code == 503
        health = r.json()["data"]
        assert (health["status"], health["redis"], health["latency_ms"]) == (
            "degraded",
            False,
            None,
        )
        assert health["error"] == "RedisConnectionError"
        refused(await served.http.get(f"{V1}/queues"), Code.UNAVAILABLE)


async def test_health_fails_when_scripts_cannot_run(redis_url: str, prefix: str) -> None:
    """T7: /health is not PING alone. A Redis user that may PING but not run scripts
    (an ACL without @scripting) gets 503 ``degraded``, as the workers would fail."""
    user, password = f"noscripts-{prefix}", "pw-" + prefix
    async with gqm.Client(redis_url, prefix=prefix) as admin:
        await raw(admin, "ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all",
                  "-@scripting")  # fmt: skip
        try:
            async with (
                gqm.Client(redis_url, prefix=prefix, username=user, password=password) as c,
                running_api(c, settings(users=(), api_keys=())) as served,
            ):
                assert await raw(c, "PING") == b"PONG"
                r = await served.http.get("/health")
                assert r.status_code == 503
                health = r.json()["data"]
                assert (health["status"], health["redis"]) == ("degraded", False)
                assert health["error"] == "RedisReplyError"
        finally:
            await raw(admin, "ACL", "DELUSER", user)


async def test_api_key_calls_without_redis_are_unavailable_not_internal() -> None:
    dead = f"redis://127.0.0.1:{free_port()}"
    async with (
        gqm.Client(dead, prefix="nowhere") as client,
        running_api(client, settings(users=())) as served,
    ):
        refused(await served.http.get(f"{V1}/queues", headers=ADMIN), Code.UNAVAILABLE)


# -- queues --------------------------------------------------------------------------------


async def test_queues_list_and_one(client: gqm.Client, api: Api) -> None:
    """/queues lists every queue's sizes (as the client reads them); /queues/{name} one."""
    await job_in(client, "a", "dead_letter")
    await job_in(client, "a", "ready")
    await job_in(client, "a", "scheduled")
    await job_in(client, "b", "completed")
    await client.pause("b")

    listed = data(await api.http.get(f"{V1}/queues"))
    assert listed == as_json(await client.queues())
    assert [q["name"] for q in listed] == ["a", "b"]
    a = data(await api.http.get(f"{V1}/queues/a"))
    assert a == listed[0]
    assert (a["ready"], a["scheduled"], a["dead_letter"], a["failed_total"], a["paused"]) == (
        1,
        1,
        1,
        1,
        False,
    )
    b = data(await api.http.get(f"{V1}/queues/b"))
    assert (b["completed"], b["processed_total"], b["paused"]) == (1, 1, True)


async def test_queue_jobs_by_each_status(client: gqm.Client, api: Api) -> None:
    """/queues/{name}/jobs?status= lists the jobs in that state, without payloads;
    /dead-letter lists the dead ones. Scheduled and retry share an index, as do canceled
    and stopped: the page holds the state asked for, ``total`` counts both."""
    made = {
        state: await job_in(client, "q", state, payload={"state": state})
        for state in (
            "completed",
            "dead_letter",
            "retry",
            "stopped",
            "canceled",
            "processing",
            "scheduled",
        )
    }
    made["deferred"] = (
        await client.enqueue("t", None, queue="q", depends_on=[made["scheduled"]])
    ).id
    made["ready"] = await job_in(client, "q", "ready")
    totals = {"scheduled": 2, "retry": 2, "canceled": 2, "stopped": 2}

    for status, job_id in made.items():
        r = await api.http.get(f"{V1}/queues/q/jobs", params={"status": status})
        page = data(r)
        assert ids(page) == [job_id], status
        assert page[0]["status"] == status
        assert set(page[0]) == set(JobView.__struct_fields__), "listings leave payloads out"
        assert meta(r) == {"page": 1, "limit": 20, "total": totals.get(status, 1)}, status

    r = await api.http.get(f"{V1}/queues/q/dead-letter")
    assert ids(data(r)) == [made["dead_letter"]]
    assert data(r)[0]["error"] == "boom"
    assert meta(r) == {"page": 1, "limit": 20, "total": 1}
    # Without ?status= the ready jobs are listed.
    assert ids(data(await api.http.get(f"{V1}/queues/q/jobs"))) == [made["ready"]]


async def test_pagination_of_job_listings(client: gqm.Client, api: Api) -> None:
    """page/limit cut the list; meta says where the page sits; a page past the end is
    empty; the limits are page <= 10000 and limit <= 100."""
    jobs = await client.enqueue_batch([gqm.BatchItem("t", i, queue="q") for i in range(25)])
    in_order = [j.id for j in jobs]
    for params, expected, page_meta in [
        ({}, in_order[:20], {"page": 1, "limit": 20, "total": 25}),
        ({"limit": 10}, in_order[:10], {"page": 1, "limit": 10, "total": 25}),
        ({"page": 2, "limit": 10}, in_order[10:20], {"page": 2, "limit": 10, "total": 25}),
        ({"page": 3, "limit": 10}, in_order[20:], {"page": 3, "limit": 10, "total": 25}),
        ({"page": 4, "limit": 10}, [], {"page": 4, "limit": 10, "total": 25}),
        ({"page": 10_000, "limit": 100}, [], {"page": 10_000, "limit": 100, "total": 25}),
        ({"limit": 100}, in_order, {"page": 1, "limit": 100, "total": 25}),
    ]:
        r = await api.http.get(f"{V1}/queues/q/jobs", params=params)
        assert ids(data(r)) == expected, params
        assert meta(r) == page_meta, params

    # The dead-letter list pages newest first.
    dead = [await job_in(client, "d", "dead_letter") for _ in range(3)]
    r = await api.http.get(f"{V1}/queues/d/dead-letter", params={"page": 1, "limit": 2})
    assert ids(data(r)) == dead[::-1][:2]
    assert meta(r) == {"page": 1, "limit": 2, "total": 3}

    paged = [
        f"{V1}/queues/q/jobs",
        f"{V1}/queues/q/dead-letter",
        f"{V1}/dag/deferred",
    ]
    for path in paged:
        for params in ({"page": 10_001}, {"limit": 101}, {"page": 0}, {"limit": 0}):
            message = refused(await api.http.get(path, params=params), Code.BAD_REQUEST)
            assert next(iter(params)) in message, (path, params)
    assert data(await api.http.get(f"{V1}/dag/roots", params={"limit": 100})) == []
    refused(await api.http.get(f"{V1}/dag/roots", params={"limit": 101}), Code.BAD_REQUEST)


UNKNOWN_QUEUE_ROUTES = [
    ("GET", f"{V1}/queues/nope"),
    ("GET", f"{V1}/queues/nope/jobs"),
    ("GET", f"{V1}/queues/nope/jobs?status=completed"),
    ("GET", f"{V1}/queues/nope/dead-letter"),
    ("POST", f"{V1}/queues/nope/pause"),
    ("POST", f"{V1}/queues/nope/resume"),
    ("DELETE", f"{V1}/queues/nope/empty"),
    ("POST", f"{V1}/queues/nope/dead-letter/retry-all"),
    ("DELETE", f"{V1}/queues/nope/dead-letter/clear"),
    ("GET", f"{V1}/stats/daily?queue=nope"),
    ("GET", f"{V1}/dag/deferred?queue=nope"),
]


async def test_unknown_queue_is_404_on_every_queue_route(client: gqm.Client, api: Api) -> None:
    """Every route naming a queue answers 404 NOT_FOUND for an unknown one, and does
    not create it."""
    await client.enqueue("t", None, queue="known")
    for method, path in UNKNOWN_QUEUE_ROUTES:
        message = refused(await api.http.request(method, path), Code.NOT_FOUND)
        assert "nope" in message, (method, path)
    assert await client.queue_names() == ["known"]
    assert not await client.is_paused("nope")
    # The routes' table above is complete.
    queue_routes = {(r.method, r.path) for r in ROUTES if "{name}" in r.path}
    named = {(m, p.split("?")[0].replace("/nope", "/{name}")) for m, p in UNKNOWN_QUEUE_ROUTES}
    assert queue_routes <= named


# -- jobs ----------------------------------------------------------------------------------


async def test_job_detail_has_payload_and_result(client: gqm.Client, api: Api) -> None:
    """/jobs/{id}: every field of the job, with its payload and (completed) result.
    Ids may contain ``/``."""
    done = await client.enqueue(
        "t", {"n": [1, 2]}, queue="q", job_id="order/42", meta={"who": "test"}, max_retry=4
    )
    await finish(client, "q", await claim(client, "q"), "c", b'{"sum":3}', 1)
    detail = data(await api.http.get(f"{V1}/jobs/order/42"))
    assert set(detail) == set(JobDetail.__struct_fields__)
    stored = await client.get_job(done.id)
    assert detail["id"] == "order/42"
    assert (detail["type"], detail["queue"], detail["status"]) == ("t", "q", "completed")
    assert (detail["payload"], detail["result"]) == ({"n": [1, 2]}, {"sum": 3})
    assert (detail["meta"], detail["max_retry"], detail["attempt"]) == ({"who": "test"}, 4, 1)
    assert detail["created_at"] == as_json(stored.created_at)
    assert detail["completed_at"] == as_json(stored.completed_at)
    assert (detail["lease_deadline"], detail["stale"], detail["error"]) == (None, False, None)

    dead = await job_in(client, "q", "dead_letter", payload="x")
    detail = data(await api.http.get(f"{V1}/jobs/{dead}"))
    assert (detail["status"], detail["error"], detail["payload"], detail["result"]) == (
        "dead_letter",
        "boom",
        "x",
        None,
    )
    refused(await api.http.get(f"{V1}/jobs/no-such-job"), Code.NOT_FOUND)


async def test_running_job_has_its_lease_and_goes_stale_once_it_expires(
    client: gqm.Client,
) -> None:
    """A processing job shows its lease deadline; ``stale`` turns true once the API's
    clock passes it (the worker is presumed dead)."""
    job = await client.enqueue("t", {"x": 1}, queue="q")
    await claim(client, "q", lease_ms=5_000)
    stored = await client.get_job(job.id)
    assert stored.lease_deadline is not None
    deadline = stored.lease_deadline.timestamp()
    clock = FakeClock(start=deadline - 1)
    async with running_api(client, settings(users=()), clock=clock) as served:
        served.http.headers.update(ADMIN)
        detail = data(await served.http.get(f"{V1}/jobs/{job.id}"))
        assert detail["status"] == "processing"
        assert detail["lease_deadline"] == as_json(stored.lease_deadline)
        assert detail["started_at"] == as_json(stored.started_at)
        assert (detail["worker_id"], detail["stale"]) == ("w", False)
        (listed,) = data(await served.http.get(f"{V1}/queues/q/jobs?status=processing"))
        assert (listed["lease_deadline"], listed["stale"]) == (detail["lease_deadline"], False)

        clock.advance(2)
        assert data(await served.http.get(f"{V1}/jobs/{job.id}"))["stale"] is True
        (listed,) = data(await served.http.get(f"{V1}/queues/q/jobs?status=processing"))
        assert listed["stale"] is True


async def test_retry_one_job(client: gqm.Client, api: Api) -> None:
    """Dead, canceled and stopped jobs are requeued; others are a 409; unknown a 404."""
    for state in ("dead_letter", "canceled", "stopped"):
        job_id = await job_in(client, "q", state)
        r = await api.http.post(f"{V1}/jobs/{job_id}/retry")
        assert data(r) == {"job_id": job_id, "outcome": "retried"}
        again = await client.get_job(job_id)
        assert (again.status, again.error) == (gqm.JobStatus.READY, None)
        message = refused(await api.http.post(f"{V1}/jobs/{job_id}/retry"), Code.CONFLICT)
        assert job_id in message
        # Leave the queue without ready jobs for the next state.
        assert await client.delete(job_id) == {job_id: "deleted"}
    refused(await api.http.post(f"{V1}/jobs/nope/retry"), Code.NOT_FOUND)


async def test_cancel_one_job(client: gqm.Client, api: Api) -> None:
    """A waiting job is canceled; a running one is signalled; a finished one is 409."""
    parent = await job_in(client, "p", "scheduled")
    waiting = await client.enqueue("t", None, queue="q", depends_on=[parent])
    for job_id, outcome in [
        (await job_in(client, "q", "ready"), "canceled"),
        (waiting.id, "canceled"),
        (await job_in(client, "q", "scheduled"), "canceled"),
        (await job_in(client, "r", "processing"), "signalled"),
    ]:
        assert data(await api.http.post(f"{V1}/jobs/{job_id}/cancel")) == {
            "job_id": job_id,
            "outcome": outcome,
        }
    assert (await client.get_job(waiting.id)).status is gqm.JobStatus.CANCELED
    for state in ("completed", "canceled", "dead_letter"):
        job_id = await job_in(client, "c", state)
        message = refused(await api.http.post(f"{V1}/jobs/{job_id}/cancel"), Code.CONFLICT)
        assert state in message
        assert (await client.get_job(job_id)).status == state
    refused(await api.http.post(f"{V1}/jobs/nope/cancel"), Code.NOT_FOUND)


async def test_delete_one_job(client: gqm.Client, api: Api) -> None:
    """204 with no body; a running job is a 409 (and stays); an unknown one a 404."""
    for state in ("ready", "dead_letter", "completed", "scheduled"):
        job_id = await job_in(client, "q", state)
        r = await api.http.delete(f"{V1}/jobs/{job_id}")
        assert (r.status_code, r.content) == (204, b""), state
        refused(await api.http.get(f"{V1}/jobs/{job_id}"), Code.NOT_FOUND)
    running = await job_in(client, "q", "processing")
    message = refused(await api.http.delete(f"{V1}/jobs/{running}"), Code.CONFLICT)
    assert "cancel" in message
    assert (await client.get_job(running)).status is gqm.JobStatus.PROCESSING
    refused(await api.http.delete(f"{V1}/jobs/nope"), Code.NOT_FOUND)


async def test_batch_retry_and_delete(client: gqm.Client, api: Api) -> None:
    """Per-id outcomes; a duplicate id is handled once; 100 ids pass, 101 are a 400."""
    dead = await job_in(client, "q", "dead_letter")
    other_dead = await job_in(client, "q", "dead_letter")
    ready = await job_in(client, "q", "ready")
    r = await api.http.post(
        f"{V1}/jobs/batch/retry", json={"job_ids": [dead, dead, other_dead, ready, "nope"]}
    )
    assert data(r) == {
        "results": {
            dead: "retried",
            other_dead: "retried",
            ready: "not_retryable",
            "nope": "not_found",
        }
    }
    info = await client.queue_info("q")
    assert (info.ready, info.dead_letter) == (3, 0)

    running = await job_in(client, "busy", "processing")
    r = await api.http.post(
        f"{V1}/jobs/batch/delete", json={"job_ids": [ready, ready, running, "nope"]}
    )
    # A second attempt at a duplicate would have answered not_found.
    assert data(r) == {"results": {ready: "deleted", running: "processing", "nope": "not_found"}}
    refused(await api.http.get(f"{V1}/jobs/{ready}"), Code.NOT_FOUND)

    hundred = [f"missing-{i}" for i in range(100)]
    for route in ("retry", "delete"):
        r = await api.http.post(f"{V1}/jobs/batch/{route}", json={"job_ids": hundred})
        assert data(r)["results"] == dict.fromkeys(hundred, "not_found")
        r = await api.http.post(
            f"{V1}/jobs/batch/{route}", json={"job_ids": [*hundred, "one-too-many"]}
        )
        assert "100" in refused(r, Code.BAD_REQUEST)
    assert (await client.get_job(running)).status is gqm.JobStatus.PROCESSING


# -- queue admin ---------------------------------------------------------------------------


async def test_pause_resume_and_empty(client: gqm.Client, api: Api) -> None:
    """Pause and resume show in the queue's info; empty cancels the ready jobs."""
    await client.enqueue_batch([gqm.BatchItem("t", i, queue="q") for i in range(3)])
    scheduled = await job_in(client, "q", "scheduled")
    for action, paused in [("pause", True), ("pause", True), ("resume", False)]:
        r = await api.http.post(f"{V1}/queues/q/{action}")
        assert data(r) == {"queue": "q", "paused": paused}
        assert data(await api.http.get(f"{V1}/queues/q"))["paused"] is paused
        assert await client.is_paused("q") is paused

    r = await api.http.delete(f"{V1}/queues/q/empty")
    assert data(r) == {"queue": "q", "action": "canceled", "count": 3}
    info = data(await api.http.get(f"{V1}/queues/q"))
    assert (info["ready"], info["canceled"], info["scheduled"]) == (0, 3, 1)
    assert (await client.get_job(scheduled)).status is gqm.JobStatus.SCHEDULED
    r = await api.http.delete(f"{V1}/queues/q/empty")
    assert data(r)["count"] == 0


async def test_dead_letter_retry_all_and_clear(client: gqm.Client, api: Api) -> None:
    """retry-all requeues every dead job; clear deletes them."""
    first = [await job_in(client, "q", "dead_letter") for _ in range(3)]
    r = await api.http.post(f"{V1}/queues/q/dead-letter/retry-all")
    assert data(r) == {"queue": "q", "action": "retried", "count": 3}
    info = data(await api.http.get(f"{V1}/queues/q"))
    assert (info["ready"], info["dead_letter"]) == (3, 0)
    for job_id in first:
        assert (await client.get_job(job_id)).status is gqm.JobStatus.READY
        await finish(client, "q", await claim(client, "q"), "d", "again")

    r = await api.http.delete(f"{V1}/queues/q/dead-letter/clear")
    assert data(r) == {"queue": "q", "action": "cleared", "count": 3}
    assert data(await api.http.get(f"{V1}/queues/q"))["dead_letter"] == 0
    for job_id in first:
        refused(await api.http.get(f"{V1}/jobs/{job_id}"), Code.NOT_FOUND)
    r = await api.http.post(f"{V1}/queues/q/dead-letter/retry-all")
    assert data(r)["count"] == 0


# -- servers and workers -------------------------------------------------------------------


async def test_servers_and_workers(
    client: gqm.Client,
    api: Api,
    make_server: Callable[..., gqm.Server],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A serving server and its pools are listed and read by id (pool names may hold
    ``:``); once it stopped they are gone."""
    server = make_server(concurrency=3)
    server.handle("t", noop)
    server.handle("email", noop, workers=2, queue="emails")
    sid = server.server_id
    async with serving_after_heartbeat(server, monkeypatch):
        servers = data(await api.http.get(f"{V1}/servers"))
        assert ids(servers) == [sid]
        one = data(await api.http.get(f"{V1}/servers/{sid}"))
        assert (one["id"], one["pid"], one["inflight"]) == (sid, os.getpid(), 0)
        assert sorted(p["name"] for p in one["pools"]) == ["default", "handler:email"]

        workers = data(await api.http.get(f"{V1}/workers"))
        assert ids(workers) == [f"{sid}:default", f"{sid}:handler:email"]
        email = data(await api.http.get(f"{V1}/workers/{sid}:handler:email"))
        assert {k: v for k, v in email.items() if k != "heartbeat_at"} == {
            "id": f"{sid}:handler:email",
            "name": "handler:email",
            "server_id": sid,
            "queues": ["emails"],
            "concurrency": 2,
            "active": 0,
            "strategy": "weighted",
        }
        totals = data(await api.http.get(f"{V1}/stats"))
        assert (totals["servers"], totals["workers"]) == (1, 5)
        refused(await api.http.get(f"{V1}/workers/{sid}:nope"), Code.NOT_FOUND)
        refused(await api.http.get(f"{V1}/servers/no-such-server"), Code.NOT_FOUND)
    assert data(await api.http.get(f"{V1}/servers")) == []
    assert data(await api.http.get(f"{V1}/workers")) == []
    refused(await api.http.get(f"{V1}/servers/{sid}"), Code.NOT_FOUND)
    refused(await api.http.get(f"{V1}/workers/{sid}:default"), Code.NOT_FOUND)


# -- cron ----------------------------------------------------------------------------------


async def test_cron_entries_history_trigger_enable_disable(
    client: gqm.Client, api: Api, make_server: Callable[..., gqm.Server]
) -> None:
    """Entries registered by a server are listed and read; a trigger enqueues the
    entry's job and shows in its history; disable/enable toggle it for every server."""
    server = make_server()
    server.schedule(
        gqm.CronEntry(
            id="nightly",
            name="Nightly report",
            cron_expr=YEARLY,
            job_type="report",
            queue="reports",
            payload={"n": 1},
        )
    )
    server.schedule(gqm.CronEntry(id="other", cron_expr=YEARLY, job_type="x", enabled=False))
    async with serving(server):
        entries = data(await api.http.get(f"{V1}/cron"))
        assert ids(entries) == ["nightly", "other"]
        nightly = data(await api.http.get(f"{V1}/cron/nightly"))
        assert nightly == entries[0]
        assert {k: v for k, v in nightly.items() if k != "next_run"} == {
            "id": "nightly",
            "name": "Nightly report",
            "cron_expr": YEARLY,
            "timezone": "UTC",
            "job_type": "report",
            "queue": "reports",
            "payload": {"n": 1},
            "overlap_policy": "skip",
            "enabled": True,
            "last_run": None,
        }
        next_run = datetime.fromisoformat(nightly["next_run"])
        assert (next_run.month, next_run.day, next_run.hour) == (1, 1, 0)
        assert (entries[1]["enabled"], entries[1]["next_run"]) == (False, None)
        assert data(await api.http.get(f"{V1}/cron/nightly/history")) == []

        triggered = data(await api.http.post(f"{V1}/cron/nightly/trigger"))
        assert triggered["entry_id"] == "nightly"
        job = data(await api.http.get(f"{V1}/jobs/{triggered['job_id']}"))
        assert (job["type"], job["queue"], job["payload"], job["status"]) == (
            "report",
            "reports",
            {"n": 1},
            "ready",
        )
        data(await api.http.post(f"{V1}/cron/nightly/trigger"))
        history = data(await api.http.get(f"{V1}/cron/nightly/history"))
        assert len(history) == 2
        assert history[1]["job_id"] == triggered["job_id"]
        assert [h["outcome"] for h in history] == ["triggered", "triggered"]
        fired = [datetime.fromisoformat(h["fired_at"]) for h in history]
        assert fired[0] >= fired[1]
        latest = data(await api.http.get(f"{V1}/cron/nightly/history", params={"limit": 1}))
        assert latest == history[:1]

        r = await api.http.post(f"{V1}/cron/nightly/disable")
        assert data(r) == {"entry_id": "nightly", "enabled": False}
        off = data(await api.http.get(f"{V1}/cron/nightly"))
        assert (off["enabled"], off["next_run"]) == (False, None)
        r = await api.http.post(f"{V1}/cron/other/enable")
        assert data(r) == {"entry_id": "other", "enabled": True}
        on = data(await api.http.get(f"{V1}/cron/other"))
        assert on["enabled"] is True
        assert on["next_run"] is not None

        for method, path in [
            ("GET", "nope"),
            ("GET", "nope/history"),
            ("POST", "nope/trigger"),
            ("POST", "nope/enable"),
            ("POST", "nope/disable"),
        ]:
            refused(await api.http.request(method, f"{V1}/cron/{path}"), Code.NOT_FOUND)


# -- stats ---------------------------------------------------------------------------------


async def test_stats_daily_and_runtime(client: gqm.Client, api: Api, anyio_backend: str) -> None:
    """/stats totals every queue; /stats/daily counts per day and queue; /stats/runtime
    describes this process and its async backend."""
    for _ in range(2):
        await job_in(client, "a", "dead_letter")
    await job_in(client, "a", "ready")
    for _ in range(3):
        await job_in(client, "b", "completed")
    await client.pause("b")

    totals = data(await api.http.get(f"{V1}/stats"))
    assert totals == as_json(await client.stats())
    assert (totals["queues"], totals["ready"], totals["dead_letter"]) == (2, 1, 2)
    assert (totals["completed"], totals["paused"], totals["servers"]) == (3, 1, 0)

    daily = data(await api.http.get(f"{V1}/stats/daily"))
    assert [d["queue"] for d in daily] == ["a"] * 7 + ["b"] * 7
    dates = [d["date"] for d in daily[:7]]
    assert dates == sorted(dates)
    assert dates == [d["date"] for d in daily[7:]]
    today_a, today_b = daily[6], daily[13]
    assert (today_a["processed"], today_a["failed"]) == (0, 2)
    assert (today_b["processed"], today_b["failed"]) == (3, 0)
    assert all(d["processed"] == d["failed"] == 0 for d in daily[:6] + daily[7:13])

    two = data(await api.http.get(f"{V1}/stats/daily", params={"queue": "a", "days": 2}))
    assert two == daily[5:7]
    assert len(data(await api.http.get(f"{V1}/stats/daily", params={"days": 90}))) == 180

    runtime = data(await api.http.get(f"{V1}/stats/runtime"))
    assert runtime["async_backend"] == anyio_backend
    assert runtime["pid"] == os.getpid()
    assert runtime["python"] == platform.python_version()
    assert runtime["tasks"] >= 1
    assert runtime["threads"] >= 1
    assert len(runtime["gc_counts"]) == 3


# -- dependency graphs ---------------------------------------------------------------------


async def test_dag_roots_deferred_and_graph(client: gqm.Client, api: Api) -> None:
    """Roots are parents without parents; deferred jobs wait with ``pending`` parents;
    the graph walks both ways, cut short by depth or max_nodes."""
    parent = await client.enqueue("t", "p", queue="q1")
    child = await client.enqueue("t", "c", queue="q2", depends_on=[parent.id])
    grandchild = await client.enqueue("t", "g", queue="q2", depends_on=[child.id])
    other_root = await client.enqueue("t", "o", queue="q1")
    other_child = await client.enqueue("t", "oc", queue="q2", depends_on=[other_root.id])

    r = await api.http.get(f"{V1}/dag/roots")
    assert sorted(ids(data(r))) == sorted([parent.id, other_root.id])
    assert meta(r) == {"limit": 50, "truncated": False}
    r = await api.http.get(f"{V1}/dag/roots", params={"limit": 1})
    assert len(data(r)) == 1
    assert meta(r) == {"limit": 1, "truncated": True}

    r = await api.http.get(f"{V1}/dag/deferred")
    deferred = data(r)
    assert ids(deferred) == [child.id, grandchild.id, other_child.id]
    assert [d["pending"] for d in deferred] == [[parent.id], [child.id], [other_root.id]]
    assert meta(r) == {"page": 1, "limit": 20, "total": 3}
    r = await api.http.get(f"{V1}/dag/deferred", params={"queue": "q2", "page": 2, "limit": 2})
    assert ids(data(r)) == [other_child.id]
    assert meta(r) == {"page": 2, "limit": 2, "total": 3}
    r = await api.http.get(f"{V1}/dag/deferred", params={"queue": "q1"})
    assert (data(r), meta(r)) == ([], {"page": 1, "limit": 20, "total": 0})

    r = await api.http.get(f"{V1}/dag/graph/{child.id}")
    graph = data(r)
    assert {n["id"] for n in graph["nodes"]} == {parent.id, child.id, grandchild.id}
    assert {(n["id"], n["status"]) for n in graph["nodes"]} >= {(parent.id, "ready")}
    assert sorted(map(tuple, graph["edges"])) == sorted(
        [(parent.id, child.id), (child.id, grandchild.id)]
    )
    assert graph["truncated"] is False
    assert meta(r) == {"truncated": False}

    r = await api.http.get(f"{V1}/dag/graph/{parent.id}", params={"depth": 1})
    assert {n["id"] for n in data(r)["nodes"]} == {parent.id, child.id}
    assert meta(r) == {"truncated": True}
    r = await api.http.get(f"{V1}/dag/graph/{child.id}", params={"max_nodes": 1})
    assert [n["id"] for n in data(r)["nodes"]] == [child.id]
    assert data(r)["edges"] == []
    assert meta(r) == {"truncated": True}
    refused(await api.http.get(f"{V1}/dag/graph/nope"), Code.NOT_FOUND)


# -- every route ---------------------------------------------------------------------------


def concrete(route: Route, *, queue: str = "q", ident: str = "nope") -> str:
    """The route's path with its parameters filled in."""
    return route.path.replace("{name}", queue).replace("{id}", ident)


def valid_body(route: Route) -> dict[str, Any]:
    """httpx keywords for a well-formed body of the route (none if it takes none)."""
    if route.body is JobIdsBody:
        return {"json": {"job_ids": ["nope"]}}
    if route.body is LoginBody:
        return {"json": {"username": "nobody", "password": "wrong"}}
    assert route.body is None, route.body
    return {}


async def test_every_admin_route_refuses_viewers(client: gqm.Client, api: Api) -> None:
    """A viewer's key reads but changes nothing: every admin route is 403 FORBIDDEN."""
    await client.enqueue("t", None, queue="q", job_id="j")
    admin_routes = [r for r in ROUTES if r.access is Access.ADMIN]
    # Every change under /api/v1 needs the admin role (13 routes).
    assert admin_routes == [r for r in ROUTES if r.mutating and r.path.startswith(V1)]
    assert len(admin_routes) == 13
    viewer = {"X-API-Key": KEYS["viewer"]}
    for route in admin_routes:
        path = concrete(route, ident="j")
        r = await api.http.request(route.method, path, headers=viewer, **valid_body(route))
        refused(r, Code.FORBIDDEN)
    assert (await client.queue_info("q")).ready == 1
    assert not await client.is_paused("q")
    assert data(await api.http.get(f"{V1}/queues/q", headers=viewer))["ready"] == 1


async def test_every_route_answers_unknown_ids_without_a_server_error(
    client: gqm.Client, api: Api
) -> None:
    """Each declared route, called with ids that exist nowhere, answers a success or a
    4xx error body; never a 5xx."""
    await client.enqueue("t", None, queue="q")
    for route in ROUTES:
        r = await api.http.request(route.method, concrete(route), **valid_body(route))
        assert r.status_code < 500, (route.method, route.path, r.text)
        assert "Traceback" not in r.text
        if r.status_code >= 400:
            assert r.json()["code"] in set(Code), (route.method, route.path)


# -- bad input -----------------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}
TEXT = {"Content-Type": "text/plain"}
BATCH = f"{V1}/jobs/batch/retry"


async def _oversize_chunks() -> AsyncIterator[bytes]:
    """A body over 64 KiB sent chunked (no Content-Length to refuse it by)."""
    yield b'{"job_ids": ["'
    for _ in range(10):
        yield b"x" * 8192
    yield b'"]}'


BAD, MISSING = Code.BAD_REQUEST, Code.NOT_FOUND
MEDIA, TOO_LARGE = Code.UNSUPPORTED_MEDIA_TYPE, Code.PAYLOAD_TOO_LARGE
GOOD_BODY = b'{"job_ids": ["a"]}'


def case(name: str, method: str, path: str, code: Code, **request: Any) -> Any:
    """One bad request: ``request`` holds httpx keywords (``json=``, ``content=``...)."""
    return pytest.param(method, path, request, code, id=name)


BAD_INPUT = [
    # Bodies.
    case("malformed-json", "POST", BATCH, BAD, content=b'{"job_ids": [', headers=JSON),
    case("not-utf8", "POST", BATCH, BAD, content=b"\xff\xfe{}", headers=JSON),
    case("empty-body", "POST", BATCH, BAD, content=b"", headers=JSON),
    case("json-null", "POST", BATCH, BAD, content=b"null", headers=JSON),
    case("json-array", "POST", BATCH, BAD, json=["a"]),
    case("missing-field", "POST", BATCH, BAD, json={}),
    case("ids-not-a-list", "POST", BATCH, BAD, json={"job_ids": "a"}),
    case("id-not-a-string", "POST", BATCH, BAD, json={"job_ids": [1]}),
    case("no-ids", "POST", BATCH, BAD, json={"job_ids": []}),
    case("unknown-field", "POST", BATCH, BAD, json={"job_ids": ["a"], "force": True}),
    case("body-id-control-char", "POST", BATCH, BAD, json={"job_ids": ["a\x01b"]}),
    case("body-id-newline", "POST", BATCH, BAD, json={"job_ids": ["a\n"]}),
    case("body-id-space", "POST", BATCH, BAD, json={"job_ids": ["a b"]}),
    case("body-id-too-long", "POST", BATCH, BAD, json={"job_ids": ["x" * 257]}),
    case("body-id-empty", "POST", f"{V1}/jobs/batch/delete", BAD, json={"job_ids": [""]}),
    case("no-content-type", "POST", BATCH, MEDIA, content=GOOD_BODY),
    case("text-plain", "POST", BATCH, MEDIA, content=GOOD_BODY, headers=TEXT),
    case("form-encoded", "POST", BATCH, MEDIA, data={"job_ids": "a"}),
    case("oversize-body", "POST", BATCH, TOO_LARGE, json={"job_ids": ["x" * 70_000]}),
    case("oversize-chunked", "POST", BATCH, TOO_LARGE, content=_oversize_chunks, headers=JSON),
    # Ids in paths.
    case("job-id-control-char", "GET", f"{V1}/jobs/a%01b", BAD),
    case("job-id-nul", "GET", f"{V1}/jobs/%00", BAD),
    case("job-id-del", "GET", f"{V1}/jobs/a%7F", BAD),
    case("job-id-space", "GET", f"{V1}/jobs/a%20b", BAD),
    case("job-id-too-long", "GET", f"{V1}/jobs/{'x' * 257}", BAD),
    case("delete-id-too-long", "DELETE", f"{V1}/jobs/{'x' * 257}", BAD),
    case("retry-id-control-char", "POST", f"{V1}/jobs/a%01/retry", BAD),
    case("cancel-id-control-char", "POST", f"{V1}/jobs/a%01/cancel", BAD),
    case("graph-id-control-char", "GET", f"{V1}/dag/graph/a%01", BAD),
    case("cron-id-control-char", "GET", f"{V1}/cron/a%01", BAD),
    case("cron-id-too-long", "POST", f"{V1}/cron/{'x' * 257}/trigger", BAD),
    case("server-id-control-char", "GET", f"{V1}/servers/a%01", BAD),
    case("worker-id-too-long", "GET", f"{V1}/workers/{'x' * 513}", BAD),
    # Queue names.
    case("queue-bang", "GET", f"{V1}/queues/bad!name", BAD),
    case("queue-space", "GET", f"{V1}/queues/bad%20name/jobs", BAD),
    case("queue-newline", "GET", f"{V1}/queues/q%0A/jobs", BAD),
    case("pause-queue-newline", "POST", f"{V1}/queues/q%0A/pause", BAD),
    case("queue-non-ascii", "DELETE", f"{V1}/queues/%C3%A9/empty", BAD),
    case("queue-too-long", "GET", f"{V1}/queues/{'q' * 129}", BAD),
    case("daily-queue-bang", "GET", f"{V1}/stats/daily?queue=bad!", BAD),
    case("deferred-queue-bad", "GET", f"{V1}/dag/deferred?queue=%FF", BAD),
    # Query values.
    case("page-0", "GET", f"{V1}/queues/q/jobs?page=0", BAD),
    case("page-negative", "GET", f"{V1}/queues/q/jobs?page=-1", BAD),
    case("page-fraction", "GET", f"{V1}/queues/q/jobs?page=1.5", BAD),
    case("page-text", "GET", f"{V1}/queues/q/jobs?page=two", BAD),
    case("page-huge", "GET", f"{V1}/queues/q/jobs?page=99999999999999999999999", BAD),
    case("limit-empty", "GET", f"{V1}/queues/q/jobs?limit=", BAD),
    case("limit-101", "GET", f"{V1}/queues/q/jobs?limit=101", BAD),
    case("status-bogus", "GET", f"{V1}/queues/q/jobs?status=bogus", BAD),
    case("status-unlistable", "GET", f"{V1}/queues/q/jobs?status=failed", BAD),
    case("dead-limit-0", "GET", f"{V1}/queues/q/dead-letter?limit=0", BAD),
    case("days-91", "GET", f"{V1}/stats/daily?days=91", BAD),
    case("days-0", "GET", f"{V1}/stats/daily?days=0", BAD),
    case("depth-0", "GET", f"{V1}/dag/graph/j?depth=0", BAD),
    case("depth-21", "GET", f"{V1}/dag/graph/j?depth=21", BAD),
    case("max-nodes-201", "GET", f"{V1}/dag/graph/j?max_nodes=201", BAD),
    case("roots-limit-0", "GET", f"{V1}/dag/roots?limit=0", BAD),
    case("history-limit-101", "GET", f"{V1}/cron/x/history?limit=101", BAD),
    # Unknown routes.
    case("unknown-route", "GET", f"{V1}/nope", MISSING),
    case("unknown-version", "GET", "/api/v2/queues", MISSING),
    case("unknown-subroute", "GET", f"{V1}/queues/q/nope", MISSING),
    case("empty-job-id", "GET", f"{V1}/jobs/", MISSING),
    case("unknown-batch", "POST", f"{V1}/batch/retry", MISSING, json={"job_ids": ["a"]}),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "code"), BAD_INPUT)
async def test_bad_input_is_a_4xx_with_a_code(
    client: gqm.Client, api: Api, method: str, path: str, kwargs: dict[str, Any], code: Code
) -> None:
    """Bad input is refused with the status of its ``code`` and changes nothing."""
    await client.enqueue("t", None, queue="q", job_id="j")
    kwargs = dict(kwargs)
    if callable(kwargs.get("content")):
        kwargs["content"] = kwargs["content"]()
    r = await api.http.request(method, path, **kwargs)
    refused(r, code)
    assert data(await api.http.get(f"{V1}/queues/q"))["ready"] == 1
    assert await client.queue_names() == ["q"]


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        (f"{V1}/queues/bad!name", "1 to 128 characters among A-Z a-z 0-9 . _ : -"),
        (f"{V1}/jobs/{'x' * 300}", "1 to 256 characters, none of them whitespace"),
        (f"{V1}/workers/a%01", "1 to 512 characters, none of them whitespace"),
    ],
)
async def test_refused_path_parameters_say_the_rule(api: Api, path: str, rule: str) -> None:
    """A refused id or queue name is told the rule in words, not as a regex, and the
    error repeats at most 80 characters of what was sent."""
    message = refused(await api.http.get(path), Code.BAD_REQUEST)
    assert rule in message
    assert "regex" not in message
    assert "x" * 81 not in message


WRONG_METHODS = [
    ("PUT", f"{V1}/queues", {"GET", "HEAD"}),
    ("POST", f"{V1}/queues/q", {"GET", "HEAD"}),
    ("DELETE", "/health", {"GET", "HEAD"}),
    ("OPTIONS", f"{V1}/stats", {"GET", "HEAD"}),
    ("GET", f"{V1}/queues/q/pause", {"POST"}),
    ("POST", f"{V1}/queues/q/empty", {"DELETE"}),
    ("GET", f"{V1}/queues/q/dead-letter/clear", {"DELETE"}),
    ("PATCH", f"{V1}/jobs/j", {"GET", "HEAD", "DELETE"}),
    ("GET", f"{V1}/cron/x/trigger", {"POST"}),
    ("DELETE", f"{V1}/cron/x", {"GET", "HEAD"}),
    ("PUT", f"{V1}/openapi.json", {"GET", "HEAD"}),
]


async def test_wrong_methods_are_405_with_allow(client: gqm.Client, api: Api) -> None:
    """A known path with a wrong method: 405 METHOD_NOT_ALLOWED naming the allowed ones."""
    await client.enqueue("t", None, queue="q", job_id="j")
    for method, path, allowed in WRONG_METHODS:
        r = await api.http.request(method, path)
        refused(r, Code.METHOD_NOT_ALLOWED)
        assert set(r.headers["allow"].split(", ")) == allowed, (method, path)
    assert (await client.queue_info("q")).ready == 1


# -- serving inside gqm.Server -------------------------------------------------------------


async def _refuses_connections(host: str, port: int) -> bool:
    try:
        stream = await anyio.connect_tcp(host, port)
    except OSError:
        return True
    await stream.aclose()
    return False


async def _until_refused(host: str, port: int) -> None:
    """Wait until the listener on ``host:port`` is closed (the server acts on a shutdown
    over a few turns of its event loop; each check lets it run until it blocks)."""
    with anyio.fail_after(10):
        while not await _refuses_connections(host, port):
            await anyio.wait_all_tasks_blocked()


async def test_server_serves_the_api_until_shutdown(
    make_server: Callable[..., gqm.Server], monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    """``Server(api=WebSettings(...))`` serves the API while it serves jobs: /health
    is ok and the server lists itself; after shutdown the port is closed."""
    server = make_server(api=settings(users=()))
    server.handle("t", noop)
    assert server.api_address is None
    async with serving_after_heartbeat(server, monkeypatch):
        assert server.api_address is not None
        host, port = server.api_address
        assert (host, port != 0) == ("127.0.0.1", True)
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", headers=ADMIN) as http:
            assert data(await http.get("/health"))["status"] == "ok"
            assert ids(data(await http.get(f"{V1}/servers"))) == [server.server_id]
            assert data(await http.get(f"{V1}/queues/default"))["name"] == "default"
            runtime = data(await http.get(f"{V1}/stats/runtime"))
            assert runtime["async_backend"] == anyio_backend
            refused(await http.get(f"{V1}/queues", headers={"X-API-Key": ""}), Code.UNAUTHORIZED)
    assert await _refuses_connections(host, port)


@pytest.mark.parametrize("addr", ["0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:8080"])
def test_api_without_auth_must_listen_on_loopback(
    make_server: Callable[..., gqm.Server], addr: str
) -> None:
    """Without users or keys every caller is an admin: only loopback is allowed."""
    with pytest.raises(gqm.ConfigurationError, match="loopback"):
        make_server(api=addr)
    with pytest.raises(gqm.ConfigurationError, match="loopback"):
        make_server(api=gqm_web.WebSettings(addr=addr))
    # With a key the same address is fine.
    assert make_server(api=settings(addr=addr, users=())).api_address is None


@pytest.mark.parametrize(
    ("value", "message"),
    [("localhost", "invalid address"), ("127.0.0.1:99999", "invalid address"), (8080, "api must")],
)
def test_api_setting_is_checked_when_the_server_is_built(
    make_server: Callable[..., gqm.Server], value: Any, message: str
) -> None:
    """``api=`` must be an address or WebSettings; a bad one fails at once."""
    with pytest.raises(gqm.ConfigurationError, match=message):
        make_server(api=value)


async def test_api_on_loopback_without_auth(make_server: Callable[..., gqm.Server]) -> None:
    """``api="127.0.0.1:0"``: no credentials needed, every caller is an admin, but
    changes still need the CSRF header."""
    server = make_server(api="127.0.0.1:0")
    server.handle("t", noop)
    async with serving(server):
        assert server.api_address is not None
        host, port = server.api_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as http:
            me = data(await http.get("/auth/me"))
            assert me == {"username": "anonymous", "role": "admin", "via": "none"}
            assert data(await http.get(f"{V1}/queues/default"))["paused"] is False
            refused(await http.post(f"{V1}/queues/default/pause"), Code.CSRF_REQUIRED)
            assert data(await http.get(f"{V1}/queues/default"))["paused"] is False
            r = await http.post(f"{V1}/queues/default/pause", headers=CSRF)
            assert data(r) == {"queue": "default", "paused": True}
            r = await http.post(f"{V1}/queues/default/resume", headers=CSRF)
            assert data(r) == {"queue": "default", "paused": False}


async def test_shutdown_lets_an_in_flight_request_finish(
    client: gqm.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once shutdown starts the listener is closed, but a request already being handled
    still gets its whole response."""
    await client.enqueue("t", None, queue="q")
    web_settings = settings(users=())
    app = gqm_web.create_app(client, web_settings)
    started, release, stop = anyio.Event(), anyio.Event(), anyio.Event()
    queues = client.queues

    async def slow_queues() -> list[gqm.QueueInfo]:
        started.set()
        await release.wait()
        return await queues()

    monkeypatch.setattr(client, "queues", slow_queues)
    responses: list[httpx.Response] = []
    async with anyio.create_task_group() as tg:
        host, port = await tg.start(
            partial(gqm_web.serve_app, app, web_settings, shutdown_trigger=stop.wait)
        )
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", headers=ADMIN) as http:

            async def call() -> None:
                responses.append(await http.get(f"{V1}/queues"))

            async with anyio.create_task_group() as requests:
                requests.start_soon(call)
                await started.wait()
                stop.set()
                await _until_refused(host, port)
                assert not responses
                release.set()
    (response,) = responses
    assert [q["name"] for q in data(response)] == ["q"]
    assert response.headers["content-length"] == str(len(response.content))
    assert await _refuses_connections(host, port)


# -- the OpenAPI document ------------------------------------------------------------------


def _refs(node: Any) -> list[str]:
    """Every ``$ref`` in a JSON document."""
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


async def test_openapi_document_describes_every_route(api: Api) -> None:
    """OpenAPI 3.1 with one operation per declared route (36), and every schema
    reference resolvable in its components."""
    r = await api.http.get(f"{V1}/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"] == "3.1.0"
    assert len(ROUTES) == 36
    operations = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert operations == {(route.method, route.path) for route in ROUTES}
    schemas = doc["components"]["schemas"]
    refs = _refs(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        assert op["operationId"] == route.endpoint_name
        success = op["responses"][str(route.status)]
        if route.data is None:
            assert "content" not in success, route.path
        else:
            assert "schema" in success["content"]["application/json"], route.path
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}
        path_params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert path_params == set(route.params), route.path
    # The document is served to viewers, and not to anonymous callers.
    assert (
        await api.http.get(f"{V1}/openapi.json", headers={"X-API-Key": KEYS["viewer"]})
    ).is_success
    refused(await api.http.get(f"{V1}/openapi.json", headers={"X-API-Key": ""}), Code.UNAUTHORIZED)
