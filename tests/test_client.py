"""The producer side against a real Redis: enqueue family, lookups, uniqueness, pause."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import msgspec
import pytest

import gqm
from gqm import _scripts as scripts

from .helpers import raw, record, run_script

pytestmark = pytest.mark.anyio


class Email(msgspec.Struct):
    to: str
    subject: str = ""


send_email = gqm.task("email.send", Email, queue="emails")


async def test_enqueue_stores_a_ready_job(client: gqm.Client) -> None:
    """A plain enqueue creates a ready job on the default queue, findable by id."""
    job = await client.enqueue("report.build", {"month": "2026-11"}, meta={"user": "42"})
    assert job.status is gqm.JobStatus.READY
    assert job.queue == "default"
    stored = await client.get_job(job.id)
    assert stored.payload == {"month": "2026-11"}
    assert stored.meta == {"user": "42"}
    assert stored.status is gqm.JobStatus.READY
    assert stored.created_at is not None
    q = client.keys.queue("default")
    assert await raw(client, "LRANGE", q.ready, 0, -1) == [job.id.encode()]
    assert await raw(client, "SISMEMBER", client.keys.queues, "default") == 1


async def test_typed_task_goes_to_its_queue(client: gqm.Client) -> None:
    """A task handle's queue is the default destination; the payload is encoded from the Struct."""
    job = await client.enqueue(send_email, Email(to="a@x.com", subject="hi"))
    assert job.queue == "emails"
    assert job.payload == Email(to="a@x.com", subject="hi")
    stored = await client.get_job(job.id)
    assert stored.payload == {"to": "a@x.com", "subject": "hi"}


async def test_at_front_goes_to_the_head(client: gqm.Client) -> None:
    """at_front puts the job ahead of the ones already waiting."""
    first = await client.enqueue("t", None)
    urgent = await client.enqueue("t", None, at_front=True)
    q = client.keys.queue("default")
    # RPOP takes from the right end: the head of the queue.
    assert await raw(client, "RPOP", q.ready) == urgent.id.encode()
    assert await raw(client, "RPOP", q.ready) == first.id.encode()


async def test_enqueue_in_and_at_are_scheduled(client: gqm.Client) -> None:
    """Delayed jobs wait in the scheduled set, due at the requested time."""
    later = await client.enqueue_in("t", {"n": 1}, timedelta(hours=1))
    assert later.status is gqm.JobStatus.SCHEDULED
    when = datetime.now(UTC) + timedelta(days=1)
    at = await client.enqueue_at("t", {"n": 2}, when)
    assert at.status is gqm.JobStatus.SCHEDULED
    q = client.keys.queue("default")
    score = float(await raw(client, "ZSCORE", q.scheduled, at.id))
    assert score == pytest.approx(when.timestamp() * 1000, abs=2)
    assert await raw(client, "LLEN", q.ready) == 0
    stored = await client.get_job(later.id)
    assert stored.scheduled_at is not None
    assert stored.created_at is not None
    assert (stored.scheduled_at - stored.created_at) == timedelta(hours=1)


async def test_enqueue_at_in_the_past_is_ready(client: gqm.Client) -> None:
    """A due time already past makes the job ready at once."""
    job = await client.enqueue_at("t", None, datetime(2020, 1, 1, tzinfo=UTC))
    assert job.status is gqm.JobStatus.READY


async def test_batch_enqueues_in_order_across_queues(client: gqm.Client) -> None:
    """enqueue_batch returns the jobs in the order given, each on its queue."""
    items = [gqm.BatchItem("t", {"i": i}, queue=f"q{i % 3}") for i in range(30)]
    items.append(gqm.BatchItem("t", {"i": 30}, delay=60))
    jobs = await client.enqueue_batch(items)
    assert [j.payload for j in jobs] == [{"i": i} for i in range(31)]
    assert [j.queue for j in jobs[:30]] == [f"q{i % 3}" for i in range(30)]
    assert jobs[30].status is gqm.JobStatus.SCHEDULED
    for n in range(3):
        assert await raw(client, "LLEN", client.keys.queue(f"q{n}").ready) == 10


async def test_batch_limit(client: gqm.Client) -> None:
    """1000 jobs fit in one batch; 1001 are refused before anything is written."""
    jobs = await client.enqueue_batch([gqm.BatchItem("t", i) for i in range(gqm.MAX_BATCH)])
    assert len(jobs) == 1000
    with pytest.raises(gqm.BatchTooLargeError, match="at most 1000"):
        await client.enqueue_batch([gqm.BatchItem("t", i) for i in range(1001)])
    assert await raw(client, "LLEN", client.keys.queue("default").ready) == 1000


