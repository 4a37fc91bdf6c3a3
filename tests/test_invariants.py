"""The keyspace invariant checker (tests/invariants.py) is not vacuous.

A healthy run leaves nothing to report; then each kind of corruption, injected with raw
Redis commands into an otherwise healthy keyspace, is reported, and only it.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

import gqm
from gqm import _scripts as scripts

from . import invariants as inv
from .helpers import raw, run_script, serving

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio


async def _claim(client: gqm.Client, queue: str) -> dict[str, str]:
    """Claim every ready job of ``queue`` (as a worker would), returning id -> token."""
    q = client.keys.queue(queue)
    attempt = uuid.uuid4().hex
    reply = await run_script(
        client, "claim", scripts.claim_keys(q, attempt), [100, 30_000, "w", attempt]
    )
    return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 4)}


async def _record(client: gqm.Client, queue: str, job_id: str) -> dict[str, Any]:
    data = await raw(client, "HGET", client.keys.queue(queue).jobs, job_id)
    assert data is not None
    rec: dict[str, Any] = msgspec.json.decode(data)
    return rec


async def _put_record(client: gqm.Client, queue: str, rec: dict[str, Any]) -> None:
    await raw(client, "HSET", client.keys.queue(queue).jobs, rec["id"], msgspec.json.encode(rec))


async def test_healthy_run_reports_nothing(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """A server runs a mix (plain, delayed, a DAG across queues with a failing parent,
    failing-with-retry, dead-lettered, unique): afterwards, drained, nothing is reported.
    Then jobs left waiting in every live state (ready, scheduled, deferred, processing,
    paused queue) are not reported either."""
    server = make_server(poll_interval=0.2)
    server.pool(gqm.PoolConfig(name="all", queues=["default", "other"], concurrency=4))
    attempts: dict[str, int] = {}

    async def work(job: gqm.Job[Any]) -> str:
        kind: str = job.payload["kind"]
        attempts[job.id] = attempts.get(job.id, 0) + 1
        if kind == "flaky" and attempts[job.id] == 1:
            raise RuntimeError("first attempt fails")
        if kind == "bad":
            raise RuntimeError("always fails")
        if kind == "fatal":
            raise gqm.SkipRetry("no retry")
        return kind

    server.handle("work", work)
    # A cron entry firing every second (its jobs complete like the others).
    server.schedule(
        gqm.CronEntry(id="tick", cron_expr="* * * * * *", job_type="work", payload={"kind": "ok"})
    )
    plain = [await client.enqueue("work", {"kind": "ok"}) for _ in range(5)]
    delayed = [await client.enqueue_in("work", {"kind": "ok"}, 0.3) for _ in range(2)]
    flaky = await client.enqueue("work", {"kind": "flaky"}, retry_intervals=[0.05])
    bad = await client.enqueue("work", {"kind": "bad"}, max_retry=1, retry_intervals=[0.05])
    unique = await client.enqueue("work", {"kind": "ok"}, job_id="u-1", unique=True)
    with pytest.raises(gqm.DuplicateJobError):
        await client.enqueue("work", {"kind": "ok"}, job_id="u-1", unique=True)
    parent = await client.enqueue("work", {"kind": "ok"}, queue="other")
    child = await client.enqueue("work", {"kind": "ok"}, depends_on=[parent.id])
    grandchild = await client.enqueue("work", {"kind": "ok"}, queue="other", depends_on=[child.id])
    fatal = await client.enqueue("work", {"kind": "fatal"})
    doomed = await client.enqueue("work", {"kind": "ok"}, depends_on=[fatal.id])
    doomed2 = await client.enqueue("work", {"kind": "ok"}, queue="other", depends_on=[doomed.id])
    async with serving(server):
        for job in [*plain, *delayed, flaky, unique, parent, child, grandchild]:
            await client.result(job.id, timeout=20)
        for job in (bad, fatal, doomed, doomed2):
            with pytest.raises(gqm.JobFailedError):
                await client.result(job.id, timeout=20)
        with anyio.fail_after(20):
            # Polling Redis: wait for the first cron fire to be recorded.
            while True:
                if await client.cron_last_run("tick") is not None:
                    break
                await anyio.sleep(0.05)
    assert attempts[flaky.id] == 2
    assert attempts[bad.id] == 2
    assert await inv.find_violations(client, drained=True) == []

    # Live states, with no server running.
    await client.enqueue("work", {"kind": "ok"})
    await client.enqueue_in("work", {"kind": "ok"}, 3600)
    waiting_parent = await client.enqueue("work", {"kind": "ok"}, queue="other")
    await client.enqueue("work", {"kind": "ok"}, depends_on=[waiting_parent.id])
    await client.enqueue("work", {"kind": "ok"}, queue="third")
    claimed = await _claim(client, "third")
    assert len(claimed) == 1
    await client.pause("other")
    assert await inv.find_violations(client, drained=True) == []
    await inv.assert_invariants(client, queues=["default"])


async def _ready_job(client: gqm.Client, queue: str = "default") -> str:
    job = await client.enqueue("t", None, queue=queue)
    return job.id


async def test_job_in_two_indexes(client: gqm.Client) -> None:
    """A ready job also added to the scheduled zset is reported as in two indexes."""
    job_id = await _ready_job(client)
    assert await inv.find_violations(client) == []
    await raw(client, "ZADD", client.keys.queue("default").scheduled, 1, job_id)
    found = await inv.find_violations(client)
    assert inv.kinds(found) == {inv.KIND_TWO_INDEXES}, found
    assert job_id in found[0]


async def test_job_listed_twice_in_ready(client: gqm.Client) -> None:
    """A ready id pushed a second time (it would run twice) is reported."""
    job_id = await _ready_job(client)
    await raw(client, "LPUSH", client.keys.queue("default").ready, job_id)
    found = await inv.find_violations(client)
    assert inv.kinds(found) == {inv.KIND_TWO_INDEXES}, found


async def test_status_disagrees_with_index(client: gqm.Client) -> None:
    """A record saying `scheduled` while its id sits in the ready list is reported."""
    job_id = await _ready_job(client)
    rec = await _record(client, "default", job_id)
    rec["status"] = "scheduled"
    await _put_record(client, "default", rec)
    found = await inv.find_violations(client)
    assert inv.kinds(found) == {inv.KIND_WRONG_INDEX}, found
    assert "not in scheduled" in found[0]


async def test_abort_flag_on_a_waiting_job(client: gqm.Client) -> None:
    """An abort flag left on a job that is not running (it would be stopped as soon as
    it runs again) is reported."""
    job_id = await _ready_job(client)
    rec = await _record(client, "default", job_id)
    rec["abort"] = "aborted by request"
    await _put_record(client, "default", rec)
    found = await inv.find_violations(client)
    assert inv.kinds(found) == {inv.KIND_BAD_RECORD}, found
    assert "flagged for abort" in found[0]


async def test_job_in_no_index(client: gqm.Client) -> None:
    """A ready job removed from its list (it would never run) is reported."""
    job_id = await _ready_job(client)
    await raw(client, "LREM", client.keys.queue("default").ready, 0, job_id)
    found = await inv.find_violations(client)
    assert inv.kinds(found) == {inv.KIND_NOT_INDEXED}, found


async def test_lease_without_processing_job(client: gqm.Client) -> None:
    """A lease on a ready job, and a lease on no job at all, are both reported as
    lease violations; a processing job whose lease vanished is reported too."""
    job_id = await _ready_job(client)
    q = client.keys.queue("default")
    await raw(client, "ZADD", q.leases, 10**13, job_id)
    found = await inv.find_violations(client)
    assert inv.kinds(found) == {inv.KIND_LEASE}, found
    assert "not processing" in found[0]
    await raw(client, "ZREM", q.leases, job_id)
    await raw(client, "ZADD", q.leases, 10**13, "no-such-job")
    found = await inv.find_violations(client)
    assert inv.kinds(found) == {inv.KIND_LEASE}, found
    assert "no-such-job" in found[0]
    await raw(client, "ZREM", q.leases, "no-such-job")
    assert await inv.find_violations(client) == []
    claimed = await _claim(client, "default")
    assert list(claimed) == [job_id]
    assert await inv.find_violations(client) == []
    await raw(client, "ZREM", q.leases, job_id)
    found = await inv.find_violations(client)
    assert inv.kinds(found) == {inv.KIND_LEASE}, found
    assert "has no lease" in found[0]


async def test_index_entry_without_record(client: gqm.Client) -> None:
    """Index entries (ready, scheduled, completed) and payloads of a missing job."""
    await _ready_job(client)
    q = client.keys.queue("default")
    for inject, undo in (
        (["LPUSH", q.ready, "ghost-1"], ["LREM", q.ready, 0, "ghost-1"]),
        (["ZADD", q.scheduled, 5, "ghost-2"], ["ZREM", q.scheduled, "ghost-2"]),
        (["ZADD", q.completed, 5, "ghost-3"], ["ZREM", q.completed, "ghost-3"]),
        (["ZADD", q.deferred, 5, "ghost-4"], ["ZREM", q.deferred, "ghost-4"]),
        (["HSET", q.payloads, "ghost-5", b"null"], ["HDEL", q.payloads, "ghost-5"]),
        (["HSET", q.results, "ghost-6", b"1"], ["HDEL", q.results, "ghost-6"]),
    ):
        await raw(client, *inject)
        found = await inv.find_violations(client)
        assert inv.kinds(found) == {inv.KIND_ORPHAN}, found
        assert len(found) == 1
        assert str(inject[-2 if inject[0] == "HSET" else -1]) in found[0]
        await raw(client, *undo)
    assert await inv.find_violations(client) == []


async def test_orphan_unique_key(client: gqm.Client) -> None:
    """gqm keeps no separate unique-lock keys: a unique job's record is its lock, and
    the id index says which queue holds it. A second live holder of the same id on
    another queue (a ghost lock: the client refuses such an enqueue) is reported, and
    only as that (not also as an id index that points elsewhere)."""
    unique = await client.enqueue("t", None, job_id="u-9", unique=True)
    assert await inv.find_violations(client) == []
    # A well-formed live copy of the id on queue "other".
    other = client.keys.queue("other")
    rec = await _record(client, "default", unique.id)
    rec.update(queue="other")
    await _put_record(client, "other", rec)
    await raw(client, "HSET", other.payloads, unique.id, b"null")
    await raw(client, "LPUSH", other.ready, unique.id)
    await raw(client, "SADD", client.keys.queues, "other")
    found = await inv.find_violations(client)
    assert inv.kinds(found) == {inv.KIND_ID_TWICE}, found
    assert "'default', 'other'" in found[0]


async def test_unique_id_retaken_across_queues_is_not_reported(client: gqm.Client) -> None:
    """A known limit, not a violation: cross-queue uniqueness goes through the id index,
    so once a newer job's record elsewhere is swept (and its index entry forgotten), a
    unique enqueue no longer sees a unique record retained on another queue."""
    await client.enqueue("t", None, job_id="X", unique=True, queue="a")
    (token,) = (await _claim(client, "a")).values()
    qa, qb = client.keys.queue("a"), client.keys.queue("b")
    args = [-1, -1, client.keys.done_channel, qa.wake, "X", token, "d", b"", 0, 0]
    await run_script(client, "finish", scripts.finish_keys(qa), args)
    await client.enqueue("t", None, job_id="X", queue="b")  # plain reuse: allowed
    (token,) = (await _claim(client, "b")).values()
    args = [0, -1, client.keys.done_channel, qb.wake, "X", token, "c", b"", 0, 0]
    (_codes, swept, _fanned) = await run_script(client, "finish", scripts.finish_keys(qb), args)
    await scripts.forget_ids(await client._driver(), client.keys, {"b": list(swept)})
    again = await client.enqueue("t", None, job_id="X", unique=True, queue="b")
    assert again.status is gqm.JobStatus.READY
    assert (await _record(client, "a", "X"))["status"] == "dead_letter"
    assert await inv.find_violations(client, drained=True) == []


async def test_id_reuse_after_a_unique_job_is_legal(client: gqm.Client) -> None:
    """A non-unique job may take the id of a finished unique job on another queue (the
    client allows it): two records of one id, not reported. Checking one queue only
    (``queues=``) reads the other queue's records it needs."""
    await client.enqueue("t", None, job_id="u-3", unique=True)
    (token,) = (await _claim(client, "default")).values()
    q = client.keys.queue("default")
    args = [-1, -1, client.keys.done_channel, q.wake, "u-3", token, "c", b"", 0, 0]
    await run_script(client, "finish", scripts.finish_keys(q), args)
    reused = await client.enqueue("t", None, job_id="u-3", queue="other")
    assert reused.status is gqm.JobStatus.READY
    with pytest.raises(gqm.DuplicateJobError):
        await client.enqueue("t", None, job_id="u-3", queue="default", unique=True)
    assert await inv.find_violations(client, drained=True) == []
    child = await client.enqueue("t", None, queue="kids", depends_on=["u-3"])
    assert await inv.find_violations(client, queues=["kids"], drained=True) == []
    await raw(client, "HDEL", client.keys.queue("other").dependents, "u-3")
    found = await inv.find_violations(client, queues=["kids"], drained=True)
    assert inv.kinds(found) == {inv.KIND_DAG}, found
    assert child.id in found[0]


