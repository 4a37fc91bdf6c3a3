"""Cron across five server processes under kills (RELIABILITY T11).

Five real server processes (``tests/_chaos_worker.py --cron-every-second``) share one
every-second entry while a chaos monkey SIGKILLs a random one every ~3 s and a supervisor
restarts it. Then all five are killed at once and five new ones start (the missed-fire
policy), and the entry is disabled through a client. Fires are read back from the job
records (``cron:<entry>:<tick>``) and from the handlers' execution log (outside gqm's
keys), so a second enqueue of a tick would show as a second first attempt.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import gqm

from ._chaos import (
    LEASE_TTL,
    REAP_INTERVAL,
    STRESS,
    TIME_LIMIT,
    Fleet,
    chaos_monkey,
    executions,
    worker_args,
)
from .helpers import raw
from .invariants import assert_invariants

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [
    pytest.mark.anyio,
    TIME_LIMIT,
    pytest.mark.filterwarnings("ignore:record_property is incompatible:pytest.PytestWarning"),
]

ENTRY = "every-second"
INSTANCES = 5


async def _redis_ms(client: gqm.Client) -> int:
    seconds, micros = await raw(client, "TIME")
    return int(seconds) * 1000 + int(micros) // 1000


async def _fires(client: gqm.Client) -> dict[int, gqm.Job[Any]]:
    """tick (unix ms) -> the job its fire enqueued, from the cron queue's records."""
    q = client.keys.queue("cron")
    ids = await raw(client, "HKEYS", q.jobs)
    out: dict[int, gqm.Job[Any]] = {}
    for raw_id in ids:
        job_id = raw_id.decode()
        entry, _, tick = job_id.removeprefix("cron:").rpartition(":")
        assert entry == ENTRY, job_id
        out[int(tick)] = await client.get_job(job_id)
    return out


async def _next_fire_recorded(client: gqm.Client) -> None:
    """Wait until the entry's last fired tick changes (polled: no event announces it)."""
    key = client.keys.cron_fired
    before = await raw(client, "HGET", key, ENTRY)
    with anyio.fail_after(10):
        while await raw(client, "HGET", key, ENTRY) == before:  # noqa: ASYNC110
            await anyio.sleep(0.01)


