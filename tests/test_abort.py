"""Client.abort against a real Redis: waiting jobs are canceled at once (with their
dependents), running jobs are stopped by their server, finished jobs are left alone."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import gqm
from gqm._dag import drain_outboxes

from .helpers import Gate, raw, serving

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio

_CANCELED_TTL_MS = 86_400_000


async def _assert_canceled(client: gqm.Client, job_id: str, error_start: str) -> None:
    job = await client.get_job(job_id)
    assert job.status is gqm.JobStatus.CANCELED
    assert job.error is not None
    assert job.error.startswith(error_start), job.error
    with pytest.raises(gqm.JobFailedError) as info:
        await client.result(job_id, timeout=5)
    assert info.value.status == "canceled"


class Blocking:
    """A handler that blocks on a gate and notes, in a finally block, how it ended."""

    def __init__(self) -> None:
        self.gate = Gate()
        self.ended = anyio.Event()
        #: Whether the handler left while the gate was still closed (it was cancelled).
        self.cancelled: bool | None = None

    async def __call__(self, job: gqm.Job[Any]) -> str:
        try:
            await self.gate.enter(job.id)
        finally:
            self.cancelled = not self.gate.release.is_set()
            self.ended.set()
        return "released"

    async def wait_started(self) -> None:
        with anyio.fail_after(15):
            await self.gate.all_started.wait()

    async def wait_ended(self) -> None:
        with anyio.fail_after(15):
            await self.ended.wait()


async def test_abort_ready_job(client: gqm.Client) -> None:
    """A ready job is canceled at once and leaves the ready list."""
    keep = await client.enqueue("t", 1)
    job = await client.enqueue("t", 2)
    q = client.keys.queue("default")
    assert await client.abort(job.id, reason="not needed") == "canceled"
    await _assert_canceled(client, job.id, "canceled: not needed")
    assert await raw(client, "LRANGE", q.ready, 0, -1) == [keep.id.encode()]
    assert await raw(client, "ZSCORE", q.canceled, job.id) is not None
    assert (await client.get_job(keep.id)).status is gqm.JobStatus.READY


async def test_abort_scheduled_job(client: gqm.Client) -> None:
    """A delayed job is canceled at once and leaves the scheduled set."""
    job = await client.enqueue_in("t", None, 3600)
    q = client.keys.queue("default")
    assert await raw(client, "ZSCORE", q.scheduled, job.id) is not None
    assert await client.abort(job.id) == "canceled"
    await _assert_canceled(client, job.id, "canceled: aborted by request")
    assert await raw(client, "ZCARD", q.scheduled) == 0


async def test_abort_deferred_child_cascades(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """A deferred child is canceled, its own dependents with it; its parent still runs."""
    parent = await client.enqueue("t", "parent")
    child = await client.enqueue("t", "child", depends_on=[parent.id])
    grandchild = await client.enqueue("t", "grandchild", depends_on=[child.id], queue="other")
    assert (await client.get_job(child.id)).status is gqm.JobStatus.DEFERRED

    assert await client.abort(child.id) == "canceled"
    q = client.keys.queue("default")
    assert await raw(client, "ZSCORE", q.deferred, child.id) is None
    # The abort queued the cascade in the child's outbox; apply it as a server would.
    driver = await client._conn.get()
    assert await drain_outboxes(driver, client.keys, ["default"], canceled_ttl_ms=_CANCELED_TTL_MS)
    await _assert_canceled(client, child.id, "canceled: aborted by request")
    await _assert_canceled(client, grandchild.id, f"dependency {child.id} ended as canceled")
    assert await raw(client, "ZCARD", client.keys.queue("other").deferred) == 0

    # The parent is untouched; when it completes, the canceled child stays canceled.
    server = make_server()
    server.pool(gqm.PoolConfig(name="all", queues=["default", "other"]))
    ran: list[str] = []

    async def handle(job: gqm.Job[Any]) -> str:
        ran.append(job.payload)
        return str(job.payload)

    server.handle("t", handle)
    async with serving(server):
        assert await client.result(parent.id, timeout=10) == "parent"
    assert ran == ["parent"]
    assert (await client.get_job(child.id)).status is gqm.JobStatus.CANCELED


async def test_abort_running_job_stops_it_and_the_worker_goes_on(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """A running job's handler is cancelled, the job ends stopped, and the next job runs."""
    blocking = Blocking()
    server = make_server(concurrency=1)
    server.handle("block", blocking)

    async def quick(job: gqm.Job[Any]) -> str:
        return "next"

    server.handle("quick", quick)
    job = await client.enqueue("block", None)
    async with serving(server):
        await blocking.wait_started()
        following = await client.enqueue("quick", None)
        assert await client.abort(job.id, reason="operator") == "signalled"
        await blocking.wait_ended()
        assert blocking.cancelled is True
        with pytest.raises(gqm.JobFailedError) as info:
            await client.result(job.id, timeout=10)
        assert info.value.status == "stopped"
        # The only worker is free again: the job queued behind the aborted one runs.
        assert await client.result(following.id, timeout=10) == "next"
    stopped = await client.get_job(job.id)
    assert stopped.status is gqm.JobStatus.STOPPED
    assert stopped.error is not None
    assert stopped.error.startswith("aborted"), stopped.error
    assert await raw(client, "ZCARD", client.keys.queue("default").leases) == 0
    assert blocking.gate.started == [job.id]


async def test_abort_finished_job_returns_its_status(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """Aborting a finished job changes nothing and returns its terminal status."""
    server = make_server()

    async def echo(job: gqm.Job[Any]) -> Any:
        return job.payload

    server.handle("t", echo)
    done = await client.enqueue("t", "done")
    async with serving(server):
        assert await client.result(done.id, timeout=10) == "done"
    assert await client.abort(done.id) == "completed"
    finished = await client.get_job(done.id)
    assert finished.status is gqm.JobStatus.COMPLETED
    assert finished.result == "done"

    canceled = await client.enqueue("t", "canceled")
    assert await client.abort(canceled.id, reason="first") == "canceled"
    assert await client.abort(canceled.id, reason="second") == "canceled"
    assert (await client.get_job(canceled.id)).error == "canceled: first"


async def test_abort_unknown_job(client: gqm.Client) -> None:
    """Aborting an id nobody enqueued raises JobNotFoundError."""
    with pytest.raises(gqm.JobNotFoundError):
        await client.abort("no-such-job")


async def test_missed_abort_message_is_caught_at_lease_renewal(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """Without the abort PUBLISH, the abort flag in the record stops the job at its next renewal."""
    blocking = Blocking()
    server = make_server(lease_ttl=1.5)  # renewals every 0.5 s
    server.handle("block", blocking)
    job = await client.enqueue("block", None)
    jobs = client.keys.queue("default").jobs
    async with serving(server):
        await blocking.wait_started()
        # Flag the record as abort.lua does, but publish nothing: the server only learns
        # of the abort from the renewal script's reply.
        stored = json.loads(await raw(client, "HGET", jobs, job.id))
        assert stored["status"] == "processing"
        stored["abort"] = "x"
        await raw(client, "HSET", jobs, job.id, json.dumps(stored))
        await blocking.wait_ended()
        assert blocking.cancelled is True
        with pytest.raises(gqm.JobFailedError) as info:
            await client.result(job.id, timeout=10)
        assert info.value.status == "stopped"
    stopped = await client.get_job(job.id)
    assert stopped.status is gqm.JobStatus.STOPPED
    assert stopped.error is not None
    assert stopped.error.startswith("aborted"), stopped.error
