"""The Lua scripts, loaded by SHA, with one typed wrapper per state transition.

Each script lives in the top-level ``lua/`` folder (shipped inside the wheel as
``gqm/lua``) and gets ``_common.lua`` prepended. Calls go out as ``EVALSHA``; when Redis
answers ``NOSCRIPT`` (after a restart or ``SCRIPT FLUSH``) exactly the failed calls are
re-sent as ``EVAL``, which also re-caches the script. Re-sending is safe because every
script is written to be replayed (see the scripts' headers).
"""

from __future__ import annotations

import hashlib
import importlib.resources
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from ._keys import Keys, QueueKeys
from .errors import RedisReplyError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._redis import Arg, Command, Driver

_SOURCE_DIR = Path(__file__).resolve().parents[2] / "lua"


def _read(name: str) -> str:
    packaged = importlib.resources.files("gqm").joinpath("lua", name)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    # A source checkout: the scripts sit at the top of the repository.
    return (_SOURCE_DIR / name).read_text(encoding="utf-8")


class Script:
    """One Lua script: its source (with the common helpers) and its SHA1."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = _read("_common.lua") + "\n" + _read(f"{name}.lua")
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def command(self, keys: Sequence[str], args: Sequence[Arg]) -> list[Arg]:
        return ["EVALSHA", self.sha, len(keys), *keys, *args]


#: One script call: the script, its KEYS and its ARGV.
ScriptCall: TypeAlias = "tuple[Script, Sequence[str], Sequence[Arg]]"


@cache
def script(name: str) -> Script:
    return Script(name)


ALL_SCRIPTS = (
    "enqueue",
    "claim",
    "finish",
    "renew",
    "reap",
    "promote",
    "pause",
    "watch",
    "link",
    "resolve",
    "forget",
    "abort",
    "cron_due",
    "cron_claim",
    "cron_upsert",
    "cron_toggle",
    "cron_done",
    "cron_take",
    "admin_retry",
    "admin_delete",
    "empty",
)


async def load_all(driver: Driver) -> None:
    """Load every script into Redis's cache (done once at server start)."""
    await driver.pipeline([("SCRIPT", "LOAD", script(n).source) for n in ALL_SCRIPTS])


async def run_many(
    driver: Driver,
    calls: Sequence[ScriptCall],
    extra: Sequence[Command] = (),
) -> list[Any]:
    """Run script calls in one pipeline; error replies are raised, NOSCRIPT is healed.

    ``extra`` commands ride in the same round trip, *before* the scripts, so that what
    they write (the id index of enqueued jobs) is there when the scripts' work is: if
    Redis refuses them (OOM), it refuses the scripts after them too, rather than
    leaving a job that cannot be looked up. Their replies are not returned (an error
    among them is raised).
    """
    replies = await driver.pipeline([*extra, *(s.command(k, a) for s, k, a in calls)])
    for reply in replies[: len(extra)]:
        if isinstance(reply, RedisReplyError):
            raise reply
    del replies[: len(extra)]
    missing = [i for i, r in enumerate(replies) if isinstance(r, RedisReplyError) and r.is_noscript]
    if missing:
        retried = await driver.pipeline(
            [
                ["EVAL", calls[i][0].source, len(calls[i][1]), *calls[i][1], *calls[i][2]]
                for i in missing
            ]
        )
        for i, reply in zip(missing, retried, strict=True):
            replies[i] = reply
    for reply in replies:
        if isinstance(reply, RedisReplyError):
            raise reply
    return replies


async def run(driver: Driver, s: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
    """Run one script call."""
    try:
        return await driver.execute(*s.command(keys, args))
    except RedisReplyError as err:
        if not err.is_noscript:
            raise
    return await driver.execute("EVAL", s.source, len(keys), *keys, *args)


async def forget_ids(driver: Driver, keys: Keys, swept: dict[str, list[Any]]) -> None:
    """Drop swept records (queue -> ids) from the global id index (compare-and-delete)."""
    calls: list[ScriptCall] = [
        (script("forget"), [keys.ids], [queue, *ids]) for queue, ids in swept.items() if ids
    ]
    if calls:
        await run_many(driver, calls)


# -- typed key lists, one per script ------------------------------------------------------


def enqueue_keys(q: QueueKeys) -> list[str]:
    return [
        q.jobs,
        q.payloads,
        q.results,
        q.ready,
        q.scheduled,
        q.completed,
        q.dead,
        q.deferred,
        q.canceled,
        q.outbox,
    ]


def claim_keys(q: QueueKeys, attempt: str) -> list[str]:
    return [q.ready, q.leases, q.jobs, q.payloads, q.meta, q.claim_memo(attempt)]


def finish_keys(q: QueueKeys) -> list[str]:
    return [
        q.leases,
        q.jobs,
        q.payloads,
        q.results,
        q.scheduled,
        q.ready,
        q.completed,
        q.dead,
        q.meta,
        q.dependents,
        q.outbox,
        q.canceled,
    ]


def renew_keys(q: QueueKeys) -> list[str]:
    return [q.leases, q.jobs]


def reap_keys(q: QueueKeys) -> list[str]:
    return [
        q.leases,
        q.jobs,
        q.payloads,
        q.results,
        q.ready,
        q.dead,
        q.meta,
        q.dependents,
        q.outbox,
        q.completed,
        q.canceled,
    ]


def promote_keys(q: QueueKeys) -> list[str]:
    return [q.scheduled, q.ready, q.jobs]


def pause_keys(q: QueueKeys) -> list[str]:
    return [q.meta, q.ready]


def watch_keys(q: QueueKeys) -> list[str]:
    return [q.jobs, q.results]


def abort_keys(q: QueueKeys) -> list[str]:
    return [
        q.jobs,
        q.payloads,
        q.results,
        q.ready,
        q.scheduled,
        q.deferred,
        q.canceled,
        q.dependents,
        q.outbox,
    ]


def admin_retry_keys(q: QueueKeys) -> list[str]:
    return [q.jobs, q.ready, q.dead, q.canceled]


def admin_delete_keys(q: QueueKeys) -> list[str]:
    return [
        q.jobs,
        q.payloads,
        q.results,
        q.ready,
        q.scheduled,
        q.deferred,
        q.completed,
        q.dead,
        q.canceled,
        q.dependents,
        q.outbox,
    ]


def empty_keys(q: QueueKeys) -> list[str]:
    return [q.jobs, q.payloads, q.results, q.ready, q.canceled, q.dependents, q.outbox]


def link_keys(q: QueueKeys) -> list[str]:
    return [q.jobs, q.dependents]


def resolve_keys(q: QueueKeys) -> list[str]:
    return [q.jobs, q.payloads, q.results, q.ready, q.deferred, q.canceled, q.dependents, q.outbox]


__all__ = [
    "ALL_SCRIPTS",
    "Keys",
    "Script",
    "ScriptCall",
    "claim_keys",
    "enqueue_keys",
    "finish_keys",
    "link_keys",
    "load_all",
    "pause_keys",
    "promote_keys",
    "reap_keys",
    "renew_keys",
    "resolve_keys",
    "run",
    "run_many",
    "script",
    "watch_keys",
]
