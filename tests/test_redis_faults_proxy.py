"""Connection faults through the fault proxy (RELIABILITY T6) and the unique-job race
(T12), against the session's real redis-server.

The gqm server and client both reach Redis through a :class:`~tests.faultproxy.FaultProxy`
that resets connections, loses replies after Redis executed the command, and blackholes
traffic. Handlers count their executions in the test process (outside gqm's keys).
Replays (a script call that Redis had already applied, recognised by the script and not
applied twice) are counted by watching the scripts' replies. Figures are printed (see
them with ``pytest -s -rA``); correctness (0 lost, 0 duplicate enqueues, exactly one
unique job, invariants over the keyspace) is asserted.

Fast mode is the default; ``GQM_STRESS=1`` runs the full sizes (slow).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import gqm
from gqm import _scripts as scripts

from .faultproxy import FaultProxy
from .helpers import raw, serving
from .invariants import assert_invariants
from .test_redis_faults import (
    JOB,
    STRESS,
    Executions,
    Producer,
    job_ids,
    queue_counts,
    report,
    retrying,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from gqm._embedded import EmbeddedRedis

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:record_property is incompatible:pytest.PytestWarning"),
    pytest.mark.timeout(900 if STRESS else 120),
]


class Replays:
    """Counts script calls that Redis recognised as replays of an applied call: an
    enqueue answered "replay of this very call" (code 1), a finish answered "already
    done by this token" (code 2). Also counts jobs created per id (code 0)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.enqueue = 0
        self.finish = 0
        self.created: Counter[str] = Counter()
        run_many = scripts.run_many

        async def watched(driver: Any, calls: Sequence[Any], extra: Sequence[Any] = ()) -> Any:
            replies = await run_many(driver, calls, extra)
            for (script, _keys, args), reply in zip(calls, replies, strict=True):
                if script.name == "enqueue":
                    ids = args[1::6]
                    for job_id, (code, _status) in zip(ids, reply, strict=True):
                        if code == 0:
                            self.created[str(job_id)] += 1
                        elif code == 1:
                            self.enqueue += 1
                elif script.name == "finish":
                    self.finish += sum(1 for code in reply[0] if code == 2)
            return replies

        monkeypatch.setattr(scripts, "run_many", watched)


def _port(redis_server: EmbeddedRedis) -> int:
    return redis_server.port


async def _inject_faults(
    proxy: FaultProxy, rng: random.Random, stop: anyio.Event, period: float
) -> Counter[str]:
    """Until ``stop``: every ``period`` seconds, reset all connections or arm a lost
    reply (for any command, or for a script call), at random."""
    done: Counter[str] = Counter()
    while not stop.is_set():
        with anyio.move_on_after(period):
            await stop.wait()
        if stop.is_set():
            break
        kind = rng.choice(["reset", "drop", "drop_script"])
        if kind == "reset":
            proxy.reset()
        elif kind == "drop":
            proxy.drop_reply_after_forward(1)
        else:
            proxy.drop_reply_after_forward(1, match=b"EVALSHA")
        done[kind] += 1
    proxy.passthrough()
    return done