async def test_live_job_missing_from_id_index(client: gqm.Client) -> None:
    """A live job that cannot be looked up by id is reported; a stale index entry (job
    gone) is harmless by design and is not."""
    job_id = await _ready_job(client)
    await raw(client, "HSET", client.keys.ids, "long-gone", "default")
    assert await inv.find_violations(client) == []
    await raw(client, "HDEL", client.keys.ids, job_id)
    found = await inv.find_violations(client)
    assert inv.kinds(found) == {inv.KIND_ID_INDEX}, found


async def test_orphan_dag_keys(client: gqm.Client) -> None:
    """A dependents list of a job that does not exist, and a deferred child whose pending
    parent already finished with nothing on its way to resolve it, are reported."""
    parent = await client.enqueue("t", None)
    child = await client.enqueue("t", None, depends_on=[parent.id], queue="kids")
    q = client.keys.queue("default")
    assert await inv.find_violations(client, drained=True) == []
    await raw(
        client, "HSET", q.dependents, "gone-parent", msgspec.json.encode([[child.id, "kids"]])
    )
    found = await inv.find_violations(client, drained=True)
    assert inv.kinds(found) == {inv.KIND_DAG}, found
    assert "gone-parent" in found[0]
    await raw(client, "HDEL", q.dependents, "gone-parent")
    # The parent completes, but its outcome never reaches the child (the outbox entry
    # is dropped): the child is stuck in deferred.
    (token,) = (await _claim(client, "default")).values()
    args = [-1, -1, client.keys.done_channel, q.wake, parent.id, token, "c", b"", 0, 0]
    (codes, _, fanned) = await run_script(client, "finish", scripts.finish_keys(q), args)
    assert (codes, fanned) == ([1], 1)
    # Claimed drained while the outcome still waits in the outbox: both are reported.
    found = await inv.find_violations(client, drained=True)
    assert inv.kinds(found) == {inv.KIND_NOT_DRAINED, inv.KIND_DAG}, found
    # Not drained yet is not a violation by itself.
    assert await inv.find_violations(client) == []
    await raw(client, "DEL", q.outbox)
    found = await inv.find_violations(client, drained=True)
    assert inv.kinds(found) == {inv.KIND_DAG}, found
    assert "can never resolve" in found[0]


