"""Property tests of dependencies: the cycle check against a reference, and resolution
on random DAGs with random failures against a real Redis (driven through the scripts,
the way workers drive them)."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gqm
from gqm import _dag
from gqm import _scripts as scripts
from gqm._embedded import EmbeddedRedis

pytestmark = pytest.mark.anyio


@st.composite
def graphs(draw: st.DrawFn) -> dict[str, list[str]]:
    """A random directed graph (cycles allowed): node -> its parents."""
    n = draw(st.integers(1, 12))
    nodes = [f"n{i}" for i in range(n)]
    return {node: draw(st.lists(st.sampled_from(nodes), max_size=3, unique=True)) for node in nodes}


def _reaches(graph: dict[str, list[str]], start: str, target: str) -> bool:
    seen: set[str] = set()
    todo = [start]
    while todo:
        node = todo.pop()
        if node == target:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, []))
    return False


@given(graph=graphs(), data=st.data())
@settings(max_examples=300, deadline=None)
async def test_find_cycle_matches_reachability(
    graph: dict[str, list[str]], data: st.DataObject
) -> None:
    """Adding edges new -> parents closes a cycle exactly when some parent reaches new;
    a reported cycle is a real path of the graph."""
    nodes = sorted(graph)
    new = data.draw(st.sampled_from([*nodes, "fresh"]))
    parents = data.draw(st.lists(st.sampled_from(nodes), min_size=1, max_size=3, unique=True))

    async def parents_of(node: str) -> list[str]:
        return graph.get(node, [])

    cycle = await _dag.find_cycle(new, parents, parents_of, max_depth=1000)
    expected = any(_reaches(graph, p, new) for p in parents)
    assert (cycle is not None) == expected
    if cycle is not None:
        assert cycle[0] == cycle[-1] == new
        assert cycle[1] in parents
        for child, parent in itertools.pairwise(cycle[1:]):
            assert parent in graph[child]


@st.composite
def dag_plans(draw: st.DrawFn) -> list[tuple[list[int], bool, bool, str]]:
    """Jobs in topological order: (parent indexes, allow_failure, fails, queue)."""
    n = draw(st.integers(1, 10))
    plan = []
    for i in range(n):
        parents = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        plan.append(
            (
                parents,
                draw(st.booleans()) if parents else False,
                draw(st.booleans()),
                draw(st.sampled_from(["qa", "qb"])),
            )
        )
    return plan


def _model(plan: list[tuple[list[int], bool, bool, str]]) -> list[str]:
    """Final status of each job: canceled if a parent did not complete (unless
    allow_failure), else dead_letter or completed as planned."""
    out: list[str] = []
    for parents, allow_failure, fails, _queue in plan:
        if not allow_failure and any(out[p] != "completed" for p in parents):
            out.append("canceled")
        else:
            out.append("dead_letter" if fails else "completed")
    return out


@pytest.fixture(scope="module")
def dag_redis() -> Any:
    with EmbeddedRedis() as url:
        yield url


@given(plan=dag_plans())
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
async def test_resolution_matches_model(
    plan: list[tuple[list[int], bool, bool, str]], dag_redis: str
) -> None:
    """Every job of a random DAG ends in the state the model predicts, with nothing left
    deferred, pending or in an outbox."""
    prefix = f"p{uuid.uuid4().hex[:8]}"
    async with gqm.Client(dag_redis, prefix=prefix) as client:
        driver = await client._conn.get()
        jobs: list[gqm.Job[Any]] = []
        for i, (parents, allow_failure, _fails, queue) in enumerate(plan):
            jobs.append(
                await client.enqueue(
                    "t",
                    i,
                    queue=queue,
                    depends_on=[jobs[p].id for p in parents] or None,
                    allow_failure=allow_failure,
                )
            )
        index = {job.id: i for i, job in enumerate(jobs)}
        claim, finish = scripts.script("claim"), scripts.script("finish")
        while True:
            progressed = False
            for queue in ("qa", "qb"):
                q = client.keys.queue(queue)
                attempt = uuid.uuid4().hex
                reply = await scripts.run(
                    driver, claim, scripts.claim_keys(q, attempt), [100, 30_000, "w", attempt]
                )
                if not reply:
                    continue
                progressed = True
                args: list[Any] = [-1, -1, client.keys.done_channel, q.wake]
                for k in range(0, len(reply), 4):
                    job_id, token = reply[k].decode(), reply[k + 1].decode()
                    fails = plan[index[job_id]][2]
                    args += [job_id, token, "d" if fails else "c", "planned", 0, 0]
                await scripts.run(driver, finish, scripts.finish_keys(q), args)
            applied = await _dag.drain_outboxes(
                driver, client.keys, ["qa", "qb"], canceled_ttl_ms=-1
            )
            if not progressed and not applied:
                break
        final = [(await client.get_job(job.id)).status.value for job in jobs]
        assert final == _model(plan)
        for queue in ("qa", "qb"):
            q = client.keys.queue(queue)
            assert await driver.execute("LLEN", q.outbox) == 0
            assert await driver.execute("ZCARD", q.deferred) == 0
