"""Helpers shared by the Redis-backed tests."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

import gqm
from gqm import _scripts as scripts

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import pytest


@asynccontextmanager
async def serving(server: gqm.Server) -> AsyncIterator[gqm.Server]:
    """Run ``server`` in the background for the body of the ``async with``, then shut
    it down gracefully and wait until it has stopped."""
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        try:
            yield server
        finally:
            server.shutdown()


async def raw(client: gqm.Client, *args: Any) -> Any:
    """Run one raw Redis command through the client's driver."""
    return await (await client._conn.get()).execute(*args)


async def record(client: gqm.Client, queue: str, job_id: str) -> gqm._job.JobRecord:
    """The stored record of a job (status, counters, token)."""
    data = await raw(client, "HGET", client.keys.queue(queue).jobs, job_id)
    assert data is not None, f"job {job_id} has no record"
    return gqm._job.record_decoder.decode(data)


async def run_script(client: gqm.Client, name: str, keys: list[str], args: list[Any]) -> Any:
    return await scripts.run(await client._conn.get(), scripts.script(name), keys, args)


class Gate:
    """Lets a test wait until N handler calls have started, and release them."""

    def __init__(self, expected: int = 1) -> None:
        self.expected = expected
        self.started: list[str] = []
        self.all_started = anyio.Event()
        self.release = anyio.Event()

    async def enter(self, job_id: str) -> None:
        self.started.append(job_id)
        if len(self.started) >= self.expected:
            self.all_started.set()
        await self.release.wait()


class _SignalsPipelines:
    """A driver stand-in that sets ``done`` after each pipeline it forwards."""

    def __init__(self, driver: Any, done: anyio.Event) -> None:
        self._driver = driver
        self._done = done

    async def pipeline(self, commands: Any) -> Any:
        try:
            return await self._driver.pipeline(commands)
        finally:
            self._done.set()


@asynccontextmanager
async def serving_after_heartbeat(
    server: gqm.Server, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[gqm.Server]:
    """Serve ``server`` (as ``serving``) and enter the body once its first heartbeat has
    been written, so that it shows among the live servers."""
    beat = anyio.Event()
    heartbeat = server._heartbeat
    monkeypatch.setattr(
        server, "_heartbeat", lambda driver: heartbeat(_SignalsPipelines(driver, beat))
    )
    async with serving(server):
        await beat.wait()
        yield server
