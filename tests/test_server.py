"""The worker side against a real Redis: handlers, outcomes, retries, timeouts, pools."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

import gqm

from .helpers import Gate, raw, record, serving

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio


class Order(msgspec.Struct):
    sku: str
    qty: int


process_order = gqm.task("order.process", Order)


async def test_typed_handler_gets_decoded_payload_and_result_is_stored(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """A typed handler receives its Struct; its return value is the job's result."""
    server = make_server()

    @server.handler(process_order)
    async def handle(job: gqm.Job[Order]) -> dict[str, Any]:
        assert isinstance(job.payload, Order)
        return {"total": job.payload.qty * 3, "attempt": job.attempt}

    job = await client.enqueue(process_order, Order(sku="A-1", qty=4))
    async with serving(server):
        assert await client.result(job.id, timeout=10) == {"total": 12, "attempt": 1}
    done = await client.get_job(job.id)
    assert done.status is gqm.JobStatus.COMPLETED
    assert done.result == {"total": 12, "attempt": 1}
    assert done.completed_at is not None
    assert done.started_at is not None
    q = client.keys.queue("default")
    assert await raw(client, "ZCARD", q.leases) == 0
    assert await raw(client, "HGET", q.meta, "processed") == b"1"


async def test_untyped_handler_gets_a_dict(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """Without a task handle the payload is the decoded JSON."""
    server = make_server()
    server.handle("echo", lambda job: _echo(job))
    job = await client.enqueue("echo", {"a": [1, 2]})
    async with serving(server):
        assert await client.result(job.id, timeout=10) == {"a": [1, 2]}


async def _echo(job: gqm.Job[Any]) -> Any:
    return job.payload


async def test_failure_retries_then_dead_letters(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """A failing job is retried max_retry times, then goes to the DLQ with the error."""
    server = make_server()
    attempts: list[int] = []

    @server.handler("boom")
    async def boom(job: gqm.Job[Any]) -> None:
        attempts.append(job.attempt)
        raise ValueError(f"bad input {job.attempt}")

    job = await client.enqueue("boom", None, max_retry=2, retry_intervals=[0])
    async with serving(server):
        with pytest.raises(gqm.JobFailedError, match="bad input 3") as info:
            await client.result(job.id, timeout=10)
    assert info.value.status == "dead_letter"
    assert attempts == [1, 2, 3]
    dead = await client.get_job(job.id)
    assert dead.status is gqm.JobStatus.DEAD_LETTER
    assert (dead.attempt, dead.retry_count) == (3, 2)
    assert "ValueError: bad input 3" in (dead.error or "")
    assert await raw(client, "ZSCORE", client.keys.queue("default").dead, job.id) is not None


async def test_retry_then_success(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """A job that fails twice and then succeeds completes with retry_count 2."""
    server = make_server(retry=gqm.RetryPolicy(backoff="custom", intervals=[0, 0.01]))

    @server.handler("flaky")
    async def flaky(job: gqm.Job[Any]) -> str:
        if job.attempt < 3:
            raise RuntimeError("not yet")
        return "ok"

    job = await client.enqueue("flaky", None)
    async with serving(server):
        assert await client.result(job.id, timeout=10) == "ok"
    done = await client.get_job(job.id)
    assert (done.attempt, done.retry_count, done.error) == (3, 2, None)


async def test_skip_retry_goes_straight_to_dlq(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """SkipRetry sends the job to the DLQ on the first failure, whatever max_retry says."""
    server = make_server()
    calls = 0

    @server.handler("charge")
    async def charge(job: gqm.Job[Any]) -> None:
        nonlocal calls
        calls += 1
        raise gqm.SkipRetry("card declined")

    job = await client.enqueue("charge", None, max_retry=10, retry_intervals=[0])
    async with serving(server):
        with pytest.raises(gqm.JobFailedError, match="card declined"):
            await client.result(job.id, timeout=10)
    assert calls == 1


async def test_is_failure_false_does_not_count(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """Errors that is_failure calls transient are retried without using up max_retry."""
    server = make_server()

    class RateLimited(Exception):
        pass

    async def call_api(job: gqm.Job[Any]) -> str:
        if job.attempt <= 3:
            raise RateLimited()
        return "done"

    server.handle(
        "api.call",
        call_api,
        is_failure=lambda err: not isinstance(err, RateLimited),
        retry=gqm.RetryPolicy(backoff_base=0),
    )
    job = await client.enqueue("api.call", None, max_retry=0)
    async with serving(server):
        assert await client.result(job.id, timeout=10) == "done"
    done = await client.get_job(job.id)
    assert (done.attempt, done.retry_count) == (4, 0)


@pytest.mark.parametrize("level", ["job", "handler", "pool", "global"])
async def test_timeout_hierarchy(
    client: gqm.Client, make_server: Callable[..., gqm.Server], level: str
) -> None:
    """The job's timeout wins over the handler's, the handler's over the pool's, and
    the pool's over the global one; a timed-out job fails with the limit it hit."""
    limits = {"job": 0.2, "handler": 0.3, "pool": 0.4, "global": 0.5}
    server = make_server(global_timeout=limits["global"])
    if level in ("job", "handler", "pool"):
        server.pool(gqm.PoolConfig(name="p", queues=["default"], job_timeout=limits["pool"]))

    async def hang(job: gqm.Job[Any]) -> None:
        await anyio.sleep_forever()

    server.handle("hang", hang, timeout=limits["handler"] if level in ("job", "handler") else None)
    job = await client.enqueue(
        "hang", None, max_retry=0, timeout=limits["job"] if level == "job" else None
    )
    async with serving(server):
        with pytest.raises(gqm.JobFailedError, match=f"timed out after {limits[level]:g}s"):
            await client.result(job.id, timeout=10)


async def test_middleware_runs_in_onion_order(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """Middleware registered first wraps the outside: a -> b -> handler -> b -> a."""
    server = make_server()
    trace: list[str] = []

    def tracing(name: str) -> gqm.Middleware:
        def middleware(next_handler: gqm.Handler) -> gqm.Handler:
            async def wrapped(job: gqm.Job[Any]) -> Any:
                trace.append(f"{name}>")
                result = await next_handler(job)
                trace.append(f"<{name}")
                return result

            return wrapped

        return middleware

    server.use(tracing("a"))
    server.use(tracing("b"))

    @server.handler("t")
    async def handler(job: gqm.Job[Any]) -> int:
        trace.append("handler")
        return 7

    with pytest.raises(gqm.ConfigurationError):
        server.use(None)  # type: ignore[arg-type]
    job = await client.enqueue("t", None)
    async with serving(server):
        with pytest.raises(gqm.ServerStateError):
            server.use(tracing("late"))
        assert await client.result(job.id, timeout=10) == 7
    assert trace == ["a>", "b>", "handler", "<b", "<a"]


async def test_callbacks_and_panic_recovery(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """Callbacks see each outcome after it is recorded; exceptions in handlers and in
    callbacks are caught and the pool keeps running."""
    server = make_server(concurrency=1)
    seen: list[tuple[str, str, Any]] = []

    async def on_success(job: gqm.Job[Any], result: Any) -> None:
        stored = await client.get_job(job.id)
        seen.append(("success", job.payload, (result, stored.status)))

    def on_failure(job: gqm.Job[Any], err: BaseException) -> None:
        seen.append(("failure", job.payload, type(err).__name__))
        raise RuntimeError("a broken callback")

    async def on_complete(job: gqm.Job[Any], err: BaseException | None) -> None:
        seen.append(("complete", job.payload, err is None))

    async def work(job: gqm.Job[Any]) -> str:
        if job.payload == "panic":
            raise ZeroDivisionError("oops")
        return "fine"

    server.handle("w", work, on_success=on_success, on_failure=on_failure, on_complete=on_complete)
    bad = await client.enqueue("w", "panic", max_retry=0)
    good = await client.enqueue("w", "ok")
    async with serving(server):
        with pytest.raises(gqm.JobFailedError, match="ZeroDivisionError"):
            await client.result(bad.id, timeout=10)
        assert await client.result(good.id, timeout=10) == "fine"
    assert seen == [
        ("failure", "panic", "ZeroDivisionError"),
        ("complete", "panic", False),
        ("success", "ok", ("fine", gqm.JobStatus.COMPLETED)),
        ("complete", "ok", True),
    ]


async def test_undecodable_payload_goes_to_dlq(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """A payload that does not match the task's type is dead-lettered with the reason,
    and the worker goes on with the next job."""
    server = make_server(concurrency=1)
    ran: list[Order] = []

    @server.handler(process_order)
    async def handle(job: gqm.Job[Order]) -> None:
        ran.append(job.payload)

    bad = await client.enqueue("order.process", {"sku": 5})
    good = await client.enqueue(process_order, Order(sku="B", qty=1))
    async with serving(server):
        with pytest.raises(gqm.JobFailedError, match="undecodable payload"):
            await client.result(bad.id, timeout=10)
        await client.result(good.id, timeout=10)
    assert ran == [Order(sku="B", qty=1)]
    assert (await client.get_job(bad.id)).attempt == 1


async def test_corrupted_record_payload_bytes(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """Bytes that are not JSON at all are dead-lettered too, not crashing the worker."""
    server = make_server()
    server.handle("echo", _echo)
    job = await client.enqueue("echo", {"x": 1})
    await raw(client, "HSET", client.keys.queue("default").payloads, job.id, b"\x80not json")
    async with serving(server):
        with pytest.raises(gqm.JobFailedError, match="undecodable payload"):
            await client.result(job.id, timeout=10)


async def test_unknown_job_type_is_retried_without_counting(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """A job this server has no handler for is not its fault: it is retried later
    without using up its retries (another server may have the handler)."""
    server = make_server(concurrency=1)
    server.pool(
        gqm.PoolConfig(name="one", queues=["default"], concurrency=1, dequeue_strategy="strict")
    )
    server.handle("known", _echo)
    unknown = await client.enqueue("unknown", None, max_retry=0, retry_intervals=[3600])
    known = await client.enqueue("known", "after")
    async with serving(server):
        # One worker takes the jobs in order, so once the second is done the first was tried.
        assert await client.result(known.id, timeout=10) == "after"
    job = await client.get_job(unknown.id)
    assert (job.status, job.retry_count, job.attempt) == (gqm.JobStatus.RETRY, 0, 1)
    assert "no handler for job type 'unknown'" in (job.error or "")


async def test_paused_queue_is_not_served_until_resumed(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """A pool skips a paused queue, serves its other queues, and picks the paused one up
    as soon as it is resumed (no polling: the resume wakes it)."""
    server = make_server(poll_interval=60)
    server.pool(gqm.PoolConfig(name="p", queues=["held", "open"], dequeue_strategy="strict"))
    server.handle("echo", _echo)
    await client.pause("held")
    held = await client.enqueue("echo", "held", queue="held")
    async with serving(server):
        opened = await client.enqueue("echo", "open", queue="open")
        assert await client.result(opened.id, timeout=10) == "open"
        assert (await client.get_job(held.id)).status is gqm.JobStatus.READY
        await client.resume("held")
        assert await client.result(held.id, timeout=10) == "held"


async def test_delayed_job_is_promoted_on_time(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """A delayed job runs once due; the promoter wakes for it without polling."""
    server = make_server(poll_interval=60)
    server.handle("echo", _echo)
    async with serving(server):
        job = await client.enqueue_in("echo", "later", 0.3)
        assert job.status is gqm.JobStatus.SCHEDULED
        assert await client.result(job.id, timeout=10) == "later"
    done = await client.get_job(job.id)
    assert done.started_at is not None
    assert done.scheduled_at is not None
    assert done.started_at >= done.scheduled_at


async def test_idle_pool_wakes_on_enqueue(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """An idle pool picks up a new job at once, although its safety poll is an hour."""
    server = make_server(poll_interval=3600)
    server.handle("echo", _echo)
    async with serving(server):
        for i in range(3):
            job = await client.enqueue("echo", i)
            assert await client.result(job.id, timeout=10) == i


async def test_strategies_serve_every_queue(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """strict, round_robin and weighted pools each drain all their queues."""
    server = make_server()
    for strategy in ("strict", "round_robin", "weighted"):
        server.pool(
            gqm.PoolConfig(
                name=strategy,
                job_types=[strategy],
                queues=[f"{strategy}-hi", f"{strategy}-lo"],
                concurrency=2,
                dequeue_strategy=strategy,
            )
        )
        server.handle(strategy, _echo)
    items = [
        gqm.BatchItem(s, i, queue=f"{s}-{level}")
        for s in ("strict", "round_robin", "weighted")
        for level in ("hi", "lo")
        for i in range(10)
    ]
    jobs = await client.enqueue_batch(items)
    async with serving(server):
        for job in jobs:
            assert await client.result(job.id, timeout=10) == job.payload


async def test_strict_priority_order(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """With one worker and strict priority, every high-priority job runs before any low one."""
    server = make_server()
    server.pool(
        gqm.PoolConfig(name="p", queues=["hi", "lo"], concurrency=1, dequeue_strategy="strict")
    )
    order: list[str] = []

    async def note(job: gqm.Job[Any]) -> None:
        order.append(job.queue)

    server.handle("n", note)
    jobs = await client.enqueue_batch(
        [gqm.BatchItem("n", None, queue="lo") for _ in range(5)]
        + [gqm.BatchItem("n", None, queue="hi") for _ in range(5)]
    )
    async with serving(server):
        for job in jobs:
            await client.result(job.id, timeout=10)
    assert order == ["hi"] * 5 + ["lo"] * 5


async def test_dedicated_pool_per_handler(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """workers=N gives a handler its own pool of N, reading the task's queue."""
    server = make_server()
    emails = gqm.task("email", queue="emails")
    gate = Gate(expected=3)

    @server.handler(emails, workers=3)
    async def send(job: gqm.Job[Any]) -> None:
        await gate.enter(job.id)

    jobs = [await client.enqueue(emails, {"n": i}) for i in range(4)]
    async with serving(server):
        await gate.all_started.wait()
        # Three run at once and no more: the fourth waits (in the queue, or prefetched
        # by the pool) until a worker is free.
        assert len(gate.started) == 3
        gate.release.set()
        for job in jobs:
            await client.result(job.id, timeout=10)
    pools = {p.config.name: p.config for p in server._pools}
    assert pools["handler:email"].concurrency == 3
    assert pools["handler:email"].queues == ("emails",)


async def test_registration_errors(make_server: Callable[..., gqm.Server]) -> None:
    """Pools and handlers that contradict each other are refused up front."""
    server = make_server()
    server.pool(gqm.PoolConfig(name="a", job_types=["x"]))
    with pytest.raises(gqm.ConfigurationError, match="already belong"):
        server.pool(gqm.PoolConfig(name="b", job_types=["x"]))
    with pytest.raises(gqm.ConfigurationError, match="already exists"):
        server.pool(gqm.PoolConfig(name="a", job_types=["y"]))
    server.pool(gqm.PoolConfig(name="c", job_types=["*"]))
    with pytest.raises(gqm.ConfigurationError, match="catch-all"):
        server.pool(gqm.PoolConfig(name="d", job_types=["*"]))
    server.handle("x", _echo)
    with pytest.raises(gqm.ConfigurationError, match="already registered"):
        server.handle("x", _echo)
    with pytest.raises(gqm.ConfigurationError, match="cannot be disabled"):
        make_server(global_timeout=0)
    with pytest.raises(gqm.ConfigurationError):
        gqm.PoolConfig(name="e", job_types=["*", "x"])
    with pytest.raises(gqm.ConfigurationError):
        gqm.PoolConfig(name="e", dequeue_strategy="random")


async def test_retention_zero_deletes_at_once(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """completed_ttl=0 deletes a completed job's record in the finishing script."""
    server = make_server(completed_ttl=0)
    done = anyio.Event()

    async def work(job: gqm.Job[Any]) -> None:
        done.set()

    server.handle("t", work)
    job = await client.enqueue("t", None)
    async with serving(server):
        await done.wait()
    # serving() waited for the server to stop, so the outcome is written.
    q = client.keys.queue("default")
    assert await raw(client, "HEXISTS", q.jobs, job.id) == 0
    assert await raw(client, "ZCARD", q.completed) == 0
    assert await raw(client, "HGET", q.meta, "processed") == b"1"


async def test_retention_sweeps_expired_records(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """Records past their retention are removed by the next finishing script, id index included."""
    server = make_server(completed_ttl=1)
    server.handle("echo", _echo)
    old = await client.enqueue("echo", "old")
    async with serving(server):
        await client.result(old.id, timeout=10)
        q = client.keys.queue("default")
        # Age the finished record by moving its finish time back one minute.
        score = float(await raw(client, "ZSCORE", q.completed, old.id))
        await raw(client, "ZADD", q.completed, score - 60_000, old.id)
        new = await client.enqueue("echo", "new")
        await client.result(new.id, timeout=10)
    assert await raw(client, "HEXISTS", q.jobs, old.id) == 0
    assert await raw(client, "HEXISTS", q.jobs, new.id) == 1
    assert await raw(client, "HEXISTS", client.keys.ids, old.id) == 0
    assert (await record(client, "default", new.id)).status == "completed"


def test_from_config_code_overrides_the_file() -> None:
    """Server.from_config takes pools, cron entries and settings from the file; keywords
    given in code win."""
    cfg = gqm.load_config(
        """
app:
  grace_period: 7
  global_job_timeout: 600
queues:
  - name: critical
pools:
  - name: fast
    job_types: ["email.send"]
    queues: ["critical", "default"]
    concurrency: 4
scheduler:
  cron_entries:
    - id: nightly
      cron_expr: "0 0 2 * * *"
      job_type: cleanup
"""
    )
    server = gqm.Server.from_config(cfg, grace_period=1, handle_signals=False)
    assert server.grace_period == 1
    assert server.global_timeout == 600
    assert [p.name for p in server._pool_configs] == ["fast"]
    assert server._pool_configs[0].queues == ("critical", "default")
    assert list(server._cron) == ["nightly"]
