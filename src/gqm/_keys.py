"""The whole Redis key layout, in one place.

Every key of a queue carries the queue's hash tag (``gqm:{emails}:ready``), so that each
script touches a single cluster slot. Per queue:

========================  ======  ==========================================================
``{q}:jobs``              hash    job id -> job record (JSON, without payload and result)
``{q}:payloads``          hash    job id -> encoded payload
``{q}:results``           hash    job id -> encoded handler result
``{q}:ready``             list    ids ready to run (LPUSH at the back, RPOP from the head)
``{q}:leases``            zset    ids being processed, scored by lease expiry (Redis ms)
``{q}:scheduled``         zset    delayed jobs and retries, scored by due time
``{q}:completed``         zset    completed ids, scored by finish time (retention sweep)
``{q}:dead``              zset    dead-letter ids, scored by finish time
``{q}:canceled``          zset    canceled ids, scored by finish time
``{q}:deferred``          zset    ids waiting for their parents (DAG), by enqueue time
``{q}:dependents``        hash    parent id -> JSON list of ``[child id, child queue]``
``{q}:outbox``            list    parent outcomes to apply to children (JSON entries),
                                  drained by every server's resolver
``{q}:claim:<attempt>``   string  what one claim attempt took, kept for one lease
``{q}:meta``              hash    ``paused`` flag and counters (``processed``, ``failed``,
                                  and per day ``processed:<day>``)
========================  ======  ==========================================================

Global keys: ``queues`` (set of queue names), ``ids`` (hash job id -> queue, for looking
a job up by id alone), ``servers`` (zset of server ids by last heartbeat) and
``server:<id>`` (the server's heartbeat record, with a TTL). Cron: ``cron:entries``
(hash id -> definition), ``cron:next`` (zset id -> next tick), ``cron:outbox`` (fires
to enqueue), ``cron:taken`` (fires being enqueued), ``cron:fired`` (hash id -> last
tick fired), ``cron:history:<id>`` (zset).

Channels: ``abort`` (abort a running job; the message is its id), ``cron:wake``
(cron entries changed), ``{q}:wake`` (work became ready or the earliest due time changed) and
``done`` (a job someone waits on reached a terminal state; the message is its id).
"""

from __future__ import annotations

import re
from functools import cached_property

from .errors import ConfigurationError

QUEUE_NAME_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def check_queue_name(name: str) -> str:
    """Return ``name`` if it is a valid queue name, else raise ConfigurationError."""
    if not isinstance(name, str) or not QUEUE_NAME_RE.fullmatch(name):
        raise ConfigurationError(
            f"invalid queue name {name!r}: use 1-128 characters from A-Z a-z 0-9 . _ : -"
        )
    return name


class QueueKeys:
    """The keys and channels of one queue."""

    __slots__ = (
        "_claim_base",
        "canceled",
        "completed",
        "dead",
        "deferred",
        "dependents",
        "jobs",
        "leases",
        "meta",
        "name",
        "outbox",
        "payloads",
        "ready",
        "results",
        "scheduled",
        "wake",
    )

    def __init__(self, prefix: str, name: str) -> None:
        base = f"{prefix}:{{{name}}}:"
        self.name = name
        self.jobs = base + "jobs"
        self.payloads = base + "payloads"
        self.results = base + "results"
        self.ready = base + "ready"
        self.leases = base + "leases"
        self.scheduled = base + "scheduled"
        self.completed = base + "completed"
        self.dead = base + "dead"
        self.canceled = base + "canceled"
        self.deferred = base + "deferred"
        self.dependents = base + "dependents"
        self.outbox = base + "outbox"
        self.meta = base + "meta"
        self._claim_base = base + "claim:"
        self.wake = base + "wake"

    def claim_memo(self, attempt: str) -> str:
        """The key remembering what one claim attempt took (replay safety)."""
        return self._claim_base + attempt


class Keys:
    """The key layout under one prefix (default ``gqm``)."""

    def __init__(self, prefix: str = "gqm") -> None:
        if not prefix or any(c in prefix for c in "{} \n"):
            raise ConfigurationError(f"invalid key prefix {prefix!r}")
        self.prefix = prefix
        self._queues: dict[str, QueueKeys] = {}

    def queue(self, name: str) -> QueueKeys:
        """The keys of queue ``name`` (validated and cached)."""
        keys = self._queues.get(name)
        if keys is None:
            keys = self._queues[name] = QueueKeys(self.prefix, check_queue_name(name))
        return keys

    @cached_property
    def queues(self) -> str:
        return f"{self.prefix}:queues"

    @cached_property
    def ids(self) -> str:
        return f"{self.prefix}:ids"

    @cached_property
    def servers(self) -> str:
        return f"{self.prefix}:servers"

    def server(self, server_id: str) -> str:
        return f"{self.prefix}:server:{server_id}"

    @cached_property
    def abort_channel(self) -> str:
        """Where abort requests for running jobs are published (the message is the id)."""
        return f"{self.prefix}:abort"

    @cached_property
    def cron_entries(self) -> str:
        return f"{self.prefix}:cron:entries"

    @cached_property
    def cron_next(self) -> str:
        return f"{self.prefix}:cron:next"

    @cached_property
    def cron_outbox(self) -> str:
        return f"{self.prefix}:cron:outbox"

    @cached_property
    def cron_taken(self) -> str:
        return f"{self.prefix}:cron:taken"

    @cached_property
    def cron_fired(self) -> str:
        return f"{self.prefix}:cron:fired"

    @cached_property
    def cron_wake(self) -> str:
        """Published when cron entries change, so schedulers look again at once."""
        return f"{self.prefix}:cron:wake"

    def cron_history(self, entry_id: str) -> str:
        return f"{self.prefix}:cron:history:{entry_id}"

    @cached_property
    def done_channel(self) -> str:
        """Where finishing scripts publish the id of a job that someone waits on."""
        return f"{self.prefix}:done"
