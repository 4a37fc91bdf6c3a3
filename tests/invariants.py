"""A keyspace invariant checker for gqm: scans one key prefix and lists what is wrong.

Use it after a scenario has gone quiet (servers stopped or idle, no client writing):
the checker reads queue by queue, so on a busy keyspace its reads are not one snapshot
and a job moving between two reads could be reported wrongly.

Every violation is a human-readable string that starts with a kind tag in brackets,
e.g. ``[two-indexes] queue 'emails': job j1 (ready) is also in scheduled``; the tags are
the ``KIND_*`` constants below, so tests can tell violations apart.

What it knows comes from ``gqm._keys`` and the Lua scripts:

* each job record (``{q}:jobs``) sits in exactly the one state index its status names
  (``ready`` list, ``scheduled`` zset for scheduled and retry, ``deferred``, ``leases``
  for processing, ``completed``, ``dead``, ``canceled`` for canceled and stopped), once;
* no index entry, lease, payload, result or dependents list without its job record;
  a processing job has a lease and a claim token, nothing else has a lease;
* zset scores agree with the record (due time of scheduled/retry jobs, finish time of
  terminal ones), and a deferred job has pending parents, no other job has; only a
  running (or finished) job carries an abort flag;
* the global id index (``ids``) names the queue of every live job. An index entry whose
  job is gone is harmless by design (DESIGN §4) and is never reported; a terminal record
  may have lost its entry to a newer job with the same id on another queue (whose sweep
  then drops the entry), so finished jobs are not checked;
* a job id is live on one queue only, as the client enforces (finished records of the
  id may remain on other queues). gqm keeps no separate unique-lock keys: the retained
  record *is* the lock (``unique=True``), so a "ghost lock" shows up as an id live
  twice, or as a record nothing can finish (reported by the state checks);
* DAG: a dependents list belongs to an existing parent (its children may be gone, or
  their ids reused: announcing to them is harmless); with ``drained=True`` every
  pending parent of a deferred job is live and lists the child (else the child is
  stuck: no outcome is on its way);
* claim memos (``{q}:claim:<attempt>``) expire; cron state is consistent;
* with ``drained=True``: every outbox (per queue, and the cron outbox / taken set) is
  empty.

Records deleted at retention take their index entries with them (same script), so an
expired-and-swept job leaves nothing this checker reports.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any

import msgspec

from gqm._keys import QUEUE_NAME_RE

if TYPE_CHECKING:
    from collections.abc import Iterable

    import gqm
    from gqm._redis import Command, Driver

__all__ = [
    "KIND_BAD_RECORD",
    "KIND_CRON",
    "KIND_DAG",
    "KIND_ID_INDEX",
    "KIND_ID_TWICE",
    "KIND_LEASE",
    "KIND_MEMO",
    "KIND_NOT_DRAINED",
    "KIND_NOT_INDEXED",
    "KIND_ORPHAN",
    "KIND_SCORE",
    "KIND_STRAY_KEY",
    "KIND_TWO_INDEXES",
    "KIND_WRONG_INDEX",
    "assert_invariants",
    "find_violations",
    "kinds",
]

#: A record that does not decode, or whose id/queue/fields contradict its place.
KIND_BAD_RECORD = "bad-record"
#: A job found in more than one state index (or twice in one).
KIND_TWO_INDEXES = "two-indexes"
#: A job in an index that does not match its status (and not in the one that does).
KIND_WRONG_INDEX = "wrong-index"
#: A job in no state index at all.
KIND_NOT_INDEXED = "not-indexed"
#: An index entry, payload, result or lease without a job record.
KIND_ORPHAN = "orphan"
#: Lease trouble: a processing job without a lease or token, a lease of a non-processing job.
KIND_LEASE = "lease"
#: A zset score that disagrees with the record's time.
KIND_SCORE = "score"
#: A live job missing from the global id index, or indexed under another queue.
KIND_ID_INDEX = "id-index"
#: A job id held (live, or retained unique) by two queues at once.
KIND_ID_TWICE = "id-twice"
#: Dependency (DAG) trouble: orphan dependents lists, pending parents that cannot resolve.
KIND_DAG = "dag"
#: A claim memo without an expiry.
KIND_MEMO = "memo"
#: Something left in an outbox although the resolver has drained.
KIND_NOT_DRAINED = "not-drained"
#: A key of a queue that gqm's layout does not know.
KIND_STRAY_KEY = "stray-key"
#: Cron state trouble: a scheduled tick of a missing or disabled entry.
KIND_CRON = "cron"

#: The state index each status lives in (``_keys.py``; the scripts maintain these).
STATUS_INDEX = {
    "ready": "ready",
    "scheduled": "scheduled",
    "retry": "scheduled",
    "deferred": "deferred",
    "processing": "leases",
    "completed": "completed",
    "dead_letter": "dead",
    "canceled": "canceled",
    "stopped": "canceled",
}
TERMINAL = frozenset({"completed", "dead_letter", "canceled", "stopped", "failed"})
_INDEXES = ("ready", "scheduled", "deferred", "leases", "completed", "dead", "canceled")
#: Per-queue key suffixes of the layout (``claim:<attempt>`` is matched separately).
_QUEUE_SUFFIXES = frozenset(
    {"jobs", "payloads", "results", *_INDEXES, "dependents", "outbox", "meta"}
)
_MAX_REPORTED = 50
_decode_any: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


def _glob_escape(text: str) -> str:
    # SCAN MATCH is a glob: the prefix must match literally.
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(reply: Any) -> list[tuple[Any, Any]]:
    """A map-like reply (HGETALL, ZRANGE WITHSCORES) as pairs, whatever its shape: a
    dict (RESP3 maps), a flat list (RESP2) or a list of pairs (RESP3 WITHSCORES)."""
    if isinstance(reply, dict):
        return list(reply.items())
    items = list(reply or ())
    if items and isinstance(items[0], list | tuple):
        return [(p[0], p[1]) for p in items]
    return list(zip(items[::2], items[1::2], strict=True))


def _num(value: Any) -> float:
    return float(_s(value))


async def _scan(driver: Driver, pattern: str) -> list[str]:
    found: list[str] = []
    cursor: Any = 0
    while True:
        cursor, batch = await driver.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        found += [_s(k) for k in batch]
        if _s(cursor) == "0":
            return found


class _Queue:
    """What the checker read of one queue."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.jobs: dict[str, dict[str, Any]] = {}
        self.payloads: set[str] = set()
        self.results: set[str] = set()
        self.ready: list[str] = []
        self.zsets: dict[str, dict[str, float]] = {}
        self.dependents: dict[str, Any] = {}
        self.outbox: list[bytes] = []
        self.memos: dict[str, int] = {}