class _Timed:
    """The longest single enqueue call, and the first connection error after a mark."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.mark: float | None = None
        self.first_error_after_mark: float | None = None


def _timed_client(client: gqm.Client, timed: _Timed) -> gqm.Client:
    enqueue = client.enqueue

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        start = anyio.current_time()
        try:
            return await enqueue(*args, **kwargs)
        except gqm.RedisConnectionError:
            if (
                timed.mark is not None
                and timed.first_error_after_mark is None
                and start >= timed.mark
            ):
                timed.first_error_after_mark = anyio.current_time()
            raise
        finally:
            timed.longest = max(timed.longest, anyio.current_time() - start)

    client.enqueue = wrapped  # type: ignore[method-assign]
    return client


async def test_t6_connection_faults(
    anyio_backend: str,
    redis_server: EmbeddedRedis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """T6: jobs are enqueued and processed while the proxy resets connections at random,
    loses replies of commands Redis executed, and blackholes all traffic for a while.
    Afterwards: every acknowledged job ran (0 lost), no id was enqueued twice (custom
    ids, made idempotency keys with ``unique``), nothing is stuck, the keyspace passes
    the invariant checker; the blackhole is detected by the socket timeout (no hang).
    Replays and duplicate executions are counted and reported."""
    caplog.set_level(logging.ERROR)
    n = 5000 if STRESS else 1000
    blackhole_s = 30.0 if STRESS else 3.0
    socket_timeout = 2.0
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    replays = Replays(monkeypatch)
    execs = Executions()
    timed = _Timed()
    ids = job_ids(n)
    async with FaultProxy("127.0.0.1", _port(redis_server)) as proxy:
        server = gqm.Server(
            proxy.url,
            prefix=prefix,
            handle_signals=False,
            grace_period=2,
            concurrency=20,
            lease_ttl=5,
            socket_timeout=socket_timeout,
            poll_interval=0.5,
        )
        server.handle(JOB, execs.handler)
        async with gqm.Client(proxy.url, prefix=prefix, socket_timeout=socket_timeout) as client:
            producer = Producer(_timed_client(client, timed), options={"unique": True})
            faults: Counter[str] = Counter()

            async def with_faults(part: Sequence[str]) -> None:
                """Enqueue ``part`` while faults are injected (stopped at the end)."""
                stop = anyio.Event()
                async with anyio.create_task_group() as ftg:

                    async def inject() -> None:
                        faults.update(await _inject_faults(proxy, rng, stop, period=0.05))

                    ftg.start_soon(inject)
                    await producer.run(part)
                    stop.set()

            async with serving(server):
                third = n // 3
                await with_faults(ids[:third])
                # The blackhole, in the middle of the stream.
                proxy.blackhole()
                timed.mark = blackhole_at = anyio.current_time()
                async with anyio.create_task_group() as inner:
                    inner.start_soon(producer.run, ids[third : 2 * third])
                    await anyio.sleep(blackhole_s)  # the length of the fault itself
                    proxy.heal()
                    healed_at = anyio.current_time()
                await with_faults(ids[2 * third :])
                await execs.wait_for(ids, timeout=120)
                # Everything ran; wait for the last acknowledgements to be recorded.
                with anyio.fail_after(60):
                    while (await queue_counts(client))["completed"] < n:  # noqa: ASYNC110
                        await anyio.sleep(0.05)
            counts = await queue_counts(client)
            await assert_invariants(client, drained=True)
    lost = [i for i in ids if i not in execs.runs]
    twice = [i for i, c in replays.created.items() if c > 1]
    detected = (
        round(timed.first_error_after_mark - blackhole_at, 3)
        if timed.first_error_after_mark is not None
        else "no error (rode through)"
    )
    report(
        record_property,
        anyio_backend,
        "T6 connection faults",
        jobs=n,
        seed=seed,
        resets=proxy.stats.resets,
        lost_replies=proxy.stats.dropped_replies,
        blackhole_s=blackhole_s,
        blackhole_detected_s=detected,
        longest_enqueue_s=round(timed.longest, 3),
        recovered_after_heal_s=round(
            min((t for t in producer.acked.values() if t >= healed_at), default=0) - healed_at, 3
        ),
        enqueue_connection_errors=producer.connection_errors,
        enqueue_confirmed_by_duplicate=producer.confirmed_by_duplicate,
        enqueue_replays=replays.enqueue,
        finish_replays=replays.finish,
        duplicate_executions=execs.duplicates,
        lost=len(lost),
        faults=dict(faults),
    )
    assert producer.reply_errors == []
    assert lost == []
    assert twice == [], f"ids enqueued twice: {twice[:5]}"
    assert counts["ready"] == counts["leases"] == counts["scheduled"] == 0
    assert counts["completed"] == n
    assert proxy.stats.resets > 0
    assert proxy.stats.dropped_replies > 0


# -- T12: unique race -------------------------------------------------------------------


async def _race(
    url: str,
    prefix: str,
    key: str,
    clients: int,
    total: int,
    socket_timeout: float = 10.0,
    on_attempt: Callable[[int], None] | None = None,
) -> tuple[int, int, int]:
    """``clients`` clients enqueue the unique id ``key`` ``total`` times in all, at once.
    ``on_attempt(n)`` is called before the n-th attempt (to inject faults at a pace
    set by the race's own progress, whatever the driver's speed).
    Returns (created, refused as duplicates, connection errors retried)."""
    created = refused = errors = connected = attempts = 0
    all_connected = anyio.Event()
    go = anyio.Event()

    async def one(per_client: int) -> None:
        nonlocal created, refused, errors, connected, attempts
        async with gqm.Client(url, prefix=prefix, socket_timeout=socket_timeout) as client:
            await retrying(client.ping)  # connected before the start signal
            connected += 1
            if connected == clients:
                all_connected.set()
            await go.wait()
            for _ in range(per_client):
                while True:
                    attempts += 1
                    if on_attempt is not None:
                        on_attempt(attempts)
                    try:
                        await client.enqueue(JOB, 0, job_id=key, unique=True)
                        created += 1
                    except gqm.DuplicateJobError:
                        refused += 1
                    except gqm.RedisConnectionError:
                        errors += 1
                        await anyio.sleep(0.01)  # back off, then the same id again
                        continue
                    break

    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(one, total // clients)
        # Every client connects first, so that the enqueues really race.
        with anyio.fail_after(60):
            await all_connected.wait()
        go.set()
    return created, refused, errors


async def test_t12_unique_race(
    anyio_backend: str,
    redis_url: str,
    prefix: str,
    client: gqm.Client,
    record_property: Any,
) -> None:
    """T12: 50 clients enqueue the same unique id 1,000 times in all, at once: exactly
    one job is created, every other call is refused as a duplicate. The id stays taken
    per policy: while the job is live, and after it completed for its retention TTL
    (``completed_ttl=0``: released at once); the same for the dead-letter queue."""
    key = f"uniq-{prefix}"
    created, refused, errors = await _race(redis_url, prefix, key, clients=50, total=1000)
    assert (created, refused) == (1, 999)
    assert (await client.get_job(key)).status == gqm.JobStatus.READY

    fail_key = f"uniq-dlq-{prefix}"
    await client.enqueue("fail", 0, job_id=fail_key, unique=True)

    async def fail(job: gqm.Job[Any]) -> None:
        raise gqm.SkipRetry("goes to the DLQ")

    execs = Executions()
    # Completed records are deleted at once (the lock goes with them); dead ones kept.
    server = gqm.Server(
        redis_url, prefix=prefix, handle_signals=False, grace_period=2, completed_ttl=0
    )
    server.handle(JOB, execs.handler)
    server.handle("fail", fail)
    async with serving(server):
        await execs.wait_for([key], timeout=30)
        dead = await _wait_status(client, fail_key, gqm.JobStatus.DEAD_LETTER)
        # completed_ttl=0: the record (and with it the lock) is gone once completed.
        with anyio.fail_after(30):
            while await raw(client, "HEXISTS", client.keys.queue("default").jobs, key):  # noqa: ASYNC110
                await anyio.sleep(0.02)
        again = await client.enqueue(JOB, 1, job_id=key, unique=True)
        await execs.wait_for([again.id], timeout=30)
        # The dead-letter record is retained (30 days): its id stays taken.
        with pytest.raises(gqm.DuplicateJobError) as taken:
            await client.enqueue("fail", 1, job_id=fail_key, unique=True)
    await assert_invariants(client, drained=True)
    report(
        record_property,
        anyio_backend,
        "T12 unique race",
        clients=50,
        enqueues=1000,
        created=created,
        refused=refused,
        connection_errors=errors,
    )
    assert dead.status == gqm.JobStatus.DEAD_LETTER
    assert taken.value.status == "dead_letter"
    assert execs.runs[key] == 2  # once per job created under that id


async def _wait_status(client: gqm.Client, job_id: str, status: gqm.JobStatus) -> gqm.Job[Any]:
    with anyio.fail_after(30):
        while True:
            job = await client.get_job(job_id)
            if job.status == status:
                return job
            await anyio.sleep(0.02)  # polling Redis: there is no event for a state


async def test_t12_unique_race_through_resets(
    anyio_backend: str,
    redis_server: EmbeddedRedis,
    prefix: str,
    client: gqm.Client,
    record_property: Any,
) -> None:
    """T12 through the proxy: the same race while connections are reset and replies
    lost at random. Still exactly one job, and no ghost lock: the id is held by that one
    job's record and nothing else (invariant checker), and once the job completes with
    ``completed_ttl=0`` the id is free again."""
    key = f"uniq-r-{prefix}"
    async with FaultProxy("127.0.0.1", _port(redis_server)) as proxy:

        def fault(attempt: int) -> None:
            # Every 50th attempt resets every connection; 25 attempts later a reply
            # is lost after Redis ran the command.
            if attempt % 50 == 0:
                proxy.reset()
            elif attempt % 50 == 25:
                proxy.drop_reply_after_forward(1, match=b"EVALSHA")

        created, refused, errors = await _race(
            proxy.url, prefix, key, clients=50, total=1000, socket_timeout=2, on_attempt=fault
        )
        resets, dropped = proxy.stats.resets, proxy.stats.dropped_replies
    report(
        record_property,
        anyio_backend,
        "T12 unique race through resets",
        created=created,
        refused=refused,
        connection_errors=errors,
        resets=resets,
        lost_replies=dropped,
    )
    # A call whose reply was lost after it created the job is retried and refused:
    # so "created" may be 0 (its one creation was never acknowledged), never 2.
    assert created <= 1
    assert created + refused == 1000
    records = await raw(client, "HGET", client.keys.queue("default").jobs, key)
    assert records is not None, "the job exists"
    assert resets > 0
    assert dropped > 0
    await assert_invariants(client, drained=True)
    execs = Executions()
    server = gqm.Server(
        redis_server.url, prefix=prefix, handle_signals=False, grace_period=2, completed_ttl=0
    )
    server.handle(JOB, execs.handler)
    async with serving(server):
        await execs.wait_for([key], timeout=30)
        with anyio.fail_after(30):
            while await raw(client, "HEXISTS", client.keys.queue("default").jobs, key):  # noqa: ASYNC110
                await anyio.sleep(0.02)
    # No ghost lock: the id can be taken again.
    job = await retrying(lambda: client.enqueue(JOB, 2, job_id=key, unique=True))
    assert job.id == key
    assert execs.runs[key] == 1


@pytest.mark.parametrize("size", [1, 100])
async def test_lost_enqueue_reply_is_replayed(
    anyio_backend: str, redis_server: EmbeddedRedis, prefix: str, size: int
) -> None:
    """An enqueue whose reply is lost (Redis created the jobs, the connection died before
    the answer) succeeds for the caller, and the jobs exist once: the client sends the
    very same call again and the script recognises it. Without that, the caller sees
    an error for jobs that exist, and its retry enqueues them a second time."""
    async with (
        FaultProxy("127.0.0.1", _port(redis_server)) as proxy,
        gqm.Client(proxy.url, prefix=prefix) as client,
    ):
        await client.ping()
        proxy.drop_reply_after_forward(1, match=b"EVALSHA")
        if size == 1:
            jobs = [await client.enqueue(JOB, 0)]
        else:
            jobs = await client.enqueue_batch([gqm.BatchItem(JOB, i) for i in range(size)])
        assert proxy.stats.dropped_replies == 1
        assert len(jobs) == size
        assert await raw(client, "LLEN", client.keys.queue("default").ready) == size
        for job in jobs:
            assert (await client.get_job(job.id)).status == gqm.JobStatus.READY
        await assert_invariants(client)
