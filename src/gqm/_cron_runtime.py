"""Cron entries and their scheduler: exactly one fire per tick across all servers.

The schedule of every entry lives in Redis (``cron:entries`` and the ``cron:next`` set of
next ticks), not in each server's memory, so enable/disable reaches every server and
survives restarts. Every server with the scheduler enabled runs :func:`cron_forever`:

1. ``cron_due.lua`` lists the entries whose next tick has come, on the Redis clock;
2. for each, the server computes the following tick and calls ``cron_claim.lua``, a
   compare-and-set on the entry's next tick: one server wins the tick, and the same
   script queues the fire in the cron outbox;
3. fires in the outbox are enqueued as jobs with a deterministic id
   (``cron:<entry>:<tick ms>``) and ``unique=True``, so a fire processed twice (two
   servers draining the outbox, or a retry after a crash) still makes one job.

Misfire rule: a tick found more than ``misfire_grace`` late (every server was down, or
the entry was just re-enabled) is skipped, and the entry moves to its next tick after
now: a server coming back fires at most once, never a burst of missed ticks.

Overlap policies, when the previous fire's job is still active: ``skip`` (no new job),
``allow`` (run both), ``replace`` (abort the running one, on whichever server runs it,
then enqueue the new one).
"""

from __future__ import annotations

import contextlib
import enum
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from . import _scripts as scripts
from ._job import TERMINAL_STATES, json_encoder, uuid7
from ._keys import check_queue_name
from ._options import encode_payload
from ._task import check_job_type
from .cron import CronSchedule
from .errors import (
    ConfigurationError,
    DuplicateJobError,
    JobNotFoundError,
    PayloadTooLargeError,
    RedisError,
    SerializationError,
)

if TYPE_CHECKING:
    from ._keys import Keys
    from ._redis import Driver
    from ._wake import Signal
    from .client import Client

log = logging.getLogger("gqm.cron")

#: History entries kept per cron entry.
HISTORY_KEEP = 100
_DUE_BATCH = 100
#: A fire taken for enqueueing but not recorded after this long goes back to the outbox
#: (its taker died). Processing takes milliseconds; a slow taker that is overtaken does
#: no harm, since the fire's job id is deterministic and unique.
_TAKEN_STALE_MS = 10_000


class OverlapPolicy(enum.StrEnum):
    """What a tick does while the previous fire's job is still active."""

    SKIP = "skip"
    ALLOW = "allow"
    REPLACE = "replace"


@dataclass(frozen=True, slots=True)
class CronEntry:
    """A job enqueued on a cron schedule (see :mod:`gqm.cron` for the syntax).

    :param id: unique name of the entry (it keys its state in Redis).
    :param cron_expr: 6 fields (seconds first) or 5 (seconds = 0), or a macro.
    :param timezone: IANA zone the expression is read in.
    :param job_type: the job to enqueue at each tick; ``queue`` and ``payload`` go with it.
    :param overlap_policy: ``skip``, ``allow`` or ``replace``.
    :param enabled: the initial state; once in Redis, enable/disable there wins.
    """

    id: str
    cron_expr: str
    job_type: str
    name: str = ""
    timezone: str = "UTC"
    queue: str = "default"
    payload: Any = None
    overlap_policy: OverlapPolicy | str = OverlapPolicy.SKIP
    enabled: bool = True
    schedule: CronSchedule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.id or any(c.isspace() for c in self.id):
            raise ConfigurationError(f"invalid cron entry id {self.id!r}")
        check_job_type(self.job_type)
        check_queue_name(self.queue)
        try:
            object.__setattr__(self, "overlap_policy", OverlapPolicy(self.overlap_policy))
        except ValueError:
            raise ConfigurationError(
                f"cron entry {self.id!r}: overlap_policy must be skip, allow or replace"
            ) from None
        object.__setattr__(self, "schedule", CronSchedule.parse(self.cron_expr, self.timezone))
        try:
            encode_payload(self.payload)
        except (SerializationError, PayloadTooLargeError) as err:
            raise ConfigurationError(f"cron entry {self.id!r}: {err}") from err

    def definition(self) -> bytes:
        """The JSON stored in Redis."""
        return json_encoder.encode(
            {
                "id": self.id,
                "name": self.name,
                "cron_expr": self.cron_expr,
                "timezone": self.timezone,
                "job_type": self.job_type,
                "queue": self.queue,
                "payload": self.payload,
                "overlap_policy": str(self.overlap_policy),
                "enabled": self.enabled,
            }
        )

    @property
    def fingerprint(self) -> str:
        return f"{self.cron_expr}|{self.timezone}"