async def _read_queue(
    client: gqm.Client, driver: Driver, name: str, memo_keys: list[str], out: list[str]
) -> _Queue:
    q = client.keys.queue(name)
    data = _Queue(name)
    commands: list[Command] = [
        ["HGETALL", q.jobs],
        ["HKEYS", q.payloads],
        ["HKEYS", q.results],
        ["LRANGE", q.ready, 0, -1],
        *(["ZRANGE", getattr(q, z), 0, -1, "WITHSCORES"] for z in _INDEXES[1:]),
        ["HGETALL", q.dependents],
        ["LRANGE", q.outbox, 0, -1],
        *(["PTTL", k] for k in memo_keys),
    ]
    replies = await driver.pipeline(commands)
    jobs, payloads, results, ready, *rest = replies
    zsets, (dependents, outbox, *pttls) = rest[: len(_INDEXES) - 1], rest[len(_INDEXES) - 1 :]
    for raw_id, raw in _pairs(jobs):
        job_id = _s(raw_id)
        try:
            rec = _decode_any.decode(raw)
        except msgspec.DecodeError as err:
            out.append(f"[{KIND_BAD_RECORD}] queue {name!r}: job {job_id} does not decode ({err})")
            continue
        if not isinstance(rec, dict):
            out.append(f"[{KIND_BAD_RECORD}] queue {name!r}: job {job_id} is not a JSON object")
            continue
        data.jobs[job_id] = rec
    data.payloads = {_s(k) for k in payloads}
    data.results = {_s(k) for k in results}
    data.ready = [_s(k) for k in ready]
    for zname, reply in zip(_INDEXES[1:], zsets, strict=True):
        data.zsets[zname] = {_s(m): _num(score) for m, score in _pairs(reply)}
    for raw_id, raw in _pairs(dependents):
        try:
            data.dependents[_s(raw_id)] = _decode_any.decode(raw)
        except msgspec.DecodeError:
            data.dependents[_s(raw_id)] = None
    data.outbox = list(outbox)
    data.memos = {k: int(t) for k, t in zip(memo_keys, pttls, strict=True)}
    return data


