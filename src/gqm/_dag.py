"""Job dependencies (DAG): cycle checks at enqueue, and the resolver that applies a
parent's outcome to its children.

A child is enqueued ``deferred`` with the set of parents it still waits for. Each parent
records the edge in its own queue's slot (``link.lua``). When a parent reaches a
terminal state, its finishing script writes one entry per child into the parent queue's
*outbox*; the resolver on every server drains outboxes and applies each entry with
``resolve.lua`` in the child's slot: release the child once no parent is pending, or
cancel it (and, through the child's own outbox, its descendants) when a parent failed
and the child did not ``allow_failure``. Both scripts are idempotent, so an entry applied
twice (two servers, or a lost reply) changes nothing the second time. Entries are
removed from the outbox only after they were applied.

Why concurrent enqueues cannot create a cycle: a parent must exist when its child is
enqueued, and an id that names a live job cannot be enqueued again. A cycle would need a
job to depend on a job enqueued after it, which is therefore impossible; the DFS below
(depth limit 100) is the check the original made, kept as a guard with a clear message.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from . import _scripts as scripts
from ._job import record_decoder
from .errors import DependencyError, RedisError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence

    from ._keys import Keys
    from ._redis import Arg, Driver
    from ._wake import Signal

log = logging.getLogger("gqm.dag")

#: Deepest ancestor chain the cycle check follows (as the original).
MAX_DEPTH = 100
_OUTBOX_BATCH = 200


class _Entry(msgspec.Struct):
    p: str  # parent id
    c: str  # child id
    q: str  # child's queue
    s: str = ""  # parent's terminal status (an outcome entry)
    l: int = 0  # noqa: E741 - 1: a link request (record the edge at the parent)
    pq: str = ""  # parent's queue (link requests)


_entry_decoder = msgspec.json.Decoder(_Entry)


async def find_cycle(
    new_id: str,
    parents: Iterable[str],
    parents_of: Callable[[str], Awaitable[Sequence[str]]],
    *,
    max_depth: int = MAX_DEPTH,
) -> list[str] | None:
    """Return a cycle that making ``new_id`` depend on ``parents`` would close, as the
    list of ids ``[new_id, parent, ..., new_id]``, or ``None``.

    Follows ancestors depth-first through ``parents_of``; raises DependencyError when a
    chain is deeper than ``max_depth``.
    """
    seen: set[str] = set()
    # Each stack item: (node, path from new_id to node).
    stack: list[tuple[str, list[str]]] = [(p, [new_id, p]) for p in parents]
    while stack:
        node, path = stack.pop()
        if node == new_id:
            return path
        if node in seen:
            continue
        seen.add(node)
        if len(path) - 1 > max_depth:
            raise DependencyError(
                f"dependency chain deeper than {max_depth} jobs: {' -> '.join(path[:5])} ..."
            )
        for parent in await parents_of(node):
            stack.append((parent, [*path, parent]))
    return None


class DagNode(msgspec.Struct):
    """A job in a dependency graph read."""

    id: str
    type: str
    queue: str
    status: str
    allow_failure: bool = False


class DagGraph(msgspec.Struct):
    """The jobs around one job: ``edges`` are ``(parent, child)`` pairs. ``truncated``
    says the depth or node limit cut the walk short."""

    nodes: list[DagNode]
    edges: list[tuple[str, str]]
    truncated: bool = False


async def read_graph(
    driver: Driver, keys: Keys, job_id: str, *, depth: int, max_nodes: int
) -> DagGraph:
    """Walk parents (``depends_on``) and children (``dependents``) breadth-first from
    ``job_id``, at most ``depth`` steps and ``max_nodes`` jobs."""
    nodes: dict[str, DagNode] = {}
    edges: set[tuple[str, str]] = set()
    frontier = [job_id]
    truncated = False
    for _step in range(depth + 1):
        todo = [j for j in frontier if j not in nodes]
        if not todo:
            break
        if len(nodes) + len(todo) > max_nodes:
            todo = todo[: max_nodes - len(nodes)]
            truncated = True
        queues = await driver.pipeline([["HGET", keys.ids, j] for j in todo])
        found = [(j, q.decode()) for j, q in zip(todo, queues, strict=True) if q is not None]
        replies = await driver.pipeline(
            [
                cmd
                for j, q in found
                for cmd in (["HGET", keys.queue(q).jobs, j], ["HGET", keys.queue(q).dependents, j])
            ]
        )
        frontier = []
        for n, (j, _q) in enumerate(found):
            raw, children = replies[2 * n], replies[2 * n + 1]
            if raw is None:
                continue
            rec = record_decoder.decode(raw)
            nodes[j] = DagNode(rec.id, rec.type, rec.queue, rec.status, rec.allow_failure)
            for parent in rec.depends_on or ():
                edges.add((parent, j))
                frontier.append(parent)
            for child, _child_queue in msgspec.json.decode(children) if children else ():
                edges.add((j, child))
                frontier.append(child)
        if truncated:
            break
    else:
        truncated = any(j not in nodes for j in frontier)
    kept = [e for e in sorted(edges) if e[0] in nodes and e[1] in nodes]
    return DagGraph(nodes=list(nodes.values()), edges=kept, truncated=truncated)


async def drain_outboxes(
    driver: Driver, keys: Keys, queues: Iterable[str], *, canceled_ttl_ms: int
) -> int:
    """Apply every outbox entry of ``queues`` (and of the queues a cancellation cascades
    into). Returns the number of entries applied.

    Two kinds of entries: link requests, written when a dependent job is enqueued
    (record the edge at the parent; a parent already finished resolves the edge at
    once), and outcomes, written when a parent finished (resolve the edge at the child).
    """
    todo = set(queues)
    applied = 0
    link, resolve = scripts.script("link"), scripts.script("resolve")
    while todo:
        names = sorted(todo)
        todo.clear()
        batches = await driver.pipeline(
            [["LRANGE", keys.queue(n).outbox, 0, _OUTBOX_BATCH - 1] for n in names]
        )
        sources: list[tuple[str, bytes, _Entry]] = []
        for name, raws in zip(names, batches, strict=True):
            if len(raws) >= _OUTBOX_BATCH:
                todo.add(name)
            sources += [(name, raw, _entry_decoder.decode(raw)) for raw in raws]
        if not sources:
            break
        # Link requests first: those whose parent already finished become outcomes.
        links = [e for _, _, e in sources if e.l]
        if links:
            statuses = await scripts.run_many(
                driver,
                [(link, scripts.link_keys(keys.queue(e.pq)), [e.p, e.c, e.q]) for e in links],
            )
            for e, status in zip(links, statuses, strict=True):
                e.s = "" if status == b"linked" else status.decode()
        outcomes = [e for _, _, e in sources if e.s]
        if outcomes:
            calls: list[scripts.ScriptCall] = []
            for e in outcomes:
                child = keys.queue(e.q)
                args: list[Arg] = [e.c, e.p, e.s, canceled_ttl_ms, child.wake, keys.done_channel]
                calls.append((resolve, scripts.resolve_keys(child), args))
            results = await scripts.run_many(driver, calls)
            for e, result in zip(outcomes, results, strict=True):
                if result == 2:
                    todo.add(e.q)  # the cancellation cascades through that outbox
        await driver.pipeline(
            [["LREM", keys.queue(name).outbox, 1, raw] for name, raw, _ in sources]
        )
        applied += len(sources)
    return applied


async def resolve_forever(
    driver: Driver, keys: Keys, signal: Signal, *, poll_interval: float, canceled_ttl_ms: int
) -> None:
    """Drain the outboxes of every known queue when Redis says a parent finished (and
    every ``poll_interval`` as a safety net)."""
    while True:
        event = signal.current()
        try:
            names: list[Any] = await driver.execute("SMEMBERS", keys.queues)
            await drain_outboxes(
                driver, keys, [n.decode() for n in names], canceled_ttl_ms=canceled_ttl_ms
            )
        except RedisError as err:
            log.warning("resolving dependencies failed (%s); retrying", err)
        with anyio.move_on_after(poll_interval):
            await event.wait()
