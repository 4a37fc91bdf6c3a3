"""T14: a model-based state-machine test of gqm's Lua scripts against a real Redis.

A Hypothesis ``RuleBasedStateMachine`` drives gqm's real scripts on the session's
redis-server (through the real ``Client`` for enqueue and admin operations, directly
through ``gqm._scripts`` for what workers and servers do: claim, renew, finish, reap,
promote, resolve), and a pure-Python model of the job state machine side by side. After
every step the whole keyspace is read back and must equal the model (statuses, counters,
tokens, every index with its scores, the order of the ready lists, dependency lists,
outboxes, stats, the id index), and the invariant checker must find nothing.

The clock is the test's: the scripts read the time from ``redis.call('TIME')`` in
``now_ms()`` of ``lua/_common.lua``; the test loads copies of gqm's scripts whose
``now_ms()`` reads a key the test sets (``<prefix>:clock``), and nothing else changed.
The copies go through the same ``Script`` machinery (EVALSHA, NOSCRIPT healing), swapped
in for ``gqm._scripts.script`` for the duration of the test. The clock key is derived
from the script's first key rather than passed in KEYS so that the scripts' key lists
stay exactly gqm's (a standalone Redis allows it; the copies never run on a cluster).

Hypothesis's state machines are synchronous and gqm is async: the machine runs in a
worker thread and calls into the test's event loop with ``anyio.from_thread.run``, so it
runs on both backends, each with gqm's default driver for it (``GQM_DRIVER`` picks
another).

Fast mode: 100 examples x 30 steps per backend. ``GQM_STRESS=1``: 2,000 x 50 (override
with ``GQM_SM_EXAMPLES`` / ``GQM_SM_STEPS``).
``GQM_SEED=<n>`` replays a run; the seed is printed (``pytest -s``) and recorded.
"""

from __future__ import annotations

import hashlib
import os
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.to_thread
import msgspec
import pytest
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    get_state_machine_test,
    initialize,
    invariant,
    precondition,
    rule,
)

import gqm
from gqm import _dag
from gqm import _scripts as scripts
from gqm.retry import DEFAULT_MAX_RETRY
from tests.invariants import _pairs, _s, find_violations

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Sequence


pytestmark = pytest.mark.anyio

STRESS = os.environ.get("GQM_STRESS") == "1"
EXAMPLES = int(os.environ.get("GQM_SM_EXAMPLES") or (2000 if STRESS else 100))
STEPS = int(os.environ.get("GQM_SM_STEPS") or (50 if STRESS else 30))
QUEUES = ("a", "b")
#: Explicit ids, few, so that duplicates, reuse and unique locks come up often.
NAMED_IDS = ("j0", "j1", "j2")
LEASE_MS = 10_000
MAX_RECOVERIES = 1
#: Retention the client uses for what it cancels (abort, empty, resolving at enqueue).
CLIENT_CANCELED_TTL_MS = 30 * 86400 * 1000
T0 = 1_700_000_000_000
#: One seed per session, shared by both backends (print and replay with GQM_SEED).
SEED = int(os.environ.get("GQM_SEED") or random.randrange(2**32))
TERMINAL = frozenset({"completed", "dead_letter", "canceled", "stopped", "failed"})
_decode: msgspec.json.Decoder[Any] = msgspec.json.Decoder()

_REAL_NOW = """local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end"""
_TEST_NOW = """local function now_ms()
  -- Test copy: the clock the test controls, <prefix>:clock (prefix of KEYS[1]).
  local prefix = string.match(KEYS[1], '^(.-):{')
  return tonumber(redis.call('GET', prefix .. ':clock'))
end"""


class ClockedScript(scripts.Script):
    """One of gqm's scripts, with ``now_ms()`` reading the test's clock."""

    __slots__ = ()

    def __init__(self, name: str) -> None:
        super().__init__(name)
        assert self.source.count(_REAL_NOW) == 1, "now_ms() in _common.lua changed"
        self.source = self.source.replace(_REAL_NOW, _TEST_NOW)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


@cache
def clocked_script(name: str) -> scripts.Script:
    return ClockedScript(name)


# -- the model ------------------------------------------------------------------------


@dataclass
class MJob:
    """The model of one job record (the fields the scripts read and write)."""

    id: str
    queue: str
    status: str
    created_at: int
    unique: bool = False
    at_front: bool = False
    max_retry: int | None = None
    attempt: int = 0
    retry_count: int = 0
    recoveries: int = 0
    token: str | None = None
    scheduled_at: int | None = None
    started_at: int | None = None
    completed_at: int | None = None
    depends_on: list[str] | None = None
    pending: set[str] | None = None
    allow_failure: bool = False
    abort: str | None = None


@dataclass
class MQueue:
    """The model of one queue's keys (``_keys.QueueKeys``)."""

    jobs: dict[str, MJob] = field(default_factory=dict)
    #: Head (next to be claimed) first.
    ready: list[str] = field(default_factory=list)
    leases: dict[str, int] = field(default_factory=dict)
    scheduled: dict[str, int] = field(default_factory=dict)
    deferred: dict[str, int] = field(default_factory=dict)
    completed: dict[str, int] = field(default_factory=dict)
    dead: dict[str, int] = field(default_factory=dict)
    canceled: dict[str, int] = field(default_factory=dict)
    dependents: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    #: Entries, newest first (as LRANGE lists them): ("l", p, pq, c, q) or ("o", p, s, c, q).
    outbox: list[tuple[str, ...]] = field(default_factory=list)
    results: set[str] = field(default_factory=set)
    paused: bool = False
    stats: Counter[str] = field(default_factory=Counter)


class DuplicateExpected(Exception):
    """The model says: DuplicateJobError (the other *Expected: the other refusals)."""


class DependencyExpected(Exception):
    pass


class NotFoundExpected(Exception):
    pass


class ConfigExpected(Exception):
    pass


