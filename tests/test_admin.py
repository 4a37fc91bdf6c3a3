"""Inspection and admin operations against a real Redis (the CLI and the API use them)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

import gqm
from gqm import _scripts as scripts
from gqm._cron_runtime import register as register_cron

from .helpers import Gate, raw, run_script, serving_after_heartbeat

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio

#: A cron expression that does not fire during a test run (midnight, January 1st).
YEARLY = "0 0 0 1 1 *"


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


async def _claim(client: gqm.Client, queue: str, count: int) -> list[tuple[str, bytes]]:
    """Claim up to ``count`` ready jobs of ``queue`` under a 30 s lease (as a worker);
    returns (id, token) pairs."""
    q = client.keys.queue(queue)
    attempt = uuid.uuid4().hex
    reply = await run_script(
        client, "claim", scripts.claim_keys(q, attempt), [count, 30000, "w", attempt]
    )
    return [(reply[i].decode(), reply[i + 1]) for i in range(0, len(reply), 4)]


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
    with pytest.raises(gqm.NotFoundError, match="no queue named 'nope'"):
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
    client: gqm.Client, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running job cannot be deleted; a serving server shows in servers()."""
    server = gqm.Server(redis_url, prefix=prefix, handle_signals=False, grace_period=0.1)
    gate = Gate()
    server.handle("slow", lambda job: gate.enter(job.id))
    job = await client.enqueue("slow", None)
    async with serving_after_heartbeat(server, monkeypatch):
        await gate.all_started.wait()
        assert await client.delete(job.id) == {job.id: "processing"}
        running, total = await client.list_jobs("default", "processing")
        assert total == 1
        assert running[0].id == job.id
        assert running[0].started_at is not None
        assert running[0].lease_deadline is not None
        assert running[0].lease_deadline > running[0].started_at
        servers = await client.servers()
        assert [s.id for s in servers] == [server.server_id]
        assert servers[0].pools[0].name == "default"
        gate.release.set()


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


async def test_lease_deadline_of_processing_jobs(client: gqm.Client) -> None:
    """A processing job carries its lease deadline (the claim's ``leases`` score, moved
    by renewals); ready and finished jobs have none."""
    running = await client.enqueue("t", 1, queue="q")
    waiting = await client.enqueue("t", 2, queue="q")
    ((claimed_id, token),) = await _claim(client, "q", 1)
    assert claimed_id == running.id
    got = await client.get_job(running.id)
    assert got.status is gqm.JobStatus.PROCESSING
    assert got.started_at is not None
    assert got.lease_deadline is not None
    assert got.lease_deadline.tzinfo is UTC
    # The claim sets started_at = now and the deadline to now + the 30 s lease.
    assert got.lease_deadline == got.started_at + timedelta(seconds=30)
    score = await raw(client, "ZSCORE", client.keys.queue("q").leases, running.id)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert got.lease_deadline == epoch + timedelta(milliseconds=int(float(score)))
    page, total = await client.list_jobs("q", "processing")
    assert total == 1
    assert [(j.id, j.lease_deadline) for j in page] == [(running.id, got.lease_deadline)]
    assert (await client.get_job(waiting.id)).lease_deadline is None
    ready, _ = await client.list_jobs("q", "ready")
    assert [(j.id, j.lease_deadline) for j in ready] == [(waiting.id, None)]
    # A renewal (a 60 s lease from now) moves the deadline on.
    q = client.keys.queue("q")
    lost, _aborted = await run_script(
        client, "renew", scripts.renew_keys(q), [60000, running.id, token]
    )
    assert lost == []
    renewed = await client.get_job(running.id)
    assert renewed.lease_deadline is not None
    assert renewed.lease_deadline >= got.started_at + timedelta(seconds=60)
    await run_script(
        client,
        "finish",
        scripts.finish_keys(q),
        [-1, -1, client.keys.done_channel, q.wake, running.id, token, "c", "", 0, 0],
    )
    done = await client.get_job(running.id)
    assert (done.status, done.lease_deadline) == (gqm.JobStatus.COMPLETED, None)


async def test_stats_sum_every_queue(client: gqm.Client) -> None:
    """stats() totals the states of every queue; queues() and queue_info agree with it."""
    await client.enqueue_batch([gqm.BatchItem("t", i, queue="a") for i in range(2)])
    await _finish_all(client, "a", "d")
    await client.enqueue_batch([gqm.BatchItem("t", i, queue="b") for i in range(3)])
    await _finish_all(client, "b", "c")
    ready_a = await client.enqueue_batch([gqm.BatchItem("t", i, queue="a") for i in range(3)])
    await client.enqueue_in("t", "later", 3600, queue="a")
    await client.enqueue("t", "child", queue="a", depends_on=[ready_a[0].id])
    await client.enqueue("t", "child", queue="b", depends_on=[ready_a[0].id])
    ready_b = await client.enqueue_batch([gqm.BatchItem("t", i, queue="b") for i in range(3)])
    assert await client.abort(ready_b[2].id) == "canceled"
    assert [i for i, _ in await _claim(client, "b", 1)] == [ready_b[0].id]
    assert await client.pause("b")

    totals = await client.stats()
    assert totals == gqm.Totals(
        queues=2,
        ready=4,
        scheduled=1,
        processing=1,
        deferred=2,
        completed=3,
        dead_letter=2,
        canceled=1,
        processed_total=3,
        failed_total=2,
        paused=1,
        servers=0,
        workers=0,
    )
    infos = await client.queues()
    assert infos == [await client.queue_info("a"), await client.queue_info("b")]
    a, b = infos
    assert (a.ready, a.scheduled, a.deferred, a.dead_letter, a.paused) == (3, 1, 1, 2, False)
    assert (b.ready, b.processing, b.deferred, b.completed, b.canceled, b.paused) == (
        1,
        1,
        1,
        3,
        1,
        True,
    )
    assert await client.dag_deferred_count() == 2
    assert await client.dag_deferred_count("a") == 1
    assert await client.dag_deferred_count("b") == 1
    assert await client.dag_deferred_count("nope") == 0
    assert len(await client.dag_deferred()) == 2