async def test_pending_parents_must_match(client: gqm.Client) -> None:
    """A deferred job without pending parents, or a ready job still holding some, is
    reported (pending-parent bookkeeping that disagrees with the state)."""
    parent = await client.enqueue("t", None)
    child = await client.enqueue("t", None, depends_on=[parent.id])
    rec = await _record(client, "default", child.id)
    rec["pending"] = {}
    await _put_record(client, "default", rec)
    found = await inv.find_violations(client)
    assert inv.kinds(found) == {inv.KIND_DAG}, found
    rec = await _record(client, "default", parent.id)
    rec["pending"] = {"x": 1}
    await _put_record(client, "default", rec)
    found = await inv.find_violations(client)
    assert len(found) == 2, found
    assert inv.kinds(found) == {inv.KIND_DAG}, found


async def test_scores_claim_memos_and_stray_keys(client: gqm.Client) -> None:
    """A scheduled score that disagrees with the record, a claim memo without expiry
    and a key outside gqm's layout are reported."""
    job = await client.enqueue_in("t", None, 3600)
    q = client.keys.queue("default")
    await raw(client, "ZADD", q.scheduled, 1, job.id)
    found = await inv.find_violations(client)
    assert inv.kinds(found) == {inv.KIND_SCORE}, found
    rec = await _record(client, "default", job.id)
    await raw(client, "ZADD", q.scheduled, rec["scheduled_at"], job.id)
    await raw(client, "SET", q.claim_memo("a1"), b"[]")
    found = await inv.find_violations(client)
    assert inv.kinds(found) == {inv.KIND_MEMO}, found
    await raw(client, "PEXPIRE", q.claim_memo("a1"), 60_000)
    assert await inv.find_violations(client) == []
    await raw(client, "SET", f"{client.keys.prefix}:{{default}}:mystery", b"1")
    found = await inv.find_violations(client)
    assert inv.kinds(found) == {inv.KIND_STRAY_KEY}, found