def _check_queue(data: _Queue, ids: dict[str, str], twice: set[str], out: list[str]) -> None:
    """Check one queue's records against its indexes. Ids in ``twice`` (held by two
    queues, reported on their own) are not also reported as mis-indexed."""
    name = data.name
    where = f"queue {name!r}"
    ready_count = Counter(data.ready)
    for job_id, rec in sorted(data.jobs.items()):
        status = rec.get("status")
        what = f"{where}: job {job_id} ({status})"
        if rec.get("id") != job_id or rec.get("queue") != name:
            out.append(
                f"[{KIND_BAD_RECORD}] {what} is stored under the wrong id or queue "
                f"(record says id {rec.get('id')!r}, queue {rec.get('queue')!r})"
            )
        # Where the job is, and how often.
        found: list[str] = []
        if ready_count[job_id]:
            found += ["ready"] * ready_count[job_id]
        # A lease is judged on its own below (a lease of a job that is not processing
        # is one violation, not also a second index).
        found += [z for z in _INDEXES[1:] if z != "leases" and job_id in data.zsets[z]]
        if status == "processing" and job_id in data.zsets["leases"]:
            found.append("leases")
        expected = STATUS_INDEX.get(status) if isinstance(status, str) else None
        if expected is None:
            out.append(f"[{KIND_BAD_RECORD}] {what}: no state index holds this status")
        elif not found:
            if expected == "leases":
                out.append(f"[{KIND_LEASE}] {what} has no lease")
            else:
                out.append(f"[{KIND_NOT_INDEXED}] {what} is in no index (expected {expected})")
        elif expected not in found:
            out.append(f"[{KIND_WRONG_INDEX}] {what} is in {', '.join(found)}, not in {expected}")
        elif len(found) > 1:
            out.append(f"[{KIND_TWO_INDEXES}] {what} is in {', '.join(found)}")
        if status != "processing" and job_id in data.zsets["leases"]:
            out.append(f"[{KIND_LEASE}] {what} holds a lease but is not processing")
        if rec.get("abort") and status not in TERMINAL and status != "processing":
            # Only a running job can be flagged; every way out of processing either ends
            # the job or turns the flag into `stopped`, so a waiting job never has one.
            out.append(f"[{KIND_BAD_RECORD}] {what} is flagged for abort but not running")
        if status == "processing" and not rec.get("token"):
            out.append(f"[{KIND_LEASE}] {what} has no claim token")
        # Scores tell when: the due time of a waiting job, the finish time of a finished one.
        score_field = {"scheduled": "scheduled_at", "completed": "completed_at"}.get(
            expected or "", "completed_at" if expected in ("dead", "canceled") else None
        )
        score = data.zsets.get(expected or "", {}).get(job_id)
        if score_field and score is not None and rec.get(score_field) != score:
            out.append(
                f"[{KIND_SCORE}] {what}: {expected} score {score:.0f} "
                f"!= {score_field} {rec.get(score_field)}"
            )
        # Every record keeps its payload; only completed jobs have results.
        if job_id not in data.payloads:
            out.append(f"[{KIND_BAD_RECORD}] {what} has no payload entry")
        if job_id in data.results and status != "completed":
            out.append(f"[{KIND_BAD_RECORD}] {what} has a stored result but did not complete")
        pending = rec.get("pending")
        if status == "deferred":
            if not pending:
                out.append(f"[{KIND_DAG}] {what} is deferred without pending parents")
            elif not set(pending) <= set(rec.get("depends_on") or ()):
                out.append(f"[{KIND_DAG}] {what}: pending parents not among depends_on")
        elif pending:
            out.append(f"[{KIND_DAG}] {what} is not deferred but has pending parents")
        # The id index must find every live job (it is written with the enqueue).
        if status not in TERMINAL and ids.get(job_id) != name and job_id not in twice:
            got = ids.get(job_id)
            out.append(
                f"[{KIND_ID_INDEX}] {what}: id index "
                + ("has no entry" if got is None else f"points at queue {got!r}")
            )
    # Index entries without a record.
    for job_id in sorted(ready_count):
        if job_id not in data.jobs:
            out.append(f"[{KIND_ORPHAN}] {where}: ready entry {job_id} has no job record")
    for zname in _INDEXES[1:]:
        for job_id in sorted(data.zsets[zname]):
            if job_id not in data.jobs:
                kind = KIND_LEASE if zname == "leases" else KIND_ORPHAN
                out.append(f"[{kind}] {where}: {zname} entry {job_id} has no job record")
    for job_id in sorted(data.payloads - data.jobs.keys()):
        out.append(f"[{KIND_ORPHAN}] {where}: payload of {job_id} has no job record")
    for job_id in sorted(data.results - data.jobs.keys()):
        out.append(f"[{KIND_ORPHAN}] {where}: result of {job_id} has no job record")
    for key, pttl in sorted(data.memos.items()):
        if pttl == -1:
            out.append(f"[{KIND_MEMO}] {where}: claim memo {key} never expires")


