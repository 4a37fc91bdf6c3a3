"""Cron scheduling against a real Redis: one fire per tick across servers, enable and
disable, misfires, overlap policies, manual triggers, registration and bad entries."""

from __future__ import annotations

import itertools
from collections import Counter
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

import gqm
from gqm._cron_runtime import redis_now_ms
from gqm._cron_runtime import register as register_cron

from .helpers import Gate, raw, serving

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio

EVERY_SECOND = "* * * * * *"
#: An expression that does not fire during a test run (midnight, January 1st).
YEARLY = "0 0 0 1 1 *"


class Fires:
    """The job ids a handler has seen (with how often), and a way to wait on them."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.counts: Counter[str] = Counter()
        self._changed = anyio.Event()

    def add(self, job_id: str) -> None:
        self.ids.append(job_id)
        self.counts[job_id] += 1
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def ticks(self) -> list[int]:
        """The ticks (unix ms) of the scheduled fires seen, in order of execution."""
        return [tick_of(i) for i in self.ids if ":manual:" not in i]

    async def wait_for(self, condition: Callable[[], bool], *, timeout: float) -> None:
        """Wait until ``condition()`` holds, re-checking after each fire (no polling)."""
        with anyio.fail_after(timeout):
            while not condition():
                await self._changed.wait()


def tick_of(job_id: str) -> int:
    """The tick of a deterministic cron job id ``cron:<entry>:<tick ms>``."""
    return int(job_id.rsplit(":", 1)[1])


async def redis_now(client: gqm.Client) -> int:
    return await redis_now_ms(await client._conn.get())


async def wait_started(gate: Gate, *, timeout: float = 15) -> None:
    with anyio.fail_after(timeout):
        await gate.all_started.wait()


def entry(entry_id: str, job_type: str, expr: str = EVERY_SECOND, **kw: Any) -> gqm.CronEntry:
    return gqm.CronEntry(id=entry_id, cron_expr=expr, job_type=job_type, **kw)


# -- the scenario -------------------------------------------------------------


async def test_five_servers_fire_every_tick_exactly_once_and_stop_together(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """5 servers, one every-second entry, 20 ticks: each runs once, no gap; a disable stops all."""
    runs, beats = Fires(), Fires()
    by_server: Counter[str | None] = Counter()

    async def tick(job: gqm.Job[Any]) -> None:
        runs.add(job.id)
        by_server[job.worker_id] += 1

    async def beat(job: gqm.Job[Any]) -> None:
        beats.add(job.id)

    servers = []
    for _ in range(5):
        server = make_server()
        server.handle("tick", tick)
        server.handle("beat", beat)
        server.schedule(entry("every-second", "tick"))
        server.schedule(entry("beat", "beat"))
        servers.append(server)

    async with AsyncExitStack() as stack:
        for server in servers:
            await stack.enter_async_context(serving(server))
        await runs.wait_for(lambda: len(runs.counts) >= 20, timeout=60)

        await client.cron_disable("every-second")
        seen_at_disable = len(runs.counts)
        disabled_at = await redis_now(client)
        # Every server has stopped: the beat entry (same servers, same schedulers) keeps
        # firing while the disabled one does not.
        await beats.wait_for(lambda: sum(t > disabled_at for t in beats.ticks()) >= 3, timeout=30)
        stored = {e.id: e for e in await client.cron_entries()}
        assert stored["every-second"].enabled is False
        assert stored["beat"].enabled is True
        assert await client.cron_next_run("every-second") is None
        assert await client.cron_next_run("beat") is not None
        history = await client.cron_history("every-second")
        for item in history:
            assert item.job_id is not None
            await client.result(item.job_id, timeout=10)
        last_run = await client.cron_last_run("every-second")
        assert last_run is not None
        assert int(last_run.timestamp() * 1000) == max(h.tick for h in history)

    # A tick claimed (compare-and-set on cron:next) just before the disable landed is
    # already in the outbox, or enqueued and not yet picked up by a worker: it still runs
    # once. That is at most one fire, and its tick is not later than the disable.
    assert len(runs.counts) <= seen_at_disable + 1
    ticks = sorted(tick_of(i) for i in runs.counts)
    assert max(ticks) <= disabled_at

    per_tick = Counter(runs.counts.values())
    print(
        f"\ncron, 5 servers: {len(ticks)} ticks "
        f"({datetime.fromtimestamp(ticks[0] / 1000, UTC):%H:%M:%S}"
        f"..{datetime.fromtimestamp(ticks[-1] / 1000, UTC):%H:%M:%S}), "
        f"executions per tick: {dict(per_tick)}, "
        f"history items: {len(history)}, jobs run per server: "
        f"{sorted(by_server.values(), reverse=True)}, beats after the disable: "
        f"{sum(t > disabled_at for t in beats.ticks())}"
    )
    assert set(runs.counts.values()) == {1}, runs.counts
    assert [b - a for a, b in itertools.pairwise(ticks)] == [1000] * (len(ticks) - 1)
    assert set(beats.counts.values()) == {1}

    assert [h.outcome for h in history] == ["enqueued"] * len(history)
    assert len({h.tick for h in history}) == len(history)
    assert sorted(h.tick for h in history) == ticks
    assert {h.job_id for h in history} == set(runs.counts)


async def test_enable_after_disable_resumes_firing(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """A disabled entry fires again after cron_enable, at ticks after the enable."""
    runs = Fires()

    async def tick(job: gqm.Job[Any]) -> None:
        runs.add(job.id)

    server = make_server()
    server.handle("tick", tick)
    server.schedule(entry("toggled", "tick"))
    async with serving(server):
        await runs.wait_for(lambda: len(runs.ids) >= 1, timeout=15)
        await client.cron_disable("toggled")
        assert await client.cron_next_run("toggled") is None
        assert not [e for e in await client.cron_entries() if e.enabled]
        enabled_at = await redis_now(client)
        await client.cron_enable("toggled")
        assert await client.cron_next_run("toggled") is not None
        assert [e.enabled for e in await client.cron_entries()] == [True]
        await runs.wait_for(lambda: any(t > enabled_at for t in runs.ticks()), timeout=15)
    assert set(runs.counts.values()) == {1}
    with pytest.raises(gqm.JobNotFoundError):
        await client.cron_enable("no-such-entry")
    with pytest.raises(gqm.JobNotFoundError):
        await client.cron_disable("no-such-entry")


# -- misfires -----------------------------------------------------------------------


async def _stored_with_next_tick(client: gqm.Client, cron: gqm.CronEntry, ago_ms: int) -> int:
    """Register ``cron`` as a server would, then move its next tick ``ago_ms`` into the
    past (as if every server had been down). Returns that tick."""
    await register_cron(await client._conn.get(), client.keys, [cron])
    tick = (await redis_now(client)) // 1000 * 1000 - ago_ms
    await raw(client, "ZADD", client.keys.cron_next, tick, cron.id)
    return tick


async def test_tick_later_than_the_grace_is_skipped(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """A tick 120 s late (grace 60 s) is not fired; the entry resumes at a tick after start."""
    runs = Fires()

    async def tick(job: gqm.Job[Any]) -> None:
        runs.add(job.id)

    cron = entry("stale", "tick")
    stale = await _stored_with_next_tick(client, cron, 120_000)
    server = make_server(misfire_grace=60.0)
    server.handle("tick", tick)
    server.schedule(cron)
    started_at = await redis_now(client)
    async with serving(server):
        await runs.wait_for(lambda: len(runs.ids) >= 1, timeout=15)
    assert runs.ticks()[0] >= started_at
    assert min(runs.ticks()) > stale
    with pytest.raises(gqm.JobNotFoundError):
        await client.get_job(f"cron:stale:{stale}")
    assert stale not in {h.tick for h in await client.cron_history("stale")}


async def test_a_fire_whose_taker_died_runs_late_within_the_grace(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """T11: a server took two fires out of the outbox and died before enqueueing them,
    while later ticks of the entry fired. Both come back to the outbox; the one 20 s old
    runs late (within the 60 s grace: no tick is lost to a crash), the one 120 s old is
    recorded as missed and makes no job."""
    runs = Fires()

    async def tick(job: gqm.Job[Any]) -> None:
        runs.add(job.id)

    cron = entry("crashed-taker", "tick", YEARLY)
    await register_cron(await client._conn.get(), client.keys, [cron])
    now = await redis_now(client)
    late, too_late = now - 20_000, now - 120_000
    # A later tick has fired since (its job is gone: the overlap check lets this run).
    await raw(client, "HSET", client.keys.cron_fired, cron.id, now - 1000)
    for t in (late, too_late):
        fire = msgspec.json.encode({"id": cron.id, "tick": t, "job_id": f"cron:{cron.id}:{t}"})
        # Taken 15 s ago by a taker that never recorded it.
        await raw(client, "ZADD", client.keys.cron_taken, now - 15_000, fire)
    server = make_server(misfire_grace=60.0)
    server.handle("tick", tick)
    server.schedule(cron)
    async with serving(server):
        await runs.wait_for(lambda: bool(runs.ids), timeout=15)
        with anyio.fail_after(15):  # polling Redis: the history has no event to wait on
            while len(await client.cron_history(cron.id)) < 2:  # noqa: ASYNC110
                await anyio.sleep(0.05)
    assert runs.ids == [f"cron:{cron.id}:{late}"]
    outcomes = {h.tick: h.outcome for h in await client.cron_history(cron.id)}
    assert outcomes == {late: "enqueued", too_late: "missed"}
    with pytest.raises(gqm.JobNotFoundError):
        await client.get_job(f"cron:{cron.id}:{too_late}")
    # The later tick stays the last fired one (the overlap check looks for its job).
    assert await raw(client, "HGET", client.keys.cron_fired, cron.id) == str(now - 1000).encode()
    assert await raw(client, "ZCARD", client.keys.cron_taken) == 0


async def test_tick_late_within_the_grace_fires_once(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """A tick 10 s late (grace 60 s) fires once; the ticks missed after it do not burst."""
    runs = Fires()

    async def tick(job: gqm.Job[Any]) -> None:
        runs.add(job.id)

    cron = entry("late", "tick")
    late = await _stored_with_next_tick(client, cron, 10_000)
    server = make_server(misfire_grace=60.0)
    server.handle("tick", tick)
    server.schedule(cron)
    started_at = await redis_now(client)
    async with serving(server):
        late_id = f"cron:late:{late}"
        await runs.wait_for(lambda: late_id in runs.counts and len(runs.ids) >= 2, timeout=15)
    assert runs.counts[late_id] == 1
    # After the late tick, the schedule moves on from now: none of the nine ticks
    # between it and the server's start is fired.
    assert [t for t in runs.ticks() if t != late] == [t for t in runs.ticks() if t >= started_at]
    assert set(runs.counts.values()) == {1}
    late_items = [h for h in await client.cron_history("late") if h.tick == late]
    assert [h.outcome for h in late_items] == ["enqueued"]


# -- overlap policies -----------------------------------------------------------------


def _slow_server(
    make_server: Callable[..., gqm.Server], policy: str, gate: Gate, runs: Fires, ends: Fires
) -> gqm.Server:
    """A server with an every-second entry "slow" whose jobs block on ``gate``."""

    async def work(job: gqm.Job[Any]) -> None:
        runs.add(job.id)
        try:
            await gate.enter(job.id)
        finally:
            ends.add(job.id)

    server = make_server()
    server.handle("work", work)
    server.schedule(entry("slow", "work", overlap_policy=policy))
    return server


async def test_skip_policy_skips_ticks_while_the_job_runs(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """skip: ticks during a running job are recorded as skipped and start no second job."""
    gate, runs, ends, beats = Gate(), Fires(), Fires(), Fires()

    async def beat(job: gqm.Job[Any]) -> None:
        beats.add(job.id)

    server = _slow_server(make_server, "skip", gate, runs, ends)
    server.handle("beat", beat)
    server.schedule(entry("beat", "beat"))
    async with serving(server):
        try:
            await wait_started(gate)
            first = gate.started[0]
            first_tick = tick_of(first)
            # The beat entry ticks on the same seconds: once its fire three seconds
            # later has run, the two "slow" ticks in between have been processed.
            await beats.wait_for(
                lambda: any(t >= first_tick + 3000 for t in beats.ticks()), timeout=15
            )
            later = [h for h in await client.cron_history("slow") if h.tick > first_tick]
            assert len(later) >= 2
            assert {h.outcome for h in later} == {"skipped"}, later
            # A skipped tick made no job, and says so.
            assert all(item.job_id is None for item in later)
            assert runs.ids == [first]
            assert (await client.get_job(first)).status is gqm.JobStatus.PROCESSING
        finally:
            gate.release.set()
        await client.result(first, timeout=10)
        # Once the job has finished, the next tick runs a job again.
        await runs.wait_for(lambda: len(runs.ids) >= 2, timeout=15)
    assert set(runs.counts.values()) == {1}


async def test_replace_policy_aborts_the_running_job(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """replace: the next tick aborts the running job (stopped, handler cancelled) and runs anew."""
    gate, runs, ends = Gate(), Fires(), Fires()
    server = _slow_server(make_server, "replace", gate, runs, ends)
    async with serving(server):
        try:
            await wait_started(gate)
            first = gate.started[0]
            await ends.wait_for(lambda: first in ends.counts, timeout=15)
            # The gate was never released: the handler left through cancellation.
            assert not gate.release.is_set()
            with pytest.raises(gqm.JobFailedError) as info:
                await client.result(first, timeout=10)
            assert info.value.status == "stopped"
            stopped = await client.get_job(first)
            assert stopped.status is gqm.JobStatus.STOPPED
            assert stopped.error is not None
            assert stopped.error.startswith("aborted")
            await runs.wait_for(lambda: len(runs.ids) >= 2, timeout=15)
            second = runs.ids[1]
            assert tick_of(second) > tick_of(first)
        finally:
            gate.release.set()
    history = {h.job_id: h.outcome for h in await client.cron_history("slow")}
    assert history[first] == "enqueued"
    assert history[second] == "enqueued"
    assert set(runs.counts.values()) == {1}


async def test_allow_policy_runs_jobs_concurrently(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """allow: a tick starts a new job while the previous one still runs."""
    gate, runs, ends = Gate(expected=2), Fires(), Fires()
    server = _slow_server(make_server, "allow", gate, runs, ends)
    async with serving(server):
        try:
            await wait_started(gate)
            both = gate.started[:2]
            assert tick_of(both[0]) < tick_of(both[1])
            assert not ends.ids  # neither has finished: they run at the same time
            for job_id in both:
                assert (await client.get_job(job_id)).status is gqm.JobStatus.PROCESSING
        finally:
            gate.release.set()
        for job_id in both:
            await client.result(job_id, timeout=10)


# -- manual trigger, registration, validation ------------------------------------------


async def test_trigger_enqueues_a_job_now(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """cron_trigger enqueues the entry's job at once and records it as triggered."""
    runs = Fires()

    async def report(job: gqm.Job[Any]) -> Any:
        runs.add(job.id)
        return job.payload

    server = make_server()
    server.handle("report", report)
    server.schedule(entry("nightly", "report", YEARLY, payload={"kind": "daily"}))
    async with serving(server):
        job = await client.cron_trigger("nightly")
        assert job.id.startswith("cron:nightly:manual:")
        assert await client.result(job.id, timeout=10) == {"kind": "daily"}
    assert runs.ids == [job.id]
    history = await client.cron_history("nightly")
    assert [(h.job_id, h.outcome) for h in history] == [(job.id, "triggered")]
    with pytest.raises(gqm.JobNotFoundError):
        await client.cron_trigger("no-such-entry")