async def test_retention_sweep_is_not_reported(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """Jobs whose retention is 0 (deleted at finish) leave nothing behind; the checker
    does not report the id index entries the sweep may leave (harmless by design)."""
    server = make_server(completed_ttl=0, dead_ttl=0, poll_interval=0.2)
    done = anyio.Event()
    seen: list[str] = []

    async def work(job: gqm.Job[Any]) -> None:
        seen.append(job.id)
        if len(seen) == 4:
            done.set()
        if job.payload == "fail":
            raise gqm.SkipRetry("no")

    server.handle("w", work)
    for payload in ("ok", "ok", "fail", "ok"):
        await client.enqueue("w", payload)
    async with serving(server):
        with anyio.fail_after(20):
            await done.wait()
            q = client.keys.queue("default")
            # The finisher records outcomes after the handlers return: wait for it.
            # (polling Redis: there is no event for "the last record was deleted").
            while True:
                if await raw(client, "HLEN", q.jobs) == 0:
                    break
                await anyio.sleep(0.02)
    assert await inv.find_violations(client, drained=True) == []


async def test_assert_invariants_lists_violations(client: gqm.Client) -> None:
    """assert_invariants raises with the violations, capped at 50 lines."""
    q = client.keys.queue("default")
    await raw(client, "SADD", client.keys.queues, "default")
    for i in range(60):
        await raw(client, "LPUSH", q.ready, f"ghost-{i}")
    with pytest.raises(AssertionError) as info:
        await inv.assert_invariants(client)
    text = str(info.value)
    assert text.startswith("60 invariant violation(s)")
    assert "... and 10 more" in text


async def test_batch_cannot_put_one_id_on_two_queues(client: gqm.Client) -> None:
    """Regression (found by the checker's one-id-one-holder rule): enqueue_batch with
    the same custom id on two queues made two live jobs with one id, since each queue's
    script sees only its own queue. Now the batch is refused before anything is sent;
    the same id twice on one queue still enqueues the first and refuses the second."""
    items: list[gqm.BatchItem[Any]] = [
        gqm.BatchItem("t", None, job_id="x", queue="a"),
        gqm.BatchItem("t", None, job_id="x", queue="b"),
    ]
    with pytest.raises(gqm.ConfigurationError, match="two queues"):
        await client.enqueue_batch(items)
    assert await raw(client, "HLEN", client.keys.queue("a").jobs) == 0
    assert await raw(client, "HLEN", client.keys.queue("b").jobs) == 0
    same: list[gqm.BatchItem[Any]] = [
        gqm.BatchItem("t", None, job_id="y", queue="a") for _ in range(2)
    ]
    with pytest.raises(gqm.DuplicateJobError):
        await client.enqueue_batch(same)
    assert await raw(client, "HLEN", client.keys.queue("a").jobs) == 1
    assert await inv.find_violations(client) == []