def _check_dag(
    queues: dict[str, _Queue],
    others: dict[str, _Queue],
    ids: dict[str, str],
    drained: bool,
    out: list[str],
) -> None:
    """``others`` holds the records (and dependents lists) of jobs on queues outside
    ``queues`` that the edges point at."""

    def known(queue: str) -> _Queue:
        return queues.get(queue) or others.get(queue) or _Queue(queue)

    def record(queue: str, job_id: str) -> dict[str, Any] | None:
        return known(queue).jobs.get(job_id)

    for name, data in sorted(queues.items()):
        where = f"queue {name!r}"
        for parent, children in sorted(data.dependents.items()):
            if parent not in data.jobs:
                out.append(f"[{KIND_DAG}] {where}: dependents list of {parent}, no such job")
                continue
            if not isinstance(children, list):
                out.append(f"[{KIND_DAG}] {where}: dependents list of {parent} does not decode")
                continue
        if not drained:
            continue
        for job_id, rec in sorted(data.jobs.items()):
            if rec.get("status") != "deferred":
                continue
            for parent in sorted(rec.get("pending") or ()):
                parent_queue = ids.get(parent)
                parent_rec = None if parent_queue is None else record(parent_queue, parent)
                stuck = None
                if parent_rec is None:
                    stuck = "is gone"
                elif parent_rec.get("status") in TERMINAL:
                    stuck = f"already ended as {parent_rec.get('status')}"
                else:
                    assert parent_queue is not None
                    listed = known(parent_queue).dependents.get(parent)
                    if not any(_s(e[0]) == job_id and _s(e[1]) == name for e in listed or ()):
                        stuck = "does not list it as a dependent"
                if stuck:
                    out.append(
                        f"[{KIND_DAG}] {where}: deferred job {job_id} waits on {parent}, "
                        f"which {stuck}: it can never resolve"
                    )