async def test_enabled_state_in_redis_wins_over_code(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """An entry disabled through the API stays disabled when a new server registers it enabled."""
    first = make_server()
    first.schedule(entry("sticky", "report", YEARLY))
    async with serving(first):
        assert await client.cron_next_run("sticky") is not None
    await client.cron_disable("sticky")

    second = make_server()
    second.schedule(entry("sticky", "report", YEARLY, enabled=True))
    async with serving(second):
        (stored,) = await client.cron_entries()
        assert stored.id == "sticky"
        assert stored.enabled is False
        assert await client.cron_next_run("sticky") is None


async def test_changing_the_expression_reschedules(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """A new cron_expr moves the next run; re-registering the same one keeps it."""
    first = make_server()
    first.schedule(entry("report", "report", YEARLY))
    async with serving(first):
        yearly_next = await client.cron_next_run("report")
    assert yearly_next is not None
    assert (yearly_next.month, yearly_next.day, yearly_next.hour) == (1, 1, 0)

    noon = "0 30 12 * * *"
    before = await redis_now(client)
    second = make_server()
    second.schedule(entry("report", "report", noon))
    async with serving(second):
        noon_next = await client.cron_next_run("report")
    expected = gqm.CronSchedule.parse(noon).next_after(datetime.fromtimestamp(before / 1000, UTC))
    assert noon_next == expected
    assert noon_next != yearly_next
    (stored,) = await client.cron_entries()
    assert stored.cron_expr == noon

    # The same schedule again (another field changed): the next tick is left alone.
    await raw(client, "ZADD", client.keys.cron_next, 4_102_444_800_000, "report")
    third = make_server()
    third.schedule(entry("report", "report", noon, name="renamed"))
    async with serving(third):
        assert await client.cron_next_run("report") == datetime(2100, 1, 1, tzinfo=UTC)
    (stored,) = await client.cron_entries()
    assert stored.name == "renamed"


async def test_bad_entries_are_refused(make_server: Callable[..., gqm.Server]) -> None:
    """Bad expressions, policies, queues and duplicate ids are refused at definition."""
    with pytest.raises(gqm.CronError, match=r"field 2 \(minute\)"):
        entry("bad", "report", "0 61 * * * *")
    with pytest.raises(gqm.CronError, match="day-of-week"):
        entry("bad", "report", "0 0 0 * * MOON")
    with pytest.raises(gqm.ConfigurationError, match="overlap_policy"):
        entry("bad", "report", overlap_policy="queue")
    with pytest.raises(gqm.ConfigurationError, match="queue name"):
        entry("bad", "report", queue="not a queue")
    with pytest.raises(gqm.ConfigurationError, match="cron entry id"):
        entry("has space", "report")
    good = entry("good", "report", overlap_policy="replace")
    assert good.overlap_policy is gqm.OverlapPolicy.REPLACE
    server = make_server()
    server.schedule(good)
    with pytest.raises(gqm.ConfigurationError, match="already scheduled"):
        server.schedule(entry("good", "other", YEARLY))


async def test_cron_delete_removes_the_entry_everywhere(client: gqm.Client) -> None:
    """A deleted entry is gone from Redis (no server fires it); deleting twice says so."""
    driver = await client._conn.get()
    entry = gqm.CronEntry(id="gone", cron_expr="* * * * * *", job_type="tick")
    await gqm._cron_runtime.register(driver, client.keys, [entry])
    assert [e.id for e in await client.cron_entries()] == ["gone"]
    assert await client.cron_last_run("gone") is None
    assert await client.cron_delete("gone") is True
    assert await client.cron_entries() == []
    assert await client.cron_next_run("gone") is None
    assert await client.cron_delete("gone") is False


def test_misfire_grace_must_be_positive() -> None:
    """A zero grace would skip every tick (a fire is always a little late): refused."""
    with pytest.raises(gqm.ConfigurationError, match="misfire_grace"):
        gqm.Server("redis://127.0.0.1:1", misfire_grace=0)
