"""Schemathesis against the served OpenAPI document, as a viewer and as an admin.

The API is served by a real hypercorn (``running_api``) over a real Redis that holds
data worth reading: ready, scheduled, deferred, processing, completed and dead-letter
jobs on several queues, a cron entry, and a live gqm server (so servers and worker
pools exist). Schemathesis (synchronous, requests-based) runs in a worker thread while
the test's event loop serves the API and the gqm server; it sends real HTTP requests.

For each role (an API key; ``X-API-Key`` wins over the session cookie the document also
declares) and each operation of the document, hypothesis draws requests:

* positive cases, half of them with path parameters that exist (a seeded queue, job,
  cron entry, server or pool), half anything the schema allows;
* negative cases (schema-invalid path, query or body), which must be refused with a
  4xx, never a 5xx.

Every response is checked for: no 5xx (``not_a_server_error``), a documented status
(``status_code_conformance``), the documented content type
(``content_type_conformance``) and body (``response_schema_conformance``); positive
cases must not be refused as bad input (``positive_data_acceptance``), negative ones
must be (``negative_data_rejection``). Viewers get 403 on every admin route, which the
document lists. The admin's actions may retry, cancel, delete and empty the seeded
data: that is fine, the responses are checked whatever the state.

Both async backends run the whole suite (about 40-55 s each); the request counts are
printed (``pytest -s``) and each backend must send at least ``MIN_REQUESTS`` requests.
Two smaller tests go with it: the harness catches an undocumented status (it is not
vacuous), and a regression test for a bug the run found (refusals answered before the
request body arrived broke the keep-alive connection; on trio the response was lost).

Not enforced: ``unsupported_method`` and ``allow_header_conformance``. Job ids may hold
``/``, so ``GET /api/v1/jobs/batch/retry`` is ``GET /api/v1/jobs/{id}`` with the id
``batch/retry`` (a 404, not the 405 those checks expect), and the ``Allow`` of
``/api/v1/jobs/x/cancel`` also lists the methods of ``/api/v1/jobs/{id}``.
"""

from __future__ import annotations

import socket
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

import gqm
from gqm_web._routing import ROUTES, Access

from .helpers import serving
from .webapp import KEYS, running_api
from .webapp import settings as web_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from schemathesis.schemas import APIOperation

pytestmark = pytest.mark.anyio

#: Hypothesis examples per operation, role and mode.
POSITIVE_EXAMPLES = 30
NEGATIVE_EXAMPLES = 12
#: The issue's figure: generated requests per backend (both roles together).
MIN_REQUESTS = 2_000

COMMON_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
CHECKS = {
    GenerationMode.POSITIVE: [*COMMON_CHECKS, positive_data_acceptance],
    GenerationMode.NEGATIVE: [*COMMON_CHECKS, negative_data_rejection],
}

#: A valid request may still be refused for what it is, not for its form: 413 is a
#: documented answer to a (schema-valid) batch of 100 long ids over ``max_body``. An
#: invalid one is refused with a 4xx (schemathesis's default list also takes 5xx).
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "403", "404", "409", "413", "429"]
            },
            "negative_data_rejection": {
                "expected-statuses": ["400", "401", "403", "404", "405", "413", "415", "429"]
            },
        }
    }
)


# -- data worth reading --------------------------------------------------------------------


@dataclass
class Seeds:
    """Path parameter values that exist, by the kind of id a path takes."""

    queues: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)
    servers: list[str] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)

    def for_path(self, path: str) -> list[str]:
        """Existing values of the (single) path parameter of ``path``."""
        kinds = [
            ("/api/v1/queues/", self.queues),
            ("/api/v1/jobs/", self.jobs),
            ("/api/v1/dag/graph/", self.jobs),
            ("/api/v1/cron/", self.entries),
            ("/api/v1/servers/", self.servers),
            ("/api/v1/workers/", self.workers),
        ]
        return next((values for prefix, values in kinds if path.startswith(prefix)), [])


async def ok(job: gqm.Job[Any]) -> Any:
    return {"echo": job.payload}


async def fail(job: gqm.Job[Any]) -> None:
    raise RuntimeError("seeded failure")


YEARLY = "0 0 0 1 1 *"


@dataclass
class Worker:
    """A gqm server that runs ``ok`` and ``fail`` jobs on queue ``work`` and holds
    ``block`` jobs on queue ``slow`` until it stops; ``blocking`` is set once one runs."""

    server: gqm.Server
    blocking: anyio.Event = field(default_factory=anyio.Event)

    async def block(self, job: gqm.Job[Any]) -> None:
        self.blocking.set()
        await anyio.sleep_forever()


def make_worker(make_server: Callable[..., gqm.Server]) -> Worker:
    worker = Worker(make_server(grace_period=0.5))
    worker.server.handle("ok", ok, queue="work")
    worker.server.handle("fail", fail, queue="work", max_retry=0)
    worker.server.handle("block", worker.block, workers=1, queue="slow")
    entry = gqm.CronEntry(id="nightly", cron_expr=YEARLY, job_type="ok", queue="work")
    worker.server.schedule(entry)
    return worker