async def find_violations(
    client: gqm.Client, *, queues: Iterable[str] | None = None, drained: bool = False
) -> list[str]:
    """Scan the client's key prefix and return every invariant violation found.

    :param queues: the queues to check; None checks every queue of the prefix (the
        ``queues`` registry plus every queue whose keys SCAN finds).
    :param drained: the resolver has drained: outboxes must be empty and every pending
        parent of a deferred job must still be able to resolve it.
    """
    driver = await client._driver()
    keys = client.keys
    out: list[str] = []
    head = keys.prefix + ":"
    all_keys = await _scan(driver, _glob_escape(head) + "*")
    tagged = re.compile(re.escape(head) + r"\{([^{}]*)\}:(.*)", re.DOTALL)
    per_queue: dict[str, list[str]] = {}
    memo_keys: dict[str, list[str]] = {}
    for key in sorted(all_keys):
        m = tagged.fullmatch(key)
        if m is None:
            continue
        name, suffix = m.group(1), m.group(2)
        if not QUEUE_NAME_RE.fullmatch(name):
            out.append(f"[{KIND_STRAY_KEY}] key {key!r} carries an invalid queue name")
            continue
        per_queue.setdefault(name, []).append(suffix)
        if suffix.startswith("claim:"):
            memo_keys.setdefault(name, []).append(key)
        elif suffix not in _QUEUE_SUFFIXES:
            out.append(f"[{KIND_STRAY_KEY}] key {key!r} is not part of gqm's layout")
    registered = {_s(n) for n in await driver.execute("SMEMBERS", keys.queues)}
    names = sorted(registered | per_queue.keys()) if queues is None else sorted(set(queues))
    ids: dict[str, str] = {}
    cursor: Any = 0
    while True:
        cursor, batch = await driver.execute("HSCAN", keys.ids, cursor, "COUNT", 1000)
        ids.update({_s(k): _s(v) for k, v in _pairs(batch)})
        if _s(cursor) == "0":
            break
    read = {n: await _read_queue(client, driver, n, memo_keys.get(n, []), out) for n in names}
    # One id, one live holder. The client refuses an id that another queue holds live.
    # Finished records may share an id with a live job elsewhere: a non-unique job may
    # reuse the id of a finished one, and once the id index has forgotten a swept record
    # even a unique enqueue cannot see a record retained on another queue (cross-queue
    # uniqueness goes through the index, and is best effort).
    holders: dict[str, list[dict[str, Any]]] = {}
    for data in read.values():
        for job_id, rec in data.jobs.items():
            holders.setdefault(job_id, []).append(rec)
    twice = {
        job_id
        for job_id, recs in holders.items()
        if sum(r.get("status") not in TERMINAL for r in recs) > 1
    }
    for job_id in sorted(twice):
        out.append(
            f"[{KIND_ID_TWICE}] job id {job_id} is held by queues "
            + ", ".join(sorted(repr(r.get("queue")) for r in holders[job_id]))
        )
    for name, data in read.items():
        _check_queue(data, ids, twice, out)
        # The resolver and the admin views find queues through the registry only.
        if (data.jobs or data.outbox) and name not in registered:
            out.append(f"[{KIND_STRAY_KEY}] queue {name!r} has jobs but is not registered")
    # Records on queues not read (a filtered check) that the DAG checks look at.
    wanted: list[tuple[str, str]] = []
    for data in read.values() if drained else ():
        for rec in data.jobs.values():
            for parent in rec.get("pending") or ():
                pq = ids.get(parent)
                if pq is not None and pq not in read:
                    wanted.append((pq, parent))
    others: dict[str, _Queue] = {}
    if wanted:
        replies = await driver.pipeline(
            [
                cmd
                for q, j in wanted
                for cmd in (["HGET", keys.queue(q).jobs, j], ["HGET", keys.queue(q).dependents, j])
            ]
        )
        for n, (q, j) in enumerate(wanted):
            raw, deps = replies[2 * n], replies[2 * n + 1]
            other = others.setdefault(q, _Queue(q))
            if raw is not None:
                other.jobs[j] = _decode_any.decode(raw)
            if deps is not None:
                other.dependents[j] = _decode_any.decode(deps)
    _check_dag(read, others, ids, drained, out)
    if drained:
        for name, data in sorted(read.items()):
            if data.outbox:
                out.append(
                    f"[{KIND_NOT_DRAINED}] queue {name!r}: {len(data.outbox)} outbox "
                    f"entries left, first {data.outbox[-1]!r}"
                )
        left, taken = await driver.pipeline(
            [["LLEN", keys.cron_outbox], ["ZCARD", keys.cron_taken]]
        )
        if left or taken:
            out.append(
                f"[{KIND_NOT_DRAINED}] cron: {left} fires in the outbox, {taken} taken "
                "and not recorded"
            )
    entries, scheduled = await driver.pipeline(
        [["HGETALL", keys.cron_entries], ["ZRANGE", keys.cron_next, 0, -1]]
    )
    defs: dict[str, Any] = {}
    for raw_id, raw in _pairs(entries):
        try:
            defs[_s(raw_id)] = _decode_any.decode(raw)
        except msgspec.DecodeError:
            out.append(f"[{KIND_CRON}] cron entry {_s(raw_id)} does not decode")
    for member in scheduled:
        entry_id = _s(member)
        definition = defs.get(entry_id)
        if definition is None:
            out.append(f"[{KIND_CRON}] cron entry {entry_id} has a next tick but no definition")
        elif isinstance(definition, dict) and not definition.get("enabled", True):
            out.append(f"[{KIND_CRON}] cron entry {entry_id} is disabled but has a next tick")
    return out


def kinds(violations: Iterable[str]) -> set[str]:
    """The kind tags of ``violations`` (``{"orphan", "lease"}``)."""
    return {v[1 : v.index("]")] for v in violations if v.startswith("[")}


async def assert_invariants(
    client: gqm.Client, *, queues: Iterable[str] | None = None, drained: bool = False
) -> None:
    """Raise AssertionError listing every violation (at most the first 50)."""
    violations = await find_violations(client, queues=queues, drained=drained)
    if violations:
        shown = "\n  ".join(violations[:_MAX_REPORTED])
        more = len(violations) - _MAX_REPORTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise AssertionError(f"{len(violations)} invariant violation(s):\n  {shown}{tail}")