class StoredEntry(msgspec.Struct):
    """A cron entry as stored in Redis (and shown by the API)."""

    id: str
    cron_expr: str
    job_type: str
    name: str = ""
    timezone: str = "UTC"
    queue: str = "default"
    payload: Any = None
    overlap_policy: str = "skip"
    enabled: bool = True
    fingerprint: str = ""


class HistoryItem(msgspec.Struct):
    """One fire of a cron entry."""

    job_id: str | None
    tick: int
    fired_at: int
    outcome: str


stored_decoder = msgspec.json.Decoder(StoredEntry)


def tick_after(schedule: CronSchedule, ms: int) -> int:
    """The first tick strictly after unix time ``ms``, in unix ms."""
    after = datetime.fromtimestamp(ms / 1000, UTC)
    return int(schedule.next_after(after).timestamp() * 1000)


def _schedule(entry: StoredEntry, cache: dict[str, CronSchedule]) -> CronSchedule:
    key = f"{entry.cron_expr}|{entry.timezone}"
    found = cache.get(key)
    if found is None:
        found = cache[key] = CronSchedule.parse(entry.cron_expr, entry.timezone)
    return found


async def redis_now_ms(driver: Driver) -> int:
    seconds, micros = await driver.execute("TIME")
    return int(seconds) * 1000 + int(micros) // 1000


async def register(driver: Driver, keys: Keys, entries: list[CronEntry]) -> None:
    """Store the definitions of ``entries`` (keeping the enabled state Redis has)."""
    if not entries:
        return
    now = await redis_now_ms(driver)
    upsert = scripts.script("cron_upsert")
    await scripts.run_many(
        driver,
        [
            (
                upsert,
                [keys.cron_entries, keys.cron_next],
                [e.id, e.definition(), e.fingerprint, tick_after(e.schedule, now)],
            )
            for e in entries
        ],
    )


async def fire(
    client: Client, keys: Keys, entry: StoredEntry, tick: int, job_id: str, *, grace_ms: int
) -> str:
    """Enqueue one fire of ``entry`` under ``job_id``, applying its overlap policy.
    Returns the outcome recorded in the history.

    A fire processed after a later tick of its entry (its taker died before enqueueing
    it, and it came back to the outbox) is a late fire: within the misfire grace it
    still runs, so that a crash does not lose a tick, under the overlap policy against
    the latest fire's job ("replace" then acts as "skip": an older tick never aborts a
    newer run); past the grace it is missed, like any late tick.
    """
    driver = await client._conn.get()
    last_tick = await driver.execute("HGET", keys.cron_fired, entry.id)
    out_of_order = last_tick is not None and tick < int(last_tick)
    if out_of_order and await redis_now_ms(driver) - tick > grace_ms:
        return "missed"
    if last_tick is not None and entry.overlap_policy != OverlapPolicy.ALLOW:
        previous = f"cron:{entry.id}:{int(last_tick)}"
        try:
            status = (await client.get_job(previous)).status
        except JobNotFoundError:
            status = None
        if status is not None and status not in TERMINAL_STATES and previous != job_id:
            if entry.overlap_policy == OverlapPolicy.SKIP or out_of_order:
                return "skipped"
            with contextlib.suppress(JobNotFoundError):  # it finished and was swept meanwhile
                await client.abort(previous, reason=f"replaced by the cron tick {tick}")
    try:
        await client.enqueue(
            entry.job_type, entry.payload, queue=entry.queue, job_id=job_id, unique=True
        )
    except DuplicateJobError:
        return "duplicate"  # an earlier processing of the same fire enqueued it
    return "enqueued"