async def seed(client: gqm.Client, worker: Worker) -> Seeds:
    """Jobs in every state a listing shows, on queues the gqm server does not read
    (``q``, ``dag``) and on those it does (``work``, ``slow``); returns what exists."""
    s = Seeds(queues=["q", "dag", "work", "slow"], entries=["nightly"])
    ready = await client.enqueue_batch(
        [gqm.BatchItem("t", {"n": i}, queue="q", meta={"k": str(i)}) for i in range(5)]
    )
    later = await client.enqueue_in("t", "later", 3600, queue="q")
    slashed = await client.enqueue("t", None, queue="q", job_id="with/slash:1")
    parent = await client.enqueue("step", "A", queue="dag")
    child = await client.enqueue("step", "B", queue="dag", depends_on=[parent.id])
    done = [await client.enqueue("ok", i, queue="work") for i in range(3)]
    dead = [await client.enqueue("fail", i, queue="work") for i in range(2)]
    running = await client.enqueue("block", None, queue="slow")
    s.jobs = [j.id for j in [*ready[:2], later, slashed, parent, child, *done, *dead, running]]
    with anyio.fail_after(10):
        for job in done:
            await client.result(job.id)
        for job in dead:
            with pytest.raises(gqm.JobFailedError):
                await client.result(job.id)
        await worker.blocking.wait()
        await client.cron_trigger("nightly")
        # The server's first heartbeat is written by a task of its own, soon after it
        # started: poll for it (it lists the server and its pools).
        while not (servers := await client.servers()):  # noqa: ASYNC110
            await anyio.sleep(0.02)
    s.servers = [srv.id for srv in servers]
    s.workers = [w.id for w in await client.workers()]
    assert s.workers
    return s


# -- the run --------------------------------------------------------------------------------