class Model:
    """A pure-Python account of what gqm's scripts (and the client around them) do."""

    def __init__(self, completed_ttl: int, dead_ttl: int) -> None:
        self.now = T0
        self.completed_ttl = completed_ttl
        self.dead_ttl = dead_ttl
        self.queues = {name: MQueue() for name in QUEUES}
        self.ids: dict[str, str] = {}
        self.registered: set[str] = set()

    # helpers mirroring _common.lua
    def _record(self, job_id: str) -> MJob | None:
        """The record the id index leads to (the client's lookup by id)."""
        name = self.ids.get(job_id)
        return None if name is None else self.queues[name].jobs.get(job_id)

    def _push_ready(self, q: MQueue, job_id: str, front: bool) -> None:
        if front:
            q.ready.insert(0, job_id)
        else:
            q.ready.append(job_id)

    def _fan_out(self, q: MQueue, job_id: str, status: str) -> int:
        children = q.dependents.get(job_id, [])
        for child, child_queue in children:
            q.outbox.insert(0, ("o", job_id, status, child, child_queue))
        return len(children)

    def _delete(self, q: MQueue, job_id: str) -> None:
        q.jobs.pop(job_id, None)
        q.results.discard(job_id)
        q.dependents.pop(job_id, None)

    def _finalize(self, q: MQueue, job: MJob, index: dict[str, int], ttl: int) -> bool:
        job.completed_at = self.now
        if ttl == 0:
            self._delete(q, job.id)
            return True
        index[job.id] = self.now
        return False

    def _sweep(self, q: MQueue, index: dict[str, int], ttl: int, limit: int) -> list[str]:
        if ttl < 0:
            return []
        old = sorted((s, i) for i, s in index.items() if s <= self.now - ttl)[:limit]
        for _score, job_id in old:
            self._delete(q, job_id)
            del index[job_id]
        return [i for _s, i in old]

    def _count(self, q: MQueue, what: str, n: int = 1) -> None:
        q.stats[what] += n
        q.stats[f"{what}:{self.now // 86400000}"] += n

    def forget(self, name: str, ids: Sequence[str]) -> None:
        for job_id in ids:
            if self.ids.get(job_id) == name:
                del self.ids[job_id]

    # client operations
    def enqueue(
        self,
        job_id: str,
        name: str,
        *,
        mode: str,
        delay_ms: int,
        unique: bool,
        at_front: bool,
        max_retry: int | None,
        explicit: bool,
        parents: list[str] | None = None,
        allow_failure: bool = False,
    ) -> str:
        """Returns the status of the new job; raises the *Expected errors."""
        q = self.queues[name]
        if explicit:
            other = self._record(job_id)
            if (
                other is not None
                and other.queue != name
                and (unique or other.status not in TERMINAL)
            ):
                raise DuplicateExpected
        links: list[tuple[str, str]] = []
        if parents is not None:
            parents = list(dict.fromkeys(parents))
            for p in parents:
                found = self._record(p)
                if found is None:
                    raise DependencyExpected
                links.append((p, found.queue))
        # The enqueue pipeline: the script, the id index and the queue registry.
        self.ids[job_id] = name
        self.registered.add(name)
        old = q.jobs.get(job_id)
        if old is not None:
            if unique or old.status not in TERMINAL:
                raise DuplicateExpected
            for index in (q.completed, q.dead, q.canceled):
                index.pop(job_id, None)
            q.results.discard(job_id)
        job = MJob(
            job_id,
            name,
            "ready",
            self.now,
            unique=unique,
            at_front=at_front,
            max_retry=max_retry,
        )
        if parents is not None:
            job.status = "deferred"
            job.depends_on = parents
            job.pending = set(parents)
            job.allow_failure = allow_failure
            q.deferred[job_id] = self.now
            for p, pq in links:
                q.outbox.insert(0, ("l", p, pq, job_id, name))
        elif mode == "delay" and delay_ms > 0:
            job.status = "scheduled"
            job.scheduled_at = self.now + delay_ms
            q.scheduled[job_id] = job.scheduled_at
        q.jobs[job_id] = job
        if job.status == "ready":
            self._push_ready(q, job_id, at_front)
        if parents is not None:
            # The client applies the link requests at once.
            self.drain([name], CLIENT_CANCELED_TTL_MS)
            stored = q.jobs.get(job_id)
            return job.status if stored is None else stored.status
        return job.status

    def enqueue_batch(
        self, items: list[tuple[str, str, str, int, bool, bool, int | None, bool]]
    ) -> list[str]:
        """Client.enqueue_batch of (id, queue, mode, delay_ms, unique, at_front,
        max_retry, explicit) items: one script call per queue (queues in order of first
        appearance), the id index and registry in the same pipeline; the first duplicate
        raises after the rest went in. Returns the statuses of the jobs created."""
        queue_of: dict[str, str] = {}
        for job_id, name, *_ in items:
            if queue_of.setdefault(job_id, name) != name:
                raise ConfigExpected
        for job_id, name, _mode, _delay, unique, _front, _retry, explicit in items:
            other = self._record(job_id) if explicit else None
            if (
                other is not None
                and other.queue != name
                and (unique or other.status not in TERMINAL)
            ):
                raise DuplicateExpected
        order = list(dict.fromkeys(name for _id, name, *_ in items))
        statuses: dict[int, str] = {}
        duplicate = False
        for name in order:
            for n, (job_id, qname, mode, delay, unique, front, retry, _e) in enumerate(items):
                if qname != name:
                    continue
                status = self._script_enqueue(job_id, name, mode, delay, unique, front, retry)
                if status is None:
                    duplicate = True
                else:
                    statuses[n] = status
        for job_id, name, *_ in items:
            self.ids[job_id] = name
            self.registered.add(name)
        if duplicate:
            raise DuplicateExpected
        return [statuses[n] for n in sorted(statuses)]

    def _script_enqueue(
        self,
        job_id: str,
        name: str,
        mode: str,
        delay_ms: int,
        unique: bool,
        at_front: bool,
        max_retry: int | None,
    ) -> str | None:
        """enqueue.lua for one plain or delayed job; None for a duplicate."""
        q = self.queues[name]
        old = q.jobs.get(job_id)
        if old is not None:
            if unique or old.status not in TERMINAL:
                return None
            for index in (q.completed, q.dead, q.canceled):
                index.pop(job_id, None)
            q.results.discard(job_id)
        job = MJob(job_id, name, "ready", self.now, unique=unique, at_front=at_front)
        job.max_retry = max_retry
        if mode == "delay" and delay_ms > 0:
            job.status = "scheduled"
            job.scheduled_at = self.now + delay_ms
            q.scheduled[job_id] = job.scheduled_at
        q.jobs[job_id] = job
        if job.status == "ready":
            self._push_ready(q, job_id, at_front)
        return job.status

    def drain(self, names: Sequence[str], canceled_ttl: int) -> int:
        """_dag.drain_outboxes: link requests first, then outcomes; cascades."""
        todo = set(names)
        applied = 0
        while todo:
            batch = sorted(todo)
            todo.clear()
            sources: list[tuple[str, tuple[str, ...]]] = []
            for name in batch:
                entries = self.queues[name].outbox[:100]
                if len(entries) >= 100:
                    todo.add(name)
                sources += [(name, e) for e in entries]
            if not sources:
                break
            outcomes: list[tuple[str, str, str, str]] = []  # parent, status, child, queue
            for _name, e in sources:
                if e[0] == "l":
                    _l, p, pq, c, cq = e
                    status = self._link(p, pq, c, cq)
                    if status != "linked":
                        outcomes.append((p, status, c, cq))
                else:
                    _o, p, s, c, cq = e
                    outcomes.append((p, s, c, cq))
            for p, s, c, cq in outcomes:
                if self._resolve(c, cq, p, s, canceled_ttl) == 2:
                    todo.add(cq)
            for name, e in sources:
                self.queues[name].outbox.remove(e)
            applied += len(sources)
        return applied

    def _link(self, parent: str, pq: str, child: str, cq: str) -> str:
        q = self.queues[pq]
        rec = q.jobs.get(parent)
        if rec is None:
            return "missing"
        if rec.status in TERMINAL:
            return rec.status
        children = q.dependents.setdefault(parent, [])
        if all(c != child for c, _ in children):
            children.append((child, cq))
        return "linked"

    def _resolve(self, child: str, cq: str, parent: str, status: str, ttl: int) -> int:
        q = self.queues[cq]
        rec = q.jobs.get(child)
        if rec is None or rec.status != "deferred" or not rec.pending or parent not in rec.pending:
            return 0
        rec.pending.discard(parent)
        if status != "completed" and not rec.allow_failure:
            q.deferred.pop(child, None)
            rec.pending = None
            rec.status = "canceled"
            self._fan_out(q, child, "canceled")
            self._finalize(q, rec, q.canceled, ttl)
            return 2
        if not rec.pending:
            rec.pending = None
            rec.status = "ready"
            q.deferred.pop(child, None)
            self._push_ready(q, child, rec.at_front)
            return 1
        return 0

    def abort(self, job_id: str) -> str:
        name = self.ids.get(job_id)
        if name is None:
            raise NotFoundExpected
        q = self.queues[name]
        rec = q.jobs.get(job_id)
        if rec is None:
            raise NotFoundExpected
        if rec.status in TERMINAL:
            return rec.status
        if rec.status == "processing":
            rec.abort = "aborted by request"
            return "signalled"
        q.ready = [i for i in q.ready if i != job_id]
        q.scheduled.pop(job_id, None)
        q.deferred.pop(job_id, None)
        rec.status = "canceled"
        rec.pending = None
        self._fan_out(q, job_id, "canceled")
        self._finalize(q, rec, q.canceled, CLIENT_CANCELED_TTL_MS)
        return "canceled"

    def admin_retry(self, job_id: str) -> bool:
        name = self.ids.get(job_id)
        if name is None:
            return False
        q = self.queues[name]
        rec = q.jobs.get(job_id)
        if rec is None or rec.status not in ("dead_letter", "canceled", "stopped"):
            return False
        q.dead.pop(job_id, None)
        q.canceled.pop(job_id, None)
        rec.status = "ready"
        rec.retry_count = rec.recoveries = 0
        rec.token = rec.pending = rec.completed_at = rec.started_at = None
        # A fresh run: an abort requested of an earlier run (which ended before it took
        # effect) must not stop this one.
        rec.abort = None
        self._push_ready(q, job_id, False)
        return True

    def admin_delete(self, job_id: str) -> str:
        name = self.ids.get(job_id)
        if name is None:
            return "not_found"
        q = self.queues[name]
        rec = q.jobs.get(job_id)
        if rec is None:
            return "not_found"
        if rec.status == "processing":
            return "processing"
        if rec.status not in TERMINAL:
            self._fan_out(q, job_id, "canceled")
        if rec.status == "ready":
            q.ready = [i for i in q.ready if i != job_id]
        for index in (q.scheduled, q.deferred, q.completed, q.dead, q.canceled):
            index.pop(job_id, None)
        self._delete(q, job_id)
        self.forget(name, [job_id])
        return "deleted"

    def empty(self, name: str, limit: int) -> int:
        q = self.queues[name]
        popped, q.ready = q.ready[:limit], q.ready[limit:]
        count = 0
        for job_id in popped:
            rec = q.jobs.get(job_id)
            if rec is not None and rec.status == "ready":
                rec.status = "canceled"
                self._fan_out(q, job_id, "canceled")
                self._finalize(q, rec, q.canceled, CLIENT_CANCELED_TTL_MS)
                count += 1
        return count

    def pause(self, name: str, paused: bool) -> bool:
        q = self.queues[name]
        changed = q.paused != paused
        q.paused = paused
        return changed

    # worker and server operations
    def claim(self, name: str, count: int, prefix: str) -> list[tuple[str, str]]:
        q = self.queues[name]
        if q.paused:
            return []
        popped, q.ready = q.ready[:count], q.ready[count:]
        out = []
        for i, job_id in enumerate(popped, 1):
            rec = q.jobs.get(job_id)
            if rec is not None and rec.status == "ready":
                rec.status = "processing"
                rec.attempt += 1
                rec.started_at = self.now
                rec.token = f"{prefix}:{i}"
                q.leases[job_id] = self.now + LEASE_MS
                out.append((job_id, rec.token))
        return out

    def claim_replay(self, name: str, claimed: list[tuple[str, str]]) -> list[tuple[str, str]]:
        q = self.queues[name]
        return [
            (i, t)
            for i, t in claimed
            if (rec := q.jobs.get(i)) is not None and rec.status == "processing" and rec.token == t
        ]

    def renew(self, name: str, pairs: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
        q = self.queues[name]
        lost, aborted = [], []
        for job_id, token in pairs:
            rec = q.jobs.get(job_id)
            if (
                rec is not None
                and rec.token == token
                and rec.status == "processing"
                and job_id in q.leases
            ):
                q.leases[job_id] = self.now + LEASE_MS
                if rec.abort:
                    aborted.append(job_id)
            else:
                lost.append(job_id)
        return lost, aborted

    def finish(
        self, name: str, ops: list[tuple[str, str, str, int, int, int]]
    ) -> tuple[list[int], list[str], int]:
        """ops: (id, token, outcome, n1, n2, delay_ms); returns (codes, swept, fanned)."""
        q = self.queues[name]
        codes: list[int] = []
        fanned = 0
        deleted: list[str] = []
        for job_id, token, outcome, n1, n2, delay in ops:
            rec = q.jobs.get(job_id)
            code = 0
            if rec is not None and rec.token == token:
                if rec.status == "processing":
                    code = 1
                    q.leases.pop(job_id, None)
                    if rec.abort and outcome in ("r", "h"):
                        # The abort asked of this run wins: it must not run again.
                        outcome = "s"
                    if outcome == "c":
                        rec.status = "completed"
                        if n1 == 1 and self.completed_ttl != 0:
                            q.results.add(job_id)
                        fanned += self._fan_out(q, job_id, "completed")
                        if self._finalize(q, rec, q.completed, self.completed_ttl):
                            deleted.append(job_id)
                        self._count(q, "processed")
                    elif outcome == "r":
                        rec.status = "retry"
                        rec.scheduled_at = self.now + delay
                        if n2 == 1:
                            rec.retry_count += 1
                        q.scheduled[job_id] = rec.scheduled_at
                        self._count(q, "failed")
                    elif outcome == "d":
                        rec.status = "dead_letter"
                        fanned += self._fan_out(q, job_id, "dead_letter")
                        if self._finalize(q, rec, q.dead, self.dead_ttl):
                            deleted.append(job_id)
                        self._count(q, "failed")
                    elif outcome == "s":
                        rec.status = "stopped"
                        rec.abort = None
                        fanned += self._fan_out(q, job_id, "stopped")
                        if self._finalize(q, rec, q.canceled, self.dead_ttl):
                            deleted.append(job_id)
                    else:
                        rec.status = "ready"
                        rec.attempt -= 1
                        rec.token = None
                        self._push_ready(q, job_id, True)
                elif (
                    (outcome == "c" and rec.status == "completed")
                    or (outcome == "r" and rec.status in ("retry", "scheduled"))
                    or (outcome == "d" and rec.status == "dead_letter")
                    or (outcome in ("s", "r", "h") and rec.status == "stopped")
                ):
                    code = 2
            codes.append(code)
        limit = 100 + len(ops)
        swept = list(deleted)
        for index, ttl in (
            (q.completed, self.completed_ttl),
            (q.dead, self.dead_ttl),
            (q.canceled, self.dead_ttl),
        ):
            swept += self._sweep(q, index, ttl, limit)
        return codes, swept, fanned

    def reap(self, name: str) -> tuple[int, int, list[str]]:
        q = self.queues[name]
        expired = sorted((s, i) for i, s in q.leases.items() if s <= self.now)[:1000]
        recovered = buried = 0
        swept: list[str] = []
        for _score, job_id in expired:
            del q.leases[job_id]
            rec = q.jobs.get(job_id)
            if rec is None or rec.status != "processing":
                continue
            rec.recoveries += 1
            rec.token = None
            if rec.abort:
                rec.status = "stopped"
                rec.abort = None
                self._fan_out(q, job_id, "stopped")
                if self._finalize(q, rec, q.canceled, self.dead_ttl):
                    swept.append(job_id)
                buried += 1
            elif rec.recoveries > MAX_RECOVERIES:
                rec.status = "dead_letter"
                self._fan_out(q, job_id, "dead_letter")
                if self._finalize(q, rec, q.dead, self.dead_ttl):
                    swept.append(job_id)
                self._count(q, "failed")
                buried += 1
            else:
                rec.status = "ready"
                self._push_ready(q, job_id, True)
                recovered += 1
        for index, ttl in (
            (q.completed, self.completed_ttl),
            (q.dead, self.dead_ttl),
            (q.canceled, self.dead_ttl),
        ):
            swept += self._sweep(q, index, ttl, 1000)
        return recovered, buried, swept

    def promote(self, name: str) -> int:
        q = self.queues[name]
        due = sorted((s, i) for i, s in q.scheduled.items() if s <= self.now)[:100]
        moved = 0
        for _score, job_id in due:
            del q.scheduled[job_id]
            rec = q.jobs.get(job_id)
            if rec is not None and rec.status in ("scheduled", "retry"):
                rec.status = "ready"
                self._push_ready(q, job_id, rec.at_front)
                moved += 1
        return moved

    def snapshot(self) -> dict[str, Any]:
        """The model's state in the shape :func:`redis_snapshot` reads."""
        out: dict[str, Any] = {"ids": dict(self.ids), "registered": set(self.registered)}
        for name, q in self.queues.items():
            out[name] = {
                "jobs": {i: _job_view(j) for i, j in q.jobs.items()},
                "ready": list(q.ready),
                "leases": dict(q.leases),
                "scheduled": dict(q.scheduled),
                "deferred": dict(q.deferred),
                "completed": dict(q.completed),
                "dead": dict(q.dead),
                "canceled": dict(q.canceled),
                "dependents": {p: sorted(c) for p, c in q.dependents.items()},
                "outbox": sorted(q.outbox),
                "results": set(q.results),
                "payloads": set(q.jobs),
                "paused": q.paused,
                "stats": {k: v for k, v in q.stats.items() if v},
            }
        return out


def _job_view(j: MJob) -> tuple[Any, ...]:
    return (
        j.status,
        j.attempt,
        j.retry_count,
        j.recoveries,
        j.token,
        j.created_at,
        j.scheduled_at,
        j.started_at,
        j.completed_at,
        tuple(j.depends_on) if j.depends_on else None,
        tuple(sorted(j.pending)) if j.pending else None,
        j.allow_failure,
        j.abort is not None,
        j.unique,
        j.at_front,
        j.max_retry,
    )


def _record_view(rec: dict[str, Any]) -> tuple[Any, ...]:
    pending = rec.get("pending")
    return (
        rec.get("status"),
        rec.get("attempt", 0),
        rec.get("retry_count", 0),
        rec.get("recoveries", 0),
        rec.get("token"),
        rec.get("created_at"),
        rec.get("scheduled_at"),
        rec.get("started_at"),
        rec.get("completed_at"),
        tuple(rec["depends_on"]) if rec.get("depends_on") else None,
        tuple(sorted(pending)) if pending else None,
        bool(rec.get("allow_failure", False)),
        bool(rec.get("abort")),
        bool(rec.get("unique", False)),
        bool(rec.get("at_front", False)),
        rec.get("max_retry"),
    )


def _outbox_entry(raw: bytes) -> tuple[str, ...]:
    e = _decode.decode(raw)
    if e.get("l"):
        return ("l", e["p"], e["pq"], e["c"], e["q"])
    return ("o", e["p"], e["s"], e["c"], e["q"])


async def redis_snapshot(client: gqm.Client) -> dict[str, Any]:
    """Everything the model accounts for, read from Redis."""
    driver = await client._driver()
    keys = client.keys
    ids, registered = await driver.pipeline([["HGETALL", keys.ids], ["SMEMBERS", keys.queues]])
    out: dict[str, Any] = {
        "ids": {_s(k): _s(v) for k, v in _pairs(ids)},
        "registered": {_s(n) for n in registered},
    }
    zsets = ("leases", "scheduled", "deferred", "completed", "dead", "canceled")
    for name in QUEUES:
        q = keys.queue(name)
        replies = await driver.pipeline(
            [
                ["HGETALL", q.jobs],
                ["LRANGE", q.ready, 0, -1],
                *(["ZRANGE", getattr(q, z), 0, -1, "WITHSCORES"] for z in zsets),
                ["HGETALL", q.dependents],
                ["LRANGE", q.outbox, 0, -1],
                ["HKEYS", q.results],
                ["HKEYS", q.payloads],
                ["HGETALL", q.meta],
            ]
        )
        jobs, ready, *rest = replies
        zs, (deps, outbox, results, payloads, meta) = rest[:6], rest[6:]
        meta_map = {_s(k): _s(v) for k, v in _pairs(meta)}
        view: dict[str, Any] = {
            "jobs": {_s(i): _record_view(_decode.decode(r)) for i, r in _pairs(jobs)},
            # The head of the queue is the right end of the list.
            "ready": [_s(i) for i in reversed(ready)],
            "dependents": {
                _s(p): sorted((c, cq) for c, cq in _decode.decode(r)) for p, r in _pairs(deps)
            },
            "outbox": sorted(_outbox_entry(r) for r in outbox),
            "results": {_s(i) for i in results},
            "payloads": {_s(i) for i in payloads},
            "paused": meta_map.pop("paused", None) == "1",
            "stats": {k: int(v) for k, v in meta_map.items() if int(v)},
        }
        for zname, reply in zip(zsets, zs, strict=True):
            view[zname] = {_s(m): int(float(_s(s))) for m, s in _pairs(reply)}
        out[name] = view
    return out


def _diff(expected: dict[str, Any], actual: dict[str, Any]) -> str:
    lines = []
    for key in sorted(set(expected) | set(actual)):
        e, a = expected.get(key), actual.get(key)
        if isinstance(e, dict) and isinstance(a, dict) and key in QUEUES:
            for sub in sorted(set(e) | set(a)):
                if e.get(sub) != a.get(sub):
                    lines.append(f"{key}.{sub}:\n  model {e.get(sub)!r}\n  redis {a.get(sub)!r}")
        elif e != a:
            lines.append(f"{key}:\n  model {e!r}\n  redis {a!r}")
    return "\n".join(lines)


# -- the machine ----------------------------------------------------------------------


class Harness:
    """What the machine needs from the test: the event loop and an open connection."""

    def __init__(self, base: gqm.Client) -> None:
        self.base = base
        self.examples = 0
        self.steps = 0
        #: How often each status and each script outcome was seen (coverage, printed).
        self.seen: Counter[str] = Counter()

    def call(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        return anyio.from_thread.run(fn, *args)


HARNESS: Harness | None = None


class GqmMachine(RuleBasedStateMachine):
    """gqm's scripts (Redis) and the Model, step by step, compared after every step."""

    def __init__(self) -> None:
        super().__init__()
        assert HARNESS is not None
        self.h = HARNESS
        self.h.examples += 1
        # A fresh client per example (its cache of registered queues starts empty) over
        # the test's connection; the keyspace of the prefix is wiped first.
        self.client = gqm.Client._sharing(self.h.base._conn)
        self.h.call(self._wipe)
        self.model = Model(-1, -1)
        #: Every claim token handed out, per job: current and stale ones (fencing).
        self.tokens: list[tuple[str, str, str]] = []  # queue, id, token
        self.known: list[str] = []
        self.last_claim: tuple[str, str, list[tuple[str, str]]] | None = None
        self.counter = 0

    async def _wipe(self) -> None:
        driver = await self.client._driver()
        prefix = self.client.keys.prefix
        cursor: Any = 0
        while True:
            cursor, batch = await driver.execute("SCAN", cursor, "MATCH", f"{prefix}:*")
            if batch:
                await driver.execute("DEL", *batch)
            if _s(cursor) == "0":
                break
        await driver.execute("SET", f"{prefix}:clock", T0)

    def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        async def go() -> Any:
            return await scripts.run(await self.client._driver(), scripts.script(name), keys, args)

        return self.h.call(go)

    def _forget(self, name: str, swept: list[Any]) -> None:
        # As the finisher and the reaper do after their scripts.
        ids = [_s(i) for i in swept]

        async def go() -> None:
            await scripts.forget_ids(await self.client._driver(), self.client.keys, {name: ids})

        self.h.call(go)
        self.model.forget(name, ids)

    def _pick(self, data: st.DataObject, *statuses: str) -> str:
        """A known job id, half the time one whose job is in one of ``statuses`` (so that
        admin operations often meet the states they matter for)."""
        preferred = [
            i
            for i in self.known
            if (rec := self.model._record(i)) is not None and rec.status in statuses
        ]
        use_preferred: bool = data.draw(st.booleans(), label="prefer") if preferred else False
        if use_preferred:
            return data.draw(st.sampled_from(preferred), label="job")
        return data.draw(st.sampled_from(self.known), label="job")

    def _note(self, outcome: object) -> None:
        """Count refusals seen (coverage, printed at the end)."""
        if isinstance(outcome, type):
            self.h.seen["refused: " + outcome.__name__.removesuffix("Expected")] += 1

    def _remember(self, job_id: str) -> None:
        if job_id not in self.known:
            self.known.append(job_id)

    @initialize(
        completed_ttl=st.sampled_from([-1, 0, 30_000]),
        dead_ttl=st.sampled_from([-1, 0, 60_000]),
    )
    def set_retention(self, completed_ttl: int, dead_ttl: int) -> None:
        self.model.completed_ttl = completed_ttl
        self.model.dead_ttl = dead_ttl

    # -- client operations

    @rule(
        jobs=st.lists(
            st.tuples(
                st.sampled_from(QUEUES),
                st.one_of(st.none(), st.sampled_from(NAMED_IDS)),
                st.sampled_from(["back", "front", "delay"]),
                st.sampled_from([0, 1, 1000, 15_000]),
                st.booleans(),
                st.sampled_from([None, 0, 1]),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def enqueue(self, jobs: list[tuple[str, str | None, str, int, bool, int | None]]) -> None:
        """Enqueue a few jobs, one call each: plain, at the front or delayed, with an
        auto id or one of a few explicit ids (duplicates, reuse), unique or not."""
        for spec in jobs:
            self._enqueue_one(*spec)

    @rule(
        jobs=st.lists(
            st.tuples(
                st.sampled_from(QUEUES),
                st.one_of(st.none(), st.sampled_from(NAMED_IDS)),
                st.sampled_from(["back", "front", "delay"]),
                st.sampled_from([0, 1000, 15_000]),
                st.booleans(),
            ),
            min_size=1,
            max_size=5,
        )
    )
    def enqueue_batch(self, jobs: list[tuple[str, str | None, str, int, bool]]) -> None:
        """Client.enqueue_batch: several queues in one round trip, duplicates in the
        batch and against stored jobs, one id on two queues (refused up front)."""
        items: list[gqm.BatchItem[Any]] = []
        specs: list[tuple[str, str, str, int, bool, bool, int | None, bool]] = []
        for queue, named, mode, delay_ms, unique in jobs:
            # Jobs without a named id get a fresh explicit one (as good as an auto id,
            # and known to the model even when the batch is refused part way).
            self.counter += 1
            job_id = named or f"b{self.counter}"
            unique = unique and named is not None
            front = mode == "front"
            delay = delay_ms / 1000 if mode == "delay" else None
            items.append(
                gqm.BatchItem(
                    "t",
                    None,
                    delay=delay,
                    queue=queue,
                    at_front=front,
                    job_id=job_id,
                    unique=unique,
                )
            )
            specs.append((job_id, queue, mode, delay_ms, unique, front, None, True))

        async def go() -> list[str]:
            return [j.id for j in await self.client.enqueue_batch(items)]

        got: list[str] | type[Exception]
        try:
            got = self.h.call(go)
        except gqm.DuplicateJobError:
            got = DuplicateExpected
        except gqm.ConfigurationError:
            got = ConfigExpected
        expected: list[str] | type[Exception]
        try:
            self.model.enqueue_batch(specs)
            expected = [spec[0] for spec in specs]
        except DuplicateExpected:
            expected = DuplicateExpected
        except ConfigExpected:
            expected = ConfigExpected
        assert got == expected, (got, expected)
        self._note(expected)
        for spec in specs:
            if spec[0] in self.model.ids:
                self._remember(spec[0])

    def _enqueue_one(
        self,
        queue: str,
        named: str | None,
        mode: str,
        delay_ms: int,
        unique: bool,
        max_retry: int | None,
    ) -> None:
        unique = unique and named is not None
        at_front = mode == "front"
        options: dict[str, Any] = {"queue": queue, "max_retry": max_retry, "at_front": at_front}
        if named is not None:
            options.update(job_id=named, unique=unique)

        async def go() -> gqm.Job[Any]:
            if mode == "delay":
                return await self.client.enqueue_in("t", None, delay_ms / 1000, **options)
            return await self.client.enqueue("t", None, **options)

        try:
            job: gqm.Job[Any] | None = self.h.call(go)
            got: str | type[Exception] = job.status.value if job else ""
        except gqm.DuplicateJobError:
            job, got = None, DuplicateExpected
        job_id = job.id if job is not None else named
        assert job_id is not None
        try:
            expected: str | type[Exception] = self.model.enqueue(
                job_id,
                queue,
                mode=mode,
                delay_ms=delay_ms,
                unique=unique,
                at_front=at_front,
                max_retry=max_retry,
                explicit=named is not None,
            )
        except DuplicateExpected:
            expected = DuplicateExpected
        assert got == expected, (got, expected)
        self._note(expected)
        self._remember(job_id)

    @precondition(lambda self: bool(self.known))
    @rule(queue=st.sampled_from(QUEUES), data=st.data(), allow_failure=st.booleans())
    def enqueue_dependent(self, queue: str, data: st.DataObject, allow_failure: bool) -> None:
        parents = data.draw(
            st.lists(st.sampled_from(self.known), min_size=1, max_size=3), label="parents"
        )
        # Fresh ids only: a cycle cannot form, and the model need not run the cycle check.
        self.counter += 1
        job_id = f"c{self.counter}"

        async def go() -> str:
            job = await self.client.enqueue(
                "t",
                None,
                queue=queue,
                job_id=job_id,
                depends_on=parents,
                allow_failure=allow_failure,
            )
            return job.status.value

        try:
            got: str | type[Exception] = self.h.call(go)
        except gqm.DependencyError:
            got = DependencyExpected
        try:
            expected: str | type[Exception] = self.model.enqueue(
                job_id,
                queue,
                mode="dep",
                delay_ms=0,
                unique=False,
                at_front=False,
                max_retry=None,
                explicit=True,
                parents=parents,
                allow_failure=allow_failure,
            )
        except DependencyExpected:
            expected = DependencyExpected
        assert got == expected, (got, expected)
        self._note(expected)
        if got is not DependencyExpected:
            self._remember(job_id)

    @precondition(lambda self: bool(self.known))
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        job_id = self._pick(data, "processing")

        async def go() -> str:
            return await self.client.abort(job_id)

        try:
            got: str | type[Exception] = self.h.call(go)
        except gqm.JobNotFoundError:
            got = NotFoundExpected
        try:
            expected: str | type[Exception] = self.model.abort(job_id)
        except NotFoundExpected:
            expected = NotFoundExpected
        assert got == expected, (got, expected)
        self._note(expected)

    @precondition(lambda self: bool(self.known))
    @rule(data=st.data())
    def admin_retry(self, data: st.DataObject) -> None:
        job_id = self._pick(data, "dead_letter", "canceled", "stopped")

        async def go() -> dict[str, bool]:
            return await self.client.retry(job_id)

        assert self.h.call(go) == {job_id: self.model.admin_retry(job_id)}

    @precondition(lambda self: bool(self.known))
    @rule(data=st.data())
    def admin_delete(self, data: st.DataObject) -> None:
        job_id = self._pick(data, "deferred", "ready", "completed", "processing")

        async def go() -> dict[str, str]:
            return await self.client.delete(job_id)

        assert self.h.call(go) == {job_id: self.model.admin_delete(job_id)}

    @rule(queue=st.sampled_from(QUEUES), limit=st.integers(1, 3))
    def empty(self, queue: str, limit: int) -> None:
        async def go() -> int:
            return await self.client.empty(queue, limit=limit)

        assert self.h.call(go) == self.model.empty(queue, limit)

    @rule(queue=st.sampled_from(QUEUES), paused=st.booleans())
    def pause_or_resume(self, queue: str, paused: bool) -> None:
        async def go() -> bool:
            if paused:
                return await self.client.pause(queue)
            return await self.client.resume(queue)

        assert self.h.call(go) == self.model.pause(queue, paused)

    # -- what workers and servers do

    @rule(queue=st.sampled_from(QUEUES), count=st.integers(1, 3))
    def claim(self, queue: str, count: int) -> None:
        self._claim(queue, count)

    def _claim(self, queue: str, count: int) -> list[tuple[str, str]]:
        q = self.client.keys.queue(queue)
        attempt = uuid.uuid4().hex[:12]
        reply = self._run("claim", scripts.claim_keys(q, attempt), [count, LEASE_MS, "w", attempt])
        got = [(_s(reply[i]), _s(reply[i + 1])) for i in range(0, len(reply), 4)]
        assert got == self.model.claim(queue, count, attempt)
        for job_id, token in got:
            self.tokens.append((queue, job_id, token))
        if got:
            self.last_claim = (queue, attempt, got)
        return got

    @rule(
        queue=st.sampled_from(QUEUES),
        outcomes=st.lists(
            st.sampled_from(["complete", "complete", "fail", "fail", "fatal", "stop", "hand_back"]),
            min_size=1,
            max_size=4,
        ),
        counted=st.booleans(),
        delay_ms=st.sampled_from([0, 2000, 20_000]),
    )
    def work(self, queue: str, outcomes: list[str], counted: bool, delay_ms: int) -> None:
        """A worker claims a few jobs and records an outcome for each, in one finish
        call (the common path, in one step so that jobs move through their whole life
        often; the finisher batches outcomes the same way)."""
        claimed = self._claim(queue, len(outcomes))
        ops = [
            (job_id, token, outcome, counted, True, delay_ms)
            for (job_id, token), outcome in zip(claimed, outcomes, strict=False)
        ]
        if ops:
            self._finish_many(queue, ops)

    @rule(
        queue=st.sampled_from(QUEUES),
        outcome=st.sampled_from(["complete", "fail", "fatal", "stop", "hand_back"]),
        counted=st.booleans(),
    )
    def finish_replayed(self, queue: str, outcome: str, counted: bool) -> None:
        """A worker's finish call is sent twice (its reply was lost and the finisher
        retried): the second is recognised as a replay (or refused, for a hand-back,
        which gives the claim up), never applied twice."""
        claimed = self._claim(queue, 1)
        if claimed:
            ((job_id, token),) = claimed
            for _ in range(2):
                self._finish_with(queue, job_id, token, outcome, counted, True, 0)

    @rule()
    def script_cache_flushed(self) -> None:
        """Redis forgets its scripts (SCRIPT FLUSH, as after a restart): the next calls
        get NOSCRIPT and are re-sent with their source, with no effect on the state."""

        async def go() -> None:
            await (await self.client._driver()).execute("SCRIPT", "FLUSH")

        self.h.call(go)

    @precondition(lambda self: self.last_claim is not None)
    @rule()
    def claim_replayed(self) -> None:
        """The same claim attempt re-sent (its reply was lost) gets the same jobs back
        (those it still owns) and claims nothing more."""
        assert self.last_claim is not None
        queue, attempt, claimed = self.last_claim
        q = self.client.keys.queue(queue)
        reply = self._run("claim", scripts.claim_keys(q, attempt), [3, LEASE_MS, "w", attempt])
        got = [(_s(reply[i]), _s(reply[i + 1])) for i in range(0, len(reply), 4)]
        assert got == self.model.claim_replay(queue, claimed)

    @precondition(lambda self: bool(self.tokens))
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        queue, job_id, token = data.draw(st.sampled_from(self.tokens), label="claim")
        q = self.client.keys.queue(queue)
        lost, aborted = self._run("renew", scripts.renew_keys(q), [LEASE_MS, job_id, token])
        got = ([_s(i) for i in lost], [_s(pair[0]) for pair in aborted])
        assert got == self.model.renew(queue, [(job_id, token)])

    @precondition(lambda self: bool(self.tokens))
    @rule(
        data=st.data(),
        outcome=st.sampled_from(["complete", "fail", "fail", "fatal", "stop", "hand_back"]),
        counted=st.booleans(),
        with_result=st.booleans(),
        delay_ms=st.sampled_from([0, 2000, 20_000]),
    )
    def finish(
        self, data: st.DataObject, outcome: str, counted: bool, with_result: bool, delay_ms: int
    ) -> None:
        """A worker records an outcome with one of the tokens it was ever given: the
        current one (applied, or recognised as a replay) or a stale one (fenced off)."""
        current = self._current_claims()
        if current and data.draw(st.integers(0, 3), label="use a current token") > 0:
            picked = data.draw(st.sampled_from(current), label="claim")
        else:
            picked = data.draw(st.sampled_from(self.tokens), label="claim")
        queue, job_id, token = picked
        self._finish_with(queue, job_id, token, outcome, counted, with_result, delay_ms)

    def _finish_with(
        self,
        queue: str,
        job_id: str,
        token: str,
        outcome: str,
        counted: bool,
        with_result: bool,
        delay_ms: int,
    ) -> None:
        self._finish_many(queue, [(job_id, token, outcome, counted, with_result, delay_ms)])

    def _finish_many(self, queue: str, ops: list[tuple[str, str, str, bool, bool, int]]) -> None:
        """One finish script call for ``ops`` (as the finisher batches a queue's
        outcomes): (id, token, outcome, counted, with_result, delay_ms) each."""
        q = self.client.keys.queue(queue)
        args: list[Any] = [
            self.model.completed_ttl,
            self.model.dead_ttl,
            self.client.keys.done_channel,
            q.wake,
        ]
        model_ops: list[tuple[str, str, str, int, int, int]] = []
        for job_id, token, outcome, counted, with_result, delay_ms in ops:
            rec = self.model.queues[queue].jobs.get(job_id)
            # "fatal" is a SkipRetry: straight to the dead-letter queue.
            code = {"complete": "c", "fatal": "d", "stop": "s", "hand_back": "h"}.get(outcome, "r")
            if outcome == "fail":
                # The runner's decision: only counted failures count toward max_retry.
                max_retry = DEFAULT_MAX_RETRY
                if rec is not None and rec.max_retry is not None:
                    max_retry = rec.max_retry
                retries = (rec.retry_count if rec else 0) + (1 if counted else 0)
                code = "d" if counted and retries > max_retry else "r"
            n1 = 1 if (code == "c" and with_result) else (delay_ms if code == "r" else 0)
            n2 = 1 if (code == "r" and counted) else 0
            args += [job_id, token, code, b"1" if code == "c" else b"err", n1, n2]
            model_ops.append((job_id, token, code, 1 if with_result else 0, n2, delay_ms))
        codes, swept, fanned = self._run("finish", scripts.finish_keys(q), args)
        got = (list(codes), sorted(_s(i) for i in swept), fanned)
        e_codes, e_swept, e_fanned = self.model.finish(queue, model_ops)
        assert got == (e_codes, sorted(e_swept), e_fanned), (model_ops, got)
        for c in e_codes:
            self.h.seen[("finish: fenced", "finish: applied", "finish: replay")[c]] += 1
        self._forget(queue, list(swept))

    def _current_claims(self) -> list[tuple[str, str, str]]:
        """Claims whose token still owns a processing job (a live worker's view)."""
        return [
            (queue, job_id, job.token)
            for queue in QUEUES
            for job_id, job in sorted(self.model.queues[queue].jobs.items())
            if job.status == "processing" and job.token is not None
        ]

    @precondition(lambda self: bool(self._current_claims()))
    @rule(
        data=st.data(),
        outcome=st.sampled_from(["complete", "fail", "fail", "fatal", "stop"]),
        counted=st.booleans(),
    )
    def finish_running(self, data: st.DataObject, outcome: str, counted: bool) -> None:
        """A worker that still owns its job records its outcome (weights the common
        case: most finishes in production are by the owner)."""
        self.finish(data, outcome, counted, with_result=True, delay_ms=0)

    @rule(
        queue=st.sampled_from(QUEUES),
        outcome=st.sampled_from(["complete", "fail", "fatal", "stop", "hand_back"]),
        counted=st.booleans(),
    )
    def abort_races_the_worker(self, queue: str, outcome: str, counted: bool) -> None:
        """A worker claims a job; an abort reaches it while the worker records an
        outcome anyway (the handler had just returned or failed, or the server was
        shutting down and handed it back)."""
        claimed = self._claim(queue, 1)
        if not claimed:
            return
        ((job_id, token),) = claimed

        async def go() -> str:
            return await self.client.abort(job_id)

        got = self.h.call(go)
        assert got == self.model.abort(job_id) == "signalled", got
        self._finish_with(queue, job_id, token, outcome, counted, False, 0)

    @rule(queue=st.sampled_from(QUEUES))
    def reap(self, queue: str) -> None:
        q = self.client.keys.queue(queue)
        args = [
            1000,
            MAX_RECOVERIES,
            self.model.dead_ttl,
            q.wake,
            self.client.keys.done_channel,
            self.model.completed_ttl,
        ]
        recovered, buried, _wait, swept = self._run("reap", scripts.reap_keys(q), args)
        e_recovered, e_buried, e_swept = self.model.reap(queue)
        assert (recovered, buried, sorted(_s(i) for i in swept)) == (
            e_recovered,
            e_buried,
            sorted(e_swept),
        )
        self._forget(queue, list(swept))

    @rule(queue=st.sampled_from(QUEUES))
    def promote(self, queue: str) -> None:
        q = self.client.keys.queue(queue)
        moved, _wait = self._run("promote", scripts.promote_keys(q), [100, q.wake])
        assert moved == self.model.promote(queue)

    @rule()
    def resolve(self) -> None:
        """The servers' resolver drains every registered queue's outbox."""

        async def go() -> int:
            driver = await self.client._driver()
            names = sorted(_s(n) for n in await driver.execute("SMEMBERS", self.client.keys.queues))
            return await _dag.drain_outboxes(
                driver, self.client.keys, names, canceled_ttl_ms=self.model.dead_ttl
            )

        assert self.h.call(go) == self.model.drain(
            sorted(self.model.registered), self.model.dead_ttl
        )

        # Drained: every outbox is empty and no deferred job waits on a parent whose
        # outcome can no longer reach it (T13's "0 dependents stuck in deferred").
        async def check() -> list[str]:
            return await find_violations(self.client, drained=True)

        assert self.h.call(check) == []

    @rule(ms=st.sampled_from([1, 999, 5000, 10_000, 30_000, 100_000]))
    def advance_clock(self, ms: int) -> None:
        self._set_clock(self.model.now + ms)

    def _set_clock(self, now: int) -> None:
        self.model.now = now

        async def go() -> None:
            driver = await self.client._driver()
            await driver.execute("SET", f"{self.client.keys.prefix}:clock", now)

        self.h.call(go)

    @precondition(lambda self: any(self.model.queues[n].leases for n in QUEUES))
    @rule(data=st.data(), all_of_them=st.booleans())
    def worker_dies(self, data: st.DataObject, all_of_them: bool) -> None:
        """A worker dies holding jobs: time passes beyond one lease (or all of them) and
        the reaper runs (recovery, poison pill, abort of a dead worker's job)."""
        queue = data.draw(
            st.sampled_from([n for n in QUEUES if self.model.queues[n].leases]), label="queue"
        )
        deadlines = sorted(self.model.queues[queue].leases.values())
        self._set_clock(max(self.model.now, deadlines[-1] if all_of_them else deadlines[0]))
        self.reap(queue)

    @precondition(lambda self: any(self.model.queues[n].scheduled for n in QUEUES))
    @rule(data=st.data())
    def job_falls_due(self, data: st.DataObject) -> None:
        """Time passes until the next delayed job or retry is due, and it is promoted."""
        queue = data.draw(
            st.sampled_from([n for n in QUEUES if self.model.queues[n].scheduled]), label="queue"
        )
        self._set_clock(max(self.model.now, min(self.model.queues[queue].scheduled.values())))
        self.promote(queue)

    # -- after every step

    @invariant()
    def redis_matches_model(self) -> None:
        async def go() -> tuple[dict[str, Any], list[str]]:
            return await redis_snapshot(self.client), await find_violations(self.client)

        actual, violations = self.h.call(go)
        self.h.steps += 1
        for name in QUEUES:
            self.h.seen.update(view[0] for view in actual[name]["jobs"].values())
        assert violations == [], violations
        expected = self.model.snapshot()
        assert actual == expected, _diff(expected, actual)
        # Leases exist only for processing jobs (also in the checker; stated here as the
        # property the scenario names).
        for name in QUEUES:
            q = self.model.queues[name]
            assert {i for i, j in q.jobs.items() if j.status == "processing"} == set(q.leases)


@pytest.mark.timeout(7200 if STRESS else 120)
async def test_scripts_match_the_model(
    anyio_backend: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
) -> None:
    """0 disagreements between gqm's scripts and the model, and 0 invariant violations,
    after every step of every example (the figure: N examples x steps, and the seed)."""
    global HARNESS
    chosen = SEED
    monkeypatch.setattr(scripts, "script", clocked_script)
    async with gqm.Client(redis_url, prefix=f"sm{uuid.uuid4().hex[:8]}") as base:
        HARNESS = harness = Harness(base)
        test = get_state_machine_test(
            GqmMachine,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
        test = seed(chosen)(test)
        started = anyio.current_time()
        try:
            await anyio.to_thread.run_sync(test)
        finally:
            HARNESS = None
            elapsed = anyio.current_time() - started
            print(
                f"\nT14 [{anyio_backend}] state machine: {harness.examples} examples "
                f"(max {EXAMPLES}) x up to {STEPS} steps, {harness.steps} checked states, "
                f"seed {chosen}, {elapsed:.1f}s\n  coverage (job states per step, outcomes): "
                + ", ".join(f"{k} {v}" for k, v in sorted(harness.seen.items()))
            )
            record_property("t14_seed", chosen)
            record_property("t14_examples", harness.examples)
            record_property("t14_checked_states", harness.steps)


async def test_admin_retry_forgets_an_earlier_abort(client: gqm.Client) -> None:
    """Regression (found by the model): an abort requested while a job ran, which lost
    the race with the job's own failure (dead-lettered), must not stop the fresh run an
    admin retry starts. Before the fix the flag survived the retry and the new run was
    reported as aborted by its first lease renewal."""
    job = await client.enqueue("t", None, max_retry=0)
    q = client.keys.queue("default")
    driver = await client._driver()

    async def claim() -> str:
        attempt = uuid.uuid4().hex
        keys = scripts.claim_keys(q, attempt)
        reply = await scripts.run(driver, scripts.script("claim"), keys, [1, 30_000, "w", attempt])
        return _s(reply[1])

    token = await claim()
    assert await client.abort(job.id) == "signalled"
    args: list[Any] = [-1, -1, client.keys.done_channel, q.wake, job.id, token, "d", b"boom", 0, 0]
    (codes, _swept, _fanned) = await scripts.run(
        driver, scripts.script("finish"), scripts.finish_keys(q), args
    )
    assert codes == [1]
    assert await client.retry(job.id) == {job.id: True}
    token = await claim()
    lost, aborted = await scripts.run(
        driver, scripts.script("renew"), scripts.renew_keys(q), [30_000, job.id, token]
    )
    assert (lost, aborted) == ([], [])
    assert await find_violations(client) == []


@pytest.mark.parametrize("outcome", ["r", "h"])
async def test_abort_wins_over_a_retry_or_hand_back(client: gqm.Client, outcome: str) -> None:
    """Regression (found with the model): an abort that reaches a running job just as
    its handler fails (retry) or its server hands it back (shutdown) used to be lost:
    the job went back to wait and ran again, although abort() had answered "signalled"
    and promises it ends as stopped. It is now recorded as stopped; a replay of the same
    call is recognised."""
    job = await client.enqueue("t", None)
    q = client.keys.queue("default")
    driver = await client._driver()
    attempt = uuid.uuid4().hex
    claim_args: list[Any] = [1, 30_000, "w", attempt]
    reply = await scripts.run(
        driver, scripts.script("claim"), scripts.claim_keys(q, attempt), claim_args
    )
    token = _s(reply[1])
    assert await client.abort(job.id) == "signalled"
    args: list[Any] = [-1, -1, client.keys.done_channel, q.wake, job.id, token, outcome, b"e", 0, 1]
    for expected in (1, 2):
        (codes, _swept, _fanned) = await scripts.run(
            driver, scripts.script("finish"), scripts.finish_keys(q), args
        )
        assert codes == [expected]
    stored = await client.get_job(job.id)
    assert stored.status is gqm.JobStatus.STOPPED
    assert stored.error == "aborted: aborted by request"
    assert await driver.execute("LLEN", q.ready) == 0
    assert await driver.execute("ZCARD", q.scheduled) == 0
    assert await find_violations(client) == []