async def drain_outbox(client: Client, keys: Keys, *, grace_ms: int) -> int:
    """Enqueue the fires waiting in the cron outbox. Safe to run on many servers at once."""
    driver = await client._conn.get()
    # The list is LPUSHed: its oldest fires are at the right end.
    raws = list(reversed(await driver.execute("LRANGE", keys.cron_outbox, -100, -1)))
    if not raws:
        return 0
    ids = list({msgspec.json.decode(raw)["id"] for raw in raws})
    defs = dict(
        zip(ids, await driver.pipeline([["HGET", keys.cron_entries, i] for i in ids]), strict=True)
    )
    done, take = scripts.script("cron_done"), scripts.script("cron_take")
    for raw in raws:
        if not await scripts.run(driver, take, [keys.cron_outbox, keys.cron_taken], [raw]):
            continue  # another server is enqueueing this fire
        item = msgspec.json.decode(raw)
        entry_id, tick, job_id = item["id"], int(item["tick"]), item["job_id"]
        stored = defs.get(entry_id)
        outcome = "deleted"
        if stored is not None:
            try:
                outcome = await fire(
                    client, keys, stored_decoder.decode(stored), tick, job_id, grace_ms=grace_ms
                )
            except RedisError:
                raise  # the fire stays taken and comes back to the outbox
            except Exception as err:
                # A bad stored entry (an unknown time zone on this host, a payload over
                # the limit) must not stop the scheduler of every server.
                log.exception("cron %s: firing tick %s failed", entry_id, tick)
                outcome = f"error: {err}"[:200]
        now = await redis_now_ms(driver)
        made = outcome in ("enqueued", "duplicate")
        member = json_encoder.encode(
            HistoryItem(job_id=job_id if made else None, tick=tick, fired_at=now, outcome=outcome)
        )
        await scripts.run(
            driver,
            done,
            [keys.cron_fired, keys.cron_history(entry_id), keys.cron_taken],
            [entry_id, tick, member, raw, HISTORY_KEEP, "1" if made else "0"],
        )
    return len(raws)


async def cron_forever(
    client: Client, keys: Keys, signal: Signal, *, poll_interval: float, misfire_grace: float
) -> None:
    """Claim due ticks and enqueue their fires, for ever (see the module docstring)."""
    driver = await client._conn.get()
    due_script, claim = scripts.script("cron_due"), scripts.script("cron_claim")
    cache: dict[str, CronSchedule] = {}
    grace_ms = int(misfire_grace * 1000)
    while True:
        event = signal.current()
        wait = poll_interval
        try:
            now, due, next_in = await scripts.run(
                driver,
                due_script,
                [keys.cron_next, keys.cron_outbox, keys.cron_taken],
                [_DUE_BATCH, _TAKEN_STALE_MS],
            )
            if due:
                ids = [due[i].decode() for i in range(0, len(due), 2)]
                ticks = [int(float(due[i])) for i in range(1, len(due), 2)]
                raws = await driver.pipeline([["HGET", keys.cron_entries, i] for i in ids])
                calls: list[scripts.ScriptCall] = []
                for entry_id, tick, raw in zip(ids, ticks, raws, strict=True):
                    if raw is None:
                        await driver.execute("ZREM", keys.cron_next, entry_id)
                        continue
                    try:
                        entry = stored_decoder.decode(raw)
                        # The following tick comes after now, not after the due tick: a
                        # server that was down fires once, not once per missed tick.
                        following = tick_after(_schedule(entry, cache), max(tick, now))
                    except Exception:
                        # Unusable here (e.g. a time zone this host lacks): leave the
                        # entry to servers that can read it, and keep scheduling others.
                        log.exception("cron %s: cannot compute its next tick", entry_id)
                        continue
                    calls.append(
                        (
                            claim,
                            [keys.cron_next, keys.cron_entries, keys.cron_outbox],
                            [entry_id, tick, following, f"cron:{entry_id}:{tick}", grace_ms],
                        )
                    )
                outcomes = await scripts.run_many(driver, calls) if calls else []
                for call, outcome in zip(calls, outcomes, strict=True):
                    if outcome == b"missed":
                        log.warning(
                            "cron %s: tick %s missed by more than the grace; skipped",
                            call[2][0],
                            call[2][1],
                        )
                wait = 0
            await drain_outbox(client, keys, grace_ms=grace_ms)
            if next_in >= 0 and wait:
                wait = min(wait, next_in / 1000)
        except RedisError as err:
            log.warning("cron scheduling failed (%s); retrying", err)
        if wait > 0:
            with anyio.move_on_after(wait):
                await event.wait()
        else:
            await anyio.lowlevel.checkpoint()


def manual_job_id(entry_id: str) -> str:
    return f"cron:{entry_id}:manual:{uuid7()}"
