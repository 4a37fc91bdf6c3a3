"""Inspection and admin operations against a real Redis (the CLI and the API use them)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import gqm
from gqm import _scripts as scripts

from .helpers import Gate, raw, run_script, serving

pytestmark = pytest.mark.anyio


async def _finish_all(client: gqm.Client, queue: str, outcome: str) -> list[str]:
    """Claim every ready job of ``queue`` and record ``outcome`` for each (as a worker)."""
    q = client.keys.queue(queue)
    attempt = uuid.uuid4().hex  # each claim attempt has its own id (a repeat is a replay)
    reply = await run_script(
        client, "claim", scripts.claim_keys(q, attempt), [100, 30000, "w", attempt]
    )
    args: list[Any] = [-1, -1, client.keys.done_channel, q.wake]
    ids = []
    for i in range(0, len(reply), 4):
        ids.append(reply[i].decode())
        args += [reply[i], reply[i + 1], outcome, "boom", 0, 0]
    await run_script(client, "finish", scripts.finish_keys(q), args)
    return ids


async def test_queue_info_and_listing(client: gqm.Client) -> None:
    """Sizes per state, and pages of jobs in run order (ready) or newest first (finished)."""
    jobs = await client.enqueue_batch([gqm.BatchItem("t", i, queue="q") for i in range(5)])
    await client.enqueue_in("t", "later", 3600, queue="q")
    info = await client.queue_info("q")
    assert (info.ready, info.scheduled, info.dead_letter, info.paused) == (5, 1, 0, False)
    page, total = await client.list_jobs("q", "ready", offset=1, limit=2)
    assert total == 5
    assert [j.id for j in page] == [jobs[1].id, jobs[2].id]
    scheduled, total = await client.list_jobs("q", gqm.JobStatus.SCHEDULED)
    assert (total, scheduled[0].payload, scheduled[0].status) == (1, None, gqm.JobStatus.SCHEDULED)
    dead = await _finish_all(client, "q", "d")
    info = await client.queue_info("q")
    assert (info.ready, info.dead_letter, info.failed_total) == (0, 5, 5)
    page, total = await client.list_jobs("q", "dead_letter", limit=100)
    assert total == 5
    assert {j.id for j in page} == set(dead)
    assert [q.name for q in await client.queues()] == ["q"]
    with pytest.raises(gqm.JobNotFoundError):
        await client.queue_info("nope")
    with pytest.raises(gqm.ConfigurationError, match="unknown status"):
        await client.list_jobs("q", "bogus")
    daily = await client.daily_stats("q", days=2)
    assert len(daily) == 2
    assert daily[-1][1:] == (0, 5)


async def test_retry_delete_clear_and_empty(client: gqm.Client) -> None:
    """DLQ jobs are requeued as fresh jobs, deleted, or cleared; empty cancels ready
    jobs and their dependents."""
    first = await client.enqueue_batch([gqm.BatchItem("t", i, queue="q") for i in range(4)])
    await _finish_all(client, "q", "d")
    assert await client.retry(first[0].id, "nope") == {first[0].id: True, "nope": False}
    again = await client.get_job(first[0].id)
    assert (again.status, again.retry_count, again.error) == (gqm.JobStatus.READY, 0, None)
    assert await client.retry(first[0].id) == {first[0].id: False}  # ready: nothing to retry
    assert await client.retry_dead("q") == 3
    info = await client.queue_info("q")
    assert info.dead_letter == 0
    assert info.ready == 4
    await _finish_all(client, "q", "d")
    assert await client.delete(first[0].id, "nope") == {first[0].id: "deleted", "nope": "not_found"}
    assert await raw(client, "HEXISTS", client.keys.ids, first[0].id) == 0
    assert await client.clear_dead("q") == 3
    assert (await client.queue_info("q")).dead_letter == 0
    parent = await client.enqueue("t", "p", queue="q")
    child = await client.enqueue("t", "c", queue="other", depends_on=[parent.id])
    await client.enqueue("t", "x", queue="q")
    assert await client.empty("q") == 2
    assert (await client.get_job(parent.id)).status is gqm.JobStatus.CANCELED
    await gqm._dag.drain_outboxes(await client._conn.get(), client.keys, ["q"], canceled_ttl_ms=-1)
    assert (await client.get_job(child.id)).status is gqm.JobStatus.CANCELED


async def test_delete_refuses_running_job_and_servers_are_listed(
    client: gqm.Client, redis_url: str, prefix: str
) -> None:
    """A running job cannot be deleted; a serving server shows in servers()."""
    server = gqm.Server(redis_url, prefix=prefix, handle_signals=False, grace_period=0.1)
    gate = Gate()
    server.handle("slow", lambda job: gate.enter(job.id))
    job = await client.enqueue("slow", None)
    async with serving(server):
        await gate.all_started.wait()
        assert await client.delete(job.id) == {job.id: "processing"}
        running, total = await client.list_jobs("default", "processing")
        assert total == 1
        assert running[0].id == job.id
        servers = await client.servers()
        assert [s.id for s in servers] == [server.server_id]
        assert servers[0].pools[0]["name"] == "default"


async def test_deleting_a_live_parent_cancels_its_dependents(client: gqm.Client) -> None:
    """A parent deleted before it finished counts as canceled: its children do not wait
    for ever."""
    parent = await client.enqueue("t", "p", queue="q1")
    child = await client.enqueue("t", "c", queue="q2", depends_on=[parent.id])
    assert await client.delete(parent.id) == {parent.id: "deleted"}
    await gqm._dag.drain_outboxes(await client._conn.get(), client.keys, ["q1"], canceled_ttl_ms=-1)
    stored = await client.get_job(child.id)
    assert stored.status is gqm.JobStatus.CANCELED
    assert stored.error == f"dependency {parent.id} ended as canceled"