def _missing(fires: dict[int, gqm.Job[Any]], start: int, end: int) -> tuple[list[int], list[int]]:
    """Whole-second ticks in [start, end] without a fire, split in two: coalesced ones
    (every scheduler was more than a period late: the fire of the tick before was only
    enqueued once this tick was due too, and gqm fires a late entry once, then moves on
    from *now*, not once per tick it is behind) and lost ones (nothing excuses them)."""
    first = -(-start // 1000) * 1000
    coalesced, lost = [], []
    for t in range(first, end + 1, 1000):
        if t in fires:
            continue
        before = [p for p in fires if p < t]
        made = fires[max(before)].created_at if before else None
        if made is not None and made.timestamp() * 1000 >= t:
            coalesced.append(t)
        else:
            lost.append(t)
    return coalesced, lost


async def test_cron_across_five_instances(
    client: gqm.Client,
    redis_url: str,
    prefix: str,
    anyio_backend: str,
    tmp_path: Path,
    record_property: Any,
) -> None:
    """T11: exactly one enqueue per tick (no tick with two jobs or two first attempts),
    no tick missed while at least one instance is alive, a single late catch-up fire
    after every instance was down (no burst), and a disable through the client stops
    the fires of every instance within one tick."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    # The full outage lasts at least down_s, so that ticks pass with nobody to fire them
    # however fast the new instances boot.
    chaos_s, down_s, after_s = (120.0, 10.0, 10.0) if STRESS else (7.0, 1.5, 3.0)
    exec_log = tmp_path / "executions.log"
    args = worker_args(
        redis_url,
        prefix,
        anyio_backend,
        exec_log,
        cron_every_second=ENTRY,
        concurrency=1,
        lease_ttl=LEASE_TTL,
        reap_interval=REAP_INTERVAL,
        poll_interval=1.0,
    )
    first = Fleet("a", INSTANCES, lambda tag: [*args, "--tag", tag], tmp_path)
    second = Fleet("b", INSTANCES, lambda tag: [*args, "--tag", tag], tmp_path)
    stop_chaos = anyio.Event()
    async with anyio.create_task_group() as tg:
        await first.start(tg)
        # Phase 1: kills and restarts, never more than one instance down at a time.
        chaos_from = await _redis_ms(client)
        tg.start_soon(lambda: chaos_monkey(first, rng, every=3.0, until=stop_chaos))
        await anyio.sleep(chaos_s)  # the length of the run, not a synchronization
        stop_chaos.set()
        single_kills = len(first.killed)
        # Phase 2: every instance down at once, then five new ones. The kill comes just
        # after a fire was recorded, so that it does not also cut a fire in half (the
        # single kills above do land at random).
        await _next_fire_recorded(client)
        killed_at = await _redis_ms(client)
        await first.kill_all(timeout=30)
        await anyio.sleep(down_s)
        await second.start(tg)
        up_at = await _redis_ms(client)
        await anyio.sleep(after_s)
        # Phase 3: disable through a client; no instance may fire a later tick.
        await client.cron_disable(ENTRY)
        disabled_at = await _redis_ms(client)
        await anyio.sleep(2.5)  # two ticks and a half: enough for a wrong fire to show
        await second.stop(timeout=60)

    await assert_invariants(client, drained=True)
    fires = await _fires(client)
    ticks = sorted(fires)
    # Phase 1: every tick from one second after the start to the kill has its fire.
    late_chaos, missed_chaos = _missing(fires, chaos_from + 1000, killed_at - 1000)
    assert not missed_chaos, f"seed {seed}: ticks lost during the kills: {missed_chaos}"
    # Phase 2: one late fire for the first tick nobody fired, then no burst of the rest.
    last_before = max(t for t in ticks if t <= killed_at)
    catch_up = min(t for t in ticks if t > last_before)
    assert catch_up == last_before + 1000, "the first tick nobody fired must fire, late"
    created = fires[catch_up].created_at
    assert created is not None
    resumed = int(created.timestamp() * 1000)
    late_ms = resumed - catch_up
    assert up_at - killed_at > 1000  # the downtime did span ticks
    # The ticks that passed meanwhile are skipped, not fired in a burst (a margin for a
    # second boundary crossed while the catch-up fire was being enqueued).
    burst = [t for t in ticks if catch_up < t < resumed - 500]
    assert not burst, f"missed ticks fired in a burst after the downtime: {burst}"
    late_after, missed_after = _missing(fires, resumed + 1000, disabled_at - 1000)
    assert not missed_after, f"ticks lost after the restart: {missed_after}"
    # Phase 3: nothing fired after the disable (a tick within the same second may
    # already have been claimed before it).
    after_disable = [t for t in ticks if t > disabled_at]
    assert not [t for t in after_disable if t > disabled_at + 1000], after_disable
    # Exactly one enqueue per tick, counted outside gqm: one first attempt per fire.
    runs = executions(exec_log)
    first_attempts = Counter(r.job_id for r in runs if r.attempt == 1)
    assert max(first_attempts.values()) == 1, first_attempts.most_common(3)
    ran = {r.job_id for r in runs}
    not_run = [t for t, job in fires.items() if job.id not in ran]
    assert not not_run, f"fires that never ran: {not_run}"
    assert all(j.status == gqm.JobStatus.COMPLETED for j in fires.values())
    history = await client.cron_history(ENTRY, limit=100)
    per_tick = Counter(h.tick for h in history if h.outcome == "enqueued")
    assert not per_tick or max(per_tick.values()) == 1
    duplicates = len(runs) - len(fires)
    assert not first.unexpected_exits(), first.unexpected_exits()
    assert not second.unexpected_exits(), second.unexpected_exits()
    print(
        f"[{anyio_backend}] T11 cron (seed {seed}): {INSTANCES} instances, {chaos_s:g}s with "
        f"{single_kills} single kills, then all killed for "
        f"{(up_at - killed_at) / 1000:.1f}s; {len(fires)} fires, 0 ticks with > 1 enqueue, "
        f"0 lost while alive "
        f"({len(late_chaos) + len(late_after)} coalesced by late schedulers); downtime -> "
        f"1 catch-up fire {late_ms / 1000:.1f}s late, "
        f"{(resumed - catch_up) // 1000} ticks skipped; {len(after_disable)} fires after "
        f"the disable (within its tick); duplicate executions (recoveries) {duplicates}; "
        f"history outcomes {dict(Counter(h.outcome for h in history))}"
    )
    record_property("fires", len(fires))
    record_property("catch_up_late_s", round(late_ms / 1000, 3))