async def test_stats_and_dag_count_of_an_empty_prefix(client: gqm.Client) -> None:
    """Without any queue or server, every total is zero and no queue is listed."""
    assert await client.queues() == []
    assert await client.stats() == gqm.Totals(
        queues=0,
        ready=0,
        scheduled=0,
        processing=0,
        deferred=0,
        completed=0,
        dead_letter=0,
        canceled=0,
        processed_total=0,
        failed_total=0,
        paused=0,
        servers=0,
        workers=0,
    )
    assert await client.dag_deferred_count() == 0
    assert await client.servers() == []
    assert await client.workers() == []


def _sans_beat(pool: gqm.PoolInfo) -> gqm.PoolInfo:
    """The pool without its heartbeat time (a later heartbeat may come between reads)."""
    return msgspec.structs.replace(pool, heartbeat_at=0.0)


async def test_server_workers_and_worker(
    client: gqm.Client, make_server: Callable[..., gqm.Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live server and each of its pools can be read by id; stats() counts them; once
    the server stopped, none is found."""

    async def noop(job: gqm.Job[Any]) -> None:
        return None

    server = make_server(concurrency=4)
    server.handle("t", noop)
    server.handle("email", noop, workers=2, queue="emails")
    server.handle("b", noop)
    server.pool(
        gqm.PoolConfig(
            name="bulk",
            job_types=["b"],
            queues=["bulk", "low"],
            concurrency=3,
            dequeue_strategy="strict",
        )
    )
    sid = server.server_id
    async with serving_after_heartbeat(server, monkeypatch):
        info = await client.server(sid)
        assert [s.id for s in await client.servers()] == [sid]
        assert (info.id, info.inflight) == (sid, 0)
        assert {p.name for p in info.pools} == {"bulk", "handler:email", "default"}
        workers = await client.workers()
        assert [w.id for w in workers] == [f"{sid}:bulk", f"{sid}:default", f"{sid}:handler:email"]
        assert workers[0] == gqm.PoolInfo(
            id=f"{sid}:bulk",
            name="bulk",
            server_id=sid,
            queues=["bulk", "low"],
            concurrency=3,
            active=0,
            strategy="strict",
            # A later heartbeat may have been written since ``info`` was read.
            heartbeat_at=workers[0].heartbeat_at,
        )
        assert workers[0].heartbeat_at >= info.heartbeat_at
        assert [(w.queues, w.concurrency) for w in workers[1:]] == [
            (["default"], 4),
            (["emails"], 2),
        ]
        # Pool names may contain ":": the id is matched whole.
        email = await client.worker(f"{sid}:handler:email")
        assert _sans_beat(email) == _sans_beat(workers[2])
        assert (email.name, email.server_id, email.strategy) == ("handler:email", sid, "weighted")
        assert _sans_beat(await client.worker(f"{sid}:default")) == _sans_beat(workers[1])
        with pytest.raises(gqm.NotFoundError):
            await client.worker(f"{sid}:nope")
        with pytest.raises(gqm.NotFoundError):
            await client.worker(sid)
        with pytest.raises(gqm.NotFoundError):
            await client.server("no-such-server")
        totals = await client.stats()
        assert (totals.queues, totals.servers, totals.workers) == (4, 1, 9)
    with pytest.raises(gqm.NotFoundError, match="no live server"):
        await client.server(sid)
    with pytest.raises(gqm.NotFoundError, match="no live pool"):
        await client.worker(f"{sid}:bulk")
    assert await client.workers() == []


async def test_cron_entry_by_id(client: gqm.Client) -> None:
    """cron_entry reads one registered entry, with its enabled state; an unknown id
    raises NotFoundError."""
    await register_cron(
        await client._conn.get(),
        client.keys,
        [
            gqm.CronEntry(
                id="nightly", cron_expr=YEARLY, job_type="report", queue="reports", payload=[1]
            ),
            gqm.CronEntry(id="other", cron_expr=YEARLY, job_type="x"),
        ],
    )
    entry = await client.cron_entry("nightly")
    assert (entry.id, entry.cron_expr, entry.job_type, entry.queue, entry.payload) == (
        "nightly",
        YEARLY,
        "report",
        "reports",
        [1],
    )
    assert entry.enabled
    assert entry in await client.cron_entries()
    await client.cron_disable("nightly")
    assert not (await client.cron_entry("nightly")).enabled
    with pytest.raises(gqm.NotFoundError, match="no cron entry 'nope'"):
        await client.cron_entry("nope")
    assert await client.cron_delete("nightly")
    with pytest.raises(gqm.NotFoundError):
        await client.cron_entry("nightly")
    assert (await client.cron_entry("other")).job_type == "x"


def test_not_found_errors_form_one_family() -> None:
    """JobNotFoundError is a NotFoundError; both are GqmError and LookupError."""
    assert issubclass(gqm.JobNotFoundError, gqm.NotFoundError)
    for cls in (gqm.NotFoundError, gqm.JobNotFoundError):
        assert issubclass(cls, gqm.GqmError)
        assert issubclass(cls, LookupError)
    assert not issubclass(gqm.NotFoundError, gqm.JobNotFoundError)