async def test_batch_rejects_unknown_options(client: gqm.Client) -> None:
    """A typo in a batch item's options is an error, not silently ignored."""
    with pytest.raises(gqm.ConfigurationError, match="max_retires"):
        await client.enqueue_batch([gqm.BatchItem("t", 1, max_retires=3)])


async def test_live_job_id_cannot_be_reused(client: gqm.Client) -> None:
    """An id that names a live job is refused, and the live job is left untouched."""
    await client.enqueue("t", {"v": 1}, job_id="order-1")
    with pytest.raises(gqm.DuplicateJobError) as info:
        await client.enqueue("t", {"v": 2}, job_id="order-1")
    assert info.value.job_id == "order-1"
    assert info.value.status == "ready"
    assert (await client.get_job("order-1")).payload == {"v": 1}
    assert await raw(client, "LLEN", client.keys.queue("default").ready) == 1


async def test_unique_blocks_reuse_while_the_record_is_kept(client: gqm.Client) -> None:
    """unique=True keeps the id taken even once the job is finished; a plain id can be reused."""
    await client.enqueue("t", 1, job_id="u-1", unique=True)
    await client.enqueue("t", 1, job_id="p-1")
    q = client.keys.queue("default")
    # Finish both jobs the way a worker would: claim, then complete with the claim token.
    reply = await run_script(client, "claim", scripts.claim_keys(q, "tok"), [10, 30000, "w", "tok"])
    tokens = {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 4)}
    args: list[object] = [-1, -1, client.keys.done_channel, q.wake]
    for job_id, token in tokens.items():
        args += [job_id, token, "c", b"", 0, 0]
    codes, _, _ = await run_script(client, "finish", scripts.finish_keys(q), args)
    assert codes == [1, 1]
    with pytest.raises(gqm.DuplicateJobError):
        await client.enqueue("t", 2, job_id="u-1", unique=True)
    again = await client.enqueue("t", 2, job_id="p-1")
    assert again.status is gqm.JobStatus.READY
    assert (await client.get_job("p-1")).payload == 2
    assert await raw(client, "ZSCORE", q.completed, "p-1") is None


async def test_unique_requires_job_id(client: gqm.Client) -> None:
    """unique without a job_id is a usage error."""
    with pytest.raises(gqm.ConfigurationError, match="job_id"):
        await client.enqueue("t", 1, unique=True)


async def test_replayed_enqueue_is_not_a_duplicate(client: gqm.Client) -> None:
    """A script call re-sent after a lost reply (same nonce) succeeds without a second job."""
    q = client.keys.queue("default")
    rec = gqm._options.build_record(
        "t",
        queue=None,
        max_retry=None,
        timeout=None,
        retry_intervals=None,
        job_id="r-1",
        meta=None,
        enqueued_by=None,
        at_front=False,
        unique=True,
    )
    args = [q.wake, rec.id, gqm._options.encode_record(rec), b"1", "b", 0, "nonce-1"]
    first = await run_script(client, "enqueue", scripts.enqueue_keys(q), args)
    second = await run_script(client, "enqueue", scripts.enqueue_keys(q), args)
    assert first == [[0, b"ready"]]
    assert second == [[1, b"ready"]]
    assert await raw(client, "LLEN", q.ready) == 1


def _enqueue_args(q: gqm._keys.QueueKeys, *jobs: tuple[str, bytes, str]) -> list[object]:
    """enqueue.lua's ARGV for (id, record JSON, mode) jobs, each with its own nonce."""
    args: list[object] = [q.wake]
    for n, (job_id, record_json, mode) in enumerate(jobs):
        args += [job_id, record_json, b"null", mode, 0, f"nonce-{n}"]
    return args


async def test_one_id_twice_in_one_call(client: gqm.Client) -> None:
    """The script writes a call's jobs together at its end; an id given twice in one
    call still makes one job, and the second is reported as its duplicate."""
    q = client.keys.queue("default")
    rec = b'{"id":"twice","type":"t","queue":"default"}'
    reply = await run_script(
        client,
        "enqueue",
        scripts.enqueue_keys(q),
        _enqueue_args(q, ("twice", rec, "b"), ("twice", rec, "f")),
    )
    assert reply == [[0, b"ready"], [-1, b"ready"]]
    assert await raw(client, "LRANGE", q.ready, 0, -1) == [b"twice"]
    with pytest.raises(gqm.DuplicateJobError) as info:
        await client.enqueue_batch(
            [gqm.BatchItem("t", 1, job_id="b-1"), gqm.BatchItem("t", 2, job_id="b-1")]
        )
    assert info.value.job_id == "b-1"
    assert (await client.get_job("b-1")).payload == 1


