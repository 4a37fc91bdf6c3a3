"""Job dependencies against a real Redis: release, cascade cancel, allow_failure, checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

import gqm

from .helpers import raw, serving

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio


async def test_original_example_graph(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """A fails; B is canceled and D with it (cascade); C (allow_failure) runs; E runs after C."""
    server = make_server()
    ran: list[str] = []

    async def step(job: gqm.Job[Any]) -> str:
        ran.append(job.payload)
        if job.payload == "A":
            raise gqm.SkipRetry("A fails")
        return job.payload

    server.handle("step", step)
    a = await client.enqueue("step", "A", queue="first")
    b = await client.enqueue("step", "B", depends_on=[a.id])
    c = await client.enqueue("step", "C", depends_on=[a.id], allow_failure=True, queue="other")
    d = await client.enqueue("step", "D", depends_on=[b.id])
    e = await client.enqueue("step", "E", depends_on=[c.id])
    assert {j.status for j in (b, c, d, e)} == {gqm.JobStatus.DEFERRED}
    server.pool(gqm.PoolConfig(name="all", queues=["first", "default", "other"]))
    async with serving(server):
        assert await client.result(e.id, timeout=20) == "E"
        for job in (b, d):
            with pytest.raises(gqm.JobFailedError) as info:
                await client.result(job.id, timeout=20)
            assert info.value.status == "canceled"
    assert ran.index("C") < ran.index("E")
    assert sorted(ran) == ["A", "C", "E"]
    assert (await client.get_job(a.id)).status is gqm.JobStatus.DEAD_LETTER
    assert (await client.get_job(d.id)).error == f"dependency {b.id} ended as canceled"
    assert (await client.get_job(b.id)).error == f"dependency {a.id} ended as dead_letter"
    for queue in ("first", "default", "other"):
        q = client.keys.queue(queue)
        assert await raw(client, "LLEN", q.outbox) == 0
        assert await raw(client, "ZCARD", q.deferred) == 0


async def test_child_waits_for_every_parent_across_queues(
    client: gqm.Client, make_server: Callable[..., gqm.Server]
) -> None:
    """A child is released only when all its parents, on other queues, have completed."""
    server = make_server()
    server.pool(gqm.PoolConfig(name="p", queues=["x", "y", "z"]))
    order: list[str] = []

    async def note(job: gqm.Job[Any]) -> None:
        order.append(job.payload)

    server.handle("note", note)
    p1 = await client.enqueue("note", "p1", queue="x")
    p2 = await client.enqueue("note", "p2", queue="y")
    child = await client.enqueue("note", "child", queue="z", depends_on=[p1.id, p2.id, p1.id])
    stored = await client.get_job(child.id)
    assert stored.depends_on == (p1.id, p2.id)
    assert stored.pending == tuple(sorted([p1.id, p2.id]))
    async with serving(server):
        await client.result(child.id, timeout=20)
    assert order[-1] == "child"


async def test_finished_parents_resolve_at_once(client: gqm.Client) -> None:
    """A completed parent resolves the edge at enqueue time; a dead one cancels the child
    unless allow_failure, in which case the child is ready at once."""
    done = await client.enqueue("t", None)
    dead = await client.enqueue("t", None)
    q = client.keys.queue("default")
    # Finish the parents as a worker would.
    from gqm import _scripts as scripts

    from .helpers import run_script

    reply = await run_script(client, "claim", scripts.claim_keys(q, "tok"), [10, 30000, "w", "tok"])
    tokens = {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 4)}
    args: list[object] = [-1, -1, client.keys.done_channel, q.wake]
    args += [done.id, tokens[done.id], "c", b"", 0, 0]
    args += [dead.id, tokens[dead.id], "d", "boom", 0, 0]
    await run_script(client, "finish", scripts.finish_keys(q), args)

    ok = await client.enqueue("t", "ok", depends_on=[done.id])
    assert (await client.get_job(ok.id)).status is gqm.JobStatus.READY
    doomed = await client.enqueue("t", "doomed", depends_on=[done.id, dead.id])
    canceled = await client.get_job(doomed.id)
    assert canceled.status is gqm.JobStatus.CANCELED
    assert canceled.error == f"dependency {dead.id} ended as dead_letter"
    tolerant = await client.enqueue("t", "tolerant", depends_on=[dead.id], allow_failure=True)
    assert (await client.get_job(tolerant.id)).status is gqm.JobStatus.READY


async def test_unknown_parent_and_cycles_are_refused(client: gqm.Client) -> None:
    """An unknown parent id is an error; nothing is enqueued."""
    with pytest.raises(gqm.DependencyError, match="unknown parent job"):
        await client.enqueue("t", None, depends_on=["nope"])
    with pytest.raises(gqm.DependencyError, match="unknown parent job"):
        await client.enqueue("t", None, job_id="self", depends_on=["self"])
    assert await raw(client, "EXISTS", client.keys.queue("default").jobs) == 0
    with pytest.raises(gqm.ConfigurationError, match="allow_failure"):
        await client.enqueue("t", None, allow_failure=True)


async def test_cycle_check_names_the_cycle() -> None:
    """find_cycle returns the closing path, and refuses chains deeper than the limit."""
    from gqm._dag import find_cycle

    graph = {"b": ["a"], "c": ["b"], "a": []}

    async def parents_of(node: str) -> list[str]:
        return graph.get(node, [])

    # Making "a" depend on "c" closes a -> c -> b -> a.
    assert await find_cycle("a", ["c"], parents_of) == ["a", "c", "b", "a"]
    assert await find_cycle("d", ["c"], parents_of) is None
    chain = {f"n{i}": [f"n{i + 1}"] for i in range(150)}

    async def deep(node: str) -> list[str]:
        return chain.get(node, [])

    with pytest.raises(gqm.DependencyError, match="deeper than 100"):
        await find_cycle("new", ["n0"], deep)


async def test_dag_reads(client: gqm.Client) -> None:
    """Roots, deferred jobs with their pending parents, and the bounded graph around a job."""
    a = await client.enqueue("t", "A")
    b = await client.enqueue("t", "B", depends_on=[a.id], queue="other")
    c = await client.enqueue("t", "C", depends_on=[a.id, b.id])
    roots = await client.dag_roots()
    assert [r.id for r in roots] == [a.id]
    deferred = await client.dag_deferred()
    assert {j.id: j.pending for j in deferred} == {
        c.id: tuple(sorted([a.id, b.id])),
        b.id: (a.id,),
    }
    assert [j.id for j in await client.dag_deferred("other")] == [b.id]
    assert len(await client.dag_deferred(limit=1)) == 1
    assert len(await client.dag_deferred(offset=1)) == 1
    graph = await client.dag_graph(b.id, depth=1)
    assert {n.id for n in graph.nodes} == {a.id, b.id, c.id}
    assert set(graph.edges) == {(a.id, b.id), (b.id, c.id), (a.id, c.id)}
    small = await client.dag_graph(a.id, max_nodes=2)
    assert len(small.nodes) == 2
    assert small.truncated
    single = await client.dag_graph(a.id, depth=0)
    assert [n.id for n in single.nodes] == [a.id]
    assert single.truncated