@dataclass
class Report:
    """What one role's run sent and got: statuses per operation and mode."""

    role: str
    headers: dict[str, str]
    #: ``{(mode, "METHOD /path"): Counter(status)}``
    answers: dict[tuple[str, str], Counter[int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    http_seconds: float = 0.0

    def count(self, mode: str | None = None) -> int:
        return sum(sum(c.values()) for (m, _o), c in self.answers.items() if mode in (None, m))

    def statuses(self, ops: set[str] | None = None) -> Counter[int]:
        out: Counter[int] = Counter()
        for (_mode, op), c in self.answers.items():
            if ops is None or op in ops:
                out.update(c)
        return out

    def summary(self, backend: str) -> str:
        return (
            f"schemathesis [{backend}] {self.role}: {self.count()} requests over "
            f"{len({op for _m, op in self.answers})} operations ({self.count('positive')} "
            f"positive, {self.count('negative')} negative), statuses "
            f"{dict(sorted(self.statuses().items()))}, {len(self.failures)} failures, "
            f"{self.seconds:.1f} s ({self.http_seconds:.1f} s waiting for HTTP)"
        )


def strategy(op: APIOperation, mode: GenerationMode, seeds: Seeds) -> Any:
    """Cases of ``op``; positive ones take an existing path parameter half the time."""
    anything = op.as_strategy(generation_mode=mode)
    names = [p.name for p in op.path_parameters]
    existing = seeds.for_path(op.path)
    if mode is not GenerationMode.POSITIVE or len(names) != 1 or not existing:
        return anything
    known = [
        op.as_strategy(generation_mode=mode, path_parameters={names[0]: value})
        for value in existing
    ]
    return st.one_of(st.one_of(known), anything)


def fuzz_operation(
    op: APIOperation,
    mode: GenerationMode,
    seeds: Seeds,
    send: Callable[[schemathesis.Case], Any],
    report: Report,
    examples: int,
) -> None:
    """Hypothesis-drawn cases of one operation in one mode, each sent and checked."""
    answers = report.answers.setdefault((mode.value, op.label), Counter())

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
    )
    @given(case=strategy(op, mode, seeds))
    def run(case: schemathesis.Case) -> None:
        t0 = time.perf_counter()
        response = send(case)
        report.http_seconds += time.perf_counter() - t0
        answers[response.status_code] += 1
        case.validate_response(response, checks=CHECKS[mode], headers=report.headers)

    try:
        run()
    # Every operation runs; the failures are listed at the end. (Schemathesis raises
    # its check failures as a FailureGroup, a BaseExceptionGroup.)
    except (Exception, BaseExceptionGroup) as err:
        detail = "".join(traceback.format_exception(err))
        report.failures.append(f"--- {report.role} {mode.value} {op.label}:\n{detail}")


def fuzz(
    doc: dict[str, Any],
    base_url: str,
    role: str,
    seeds: Seeds,
    examples: tuple[int, int] = (POSITIVE_EXAMPLES, NEGATIVE_EXAMPLES),
) -> Report:
    """Run every operation of ``doc`` as ``role`` (blocking: call it in a thread)."""
    schema = schemathesis.openapi.from_dict(doc, config=CONFIG)
    report = Report(role, headers={"X-API-Key": KEYS[role]})
    started = time.monotonic()
    with requests.Session() as session:

        def send(case: schemathesis.Case) -> Any:
            return case.call(base_url=base_url, session=session, headers=report.headers)

        for result in schema.get_all_operations():
            op = result.ok()
            fuzz_operation(op, GenerationMode.POSITIVE, seeds, send, report, examples[0])
            if examples[1] and (len(op.path_parameters) or len(op.query) or op.body):
                # Only inputs can be wrong: without any there are no negative cases.
                fuzz_operation(op, GenerationMode.NEGATIVE, seeds, send, report, examples[1])
    report.seconds = time.monotonic() - started
    return report


#: The admin routes, as schemathesis labels operations.
ADMIN_OPERATIONS = {f"{r.method} {r.path}" for r in ROUTES if r.access is Access.ADMIN}


@pytest.mark.timeout(300)
async def test_schemathesis_viewer_and_admin(
    client: gqm.Client, make_server: Callable[..., gqm.Server], anyio_backend: str
) -> None:
    """The issue's run: as viewer and as admin, every generated request gets a
    documented status, content type and body, and never a 5xx."""
    started = time.monotonic()
    worker = make_worker(make_server)
    async with serving(worker.server), running_api(client, web_settings()) as api:
        seeds = await seed(client, worker)
        r = await api.http.get("/api/v1/openapi.json", headers={"X-API-Key": KEYS["viewer"]})
        assert r.status_code == 200
        doc = r.json()
        viewer = await anyio.to_thread.run_sync(fuzz, doc, api.base_url, "viewer", seeds)
        admin = await anyio.to_thread.run_sync(fuzz, doc, api.base_url, "admin", seeds)
    total = viewer.count() + admin.count()
    print(f"\n{viewer.summary(anyio_backend)}\n{admin.summary(anyio_backend)}")
    print(
        f"schemathesis [{anyio_backend}]: {total} requests, "
        f"{len(viewer.failures) + len(admin.failures)} failures, "
        f"{time.monotonic() - started:.1f} s"
    )
    failures = viewer.failures + admin.failures
    assert not failures, "\n\n".join(failures)
    assert total >= MIN_REQUESTS
    assert {op for _mode, op in viewer.answers} == {op for _mode, op in admin.answers}
    assert len({op for _mode, op in admin.answers}) == len(ROUTES)
    for report in (viewer, admin):
        assert report.statuses()[200] > 0
        assert not [s for s in report.statuses() if s >= 500]
    # The viewer never got through to an admin route, and did meet its 403.
    on_admin_routes = viewer.statuses(ADMIN_OPERATIONS)
    assert on_admin_routes[403] > 0
    assert not [s for s in on_admin_routes if s < 400], on_admin_routes
    # The admin reached the actions (not only 404s for ids that do not exist).
    assert [s for s in admin.statuses(ADMIN_OPERATIONS) if 200 <= s < 300]


async def test_the_run_catches_an_undocumented_status(client: gqm.Client) -> None:
    """The harness is not vacuous: a document that leaves out the viewer's 403 on an
    admin route fails the run, and the status is named."""
    async with running_api(client, web_settings()) as api:
        r = await api.http.get("/api/v1/openapi.json", headers={"X-API-Key": KEYS["admin"]})
        doc = r.json()
        path = "/api/v1/queues/{name}/pause"
        del doc["paths"][path]["post"]["responses"]["403"]
        doc["paths"] = {path: doc["paths"][path]}
        report = await anyio.to_thread.run_sync(
            fuzz, doc, api.base_url, "viewer", Seeds(queues=["q"]), (5, 0)
        )
    assert report.count() >= 1
    assert report.failures
    assert "Undocumented status code" in report.failures[0]
    assert "Received: 403" in report.failures[0]


# -- a bug schemathesis found -----------------------------------------------------------------


def two_requests_on_one_connection(base_url: str, key: str) -> list[int]:
    """Two viewer requests to an admin route on one keep-alive connection, each body
    sent a moment after its headers (so the 403 is decided before the body is in)."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    body = b'{"job_ids": ["x"]}'
    head = (
        f"POST /api/v1/jobs/batch/retry HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"X-API-Key: {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    statuses = []
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        reader = sock.makefile("rb")
        for _ in range(2):
            sock.sendall(head)
            time.sleep(0.2)
            sock.sendall(body)
            status_line = reader.readline()
            if not status_line:
                break  # the server closed the connection
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            reader.read(length)
            statuses.append(int(status_line.split()[1]))
    return statuses


async def test_early_refusals_read_the_body_and_keep_the_connection(
    client: gqm.Client,
) -> None:
    """A refusal decided before the request body arrived (here a viewer's 403 on an admin
    route) still receives the body: the connection stays usable. Before, hypercorn
    dropped the connection, and on trio the response was sometimes never delivered
    (a client read timeout; schemathesis found it on the batch routes)."""
    async with running_api(client, web_settings()) as api:
        statuses = await anyio.to_thread.run_sync(
            two_requests_on_one_connection, api.base_url, KEYS["viewer"]
        )
    assert statuses == [403, 403]