async def test_batch_keeps_the_order_of_front_and_back_jobs(client: gqm.Client) -> None:
    """Back jobs and at_front jobs of one batch end where one-by-one enqueues put them."""
    names = ["b1", "f1", "b2", "f2"]
    await client.enqueue_batch(
        [gqm.BatchItem("t", n, job_id=n, at_front=n.startswith("f")) for n in names]
    )
    q = client.keys.queue("default")
    popped = [await raw(client, "RPOP", q.ready) for _ in names]
    assert popped == [b"f2", b"f1", b"b1", b"b2"]


async def test_the_script_sets_status_and_creation_time(client: gqm.Client) -> None:
    """A plain job's record is stored without being decoded, with status, created_at
    and the nonce appended: they win over stray copies in the client's record."""
    q = client.keys.queue("default")
    rec = b'{"id":"s-1","type":"t","queue":"default","status":"dead_letter","created_at":1}'
    reply = await run_script(
        client, "enqueue", scripts.enqueue_keys(q), _enqueue_args(q, ("s-1", rec, "b"))
    )
    assert reply == [[0, b"ready"]]
    (now_s, _) = await raw(client, "TIME")
    stored = await record(client, "default", "s-1")
    assert stored.status == "ready"
    assert stored.created_at is not None
    assert abs(stored.created_at - int(now_s) * 1000) < 5000
    assert msgspec.json.decode(await raw(client, "HGET", q.jobs, "s-1"))["nonce"] == "nonce-0"


async def test_a_batch_into_an_empty_queue_wakes_fetchers_once(client: gqm.Client) -> None:
    """One wake message per call that makes the ready list non-empty, none for a call
    that adds to a non-empty list."""
    q = client.keys.queue("wq")
    driver = await client._driver()
    async with driver.subscribe(q.wake) as sub:
        await client.enqueue_batch([gqm.BatchItem("t", i, queue="wq") for i in range(3)])
        await client.enqueue_batch([gqm.BatchItem("t", i, queue="wq") for i in range(2)])
        await raw(client, "PUBLISH", q.wake, "end")  # delivered after the scripts' messages
        messages = []
        with anyio.fail_after(10):
            while (message := (await sub.get_message())[1]) != b"end":
                messages.append(message)
    assert messages == [b"r"]


async def test_payload_limit(client: gqm.Client) -> None:
    """Payloads over 1 MiB are refused with a clear error and nothing is stored."""
    with pytest.raises(gqm.PayloadTooLargeError, match="1 MiB"):
        await client.enqueue("t", "x" * (1 << 20))
    assert await raw(client, "EXISTS", client.keys.queue("default").jobs) == 0


async def test_get_job_unknown(client: gqm.Client) -> None:
    """Looking up an unknown id raises JobNotFoundError."""
    with pytest.raises(gqm.JobNotFoundError):
        await client.get_job("nope")
    with pytest.raises(gqm.JobNotFoundError):
        await client.result("nope", timeout=1)


async def test_pause_and_resume(client: gqm.Client) -> None:
    """Pause blocks claims on a queue (enqueue still works); resume lifts it."""
    await client.enqueue("t", 1, queue="pq")
    assert await client.pause("pq") is True
    assert await client.pause("pq") is False
    assert await client.is_paused("pq")
    q = client.keys.queue("pq")
    assert (
        await run_script(client, "claim", scripts.claim_keys(q, "x1"), [10, 30000, "w", "x1"]) == []
    )
    assert await client.resume("pq") is True
    assert await client.resume("pq") is False
    reply = await run_script(client, "claim", scripts.claim_keys(q, "x2"), [10, 30000, "w", "x2"])
    assert len(reply) == 4
    assert (await record(client, "pq", reply[0].decode())).status == "processing"


async def test_invalid_queue_name_is_refused(client: gqm.Client) -> None:
    """Queue names that could address other keys are refused before reaching Redis."""
    for bad in ["a}b", "{x", "", "a b", "x" * 129]:
        with pytest.raises(gqm.ConfigurationError):
            await client.enqueue("t", 1, queue=bad)


async def test_custom_id_is_unique_across_queues(client: gqm.Client) -> None:
    """A custom id live on one queue cannot be enqueued on another; the index keeps
    pointing at the live job."""
    await client.enqueue("t", 1, job_id="shared", queue="qa")
    with pytest.raises(gqm.DuplicateJobError):
        await client.enqueue("t", 2, job_id="shared", queue="qb")
    with pytest.raises(gqm.DuplicateJobError):
        await client.enqueue_batch([gqm.BatchItem("t", 3, job_id="shared", queue="qc")])
    assert (await client.get_job("shared")).queue == "qa"
