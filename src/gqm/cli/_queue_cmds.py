"""Queue commands: queues, jobs, job, enqueue, retry, pause, resume and purge.

Each runs one :class:`gqm.Client` call (or a few) against Redis and prints a table, or
one JSON document with ``--json``. Where Redis is: ``--redis URL``, else the redis
section of ``--config FILE``, else ``$GQM_REDIS_URL``, else redis://127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import msgspec

import gqm

from ._output import FAILED, OK, USAGE, CliError, cell, confirm, details, print_json, table

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    Command = Callable[[gqm.Client, argparse.Namespace], Awaitable[int]]

DEFAULT_REDIS = "redis://127.0.0.1:6379"
_CLIENT_PARAMS = frozenset(inspect.signature(gqm.Client).parameters)


def connection_options() -> argparse.ArgumentParser:
    """The options every command that talks to Redis takes (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    group = p.add_argument_group("connection")
    group.add_argument(
        "--redis",
        metavar="URL",
        help="Redis URL (default: from --config, else $GQM_REDIS_URL, else " + DEFAULT_REDIS + ")",
    )
    group.add_argument("--prefix", help="key prefix (default: from --config, else gqm)")
    group.add_argument("-c", "--config", metavar="FILE", help="take the Redis settings from FILE")
    return p


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parents = [connection_options(), output]

    def add(name: str, command: Command, summary: str) -> argparse.ArgumentParser:
        p = commands.add_parser(name, parents=parents, help=summary, description=summary + ".")
        p.set_defaults(func=lambda args: run(args, command))
        return p

    add("queues", cmd_queues, "list queues with their sizes per state")

    p = add("jobs", cmd_jobs, "list a queue's jobs in one state")
    p.add_argument("queue")
    p.add_argument(
        "-s",
        "--status",
        default="ready",
        help="ready (default), scheduled, retry, processing, deferred, completed, "
        "dead_letter, canceled or stopped",
    )
    p.add_argument("--limit", type=int, default=20, help="default: %(default)s")
    p.add_argument("--offset", type=int, default=0, help="skip this many (default: 0)")

    p = add("job", cmd_job, "show one job, with its payload and result")
    p.add_argument("id")

    p = add("enqueue", cmd_enqueue, "enqueue a job")
    p.add_argument("type", help="the job type")
    p.add_argument("-p", "--payload", default="null", help="JSON, or - to read it from stdin")
    p.add_argument("-q", "--queue", help="default: default")
    p.add_argument("--job-id", help="a custom job id")
    p.add_argument("--unique", action="store_true", help="make --job-id an idempotency key")
    p.add_argument("--max-retry", type=int)
    p.add_argument("--timeout", type=float, metavar="SECONDS")
    p.add_argument("--delay", type=float, metavar="SECONDS", help="run it this much later")
    p.add_argument("--at-front", action="store_true", help="put it at the head of the queue")
    p.add_argument(
        "--depends-on", action="append", default=[], metavar="ID", help="a parent job (repeatable)"
    )
    p.add_argument("--allow-failure", action="store_true", help="run even if a parent failed")
    p.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="wait up to this long for the job to finish and print its result",
    )

    p = add("retry", cmd_retry, "requeue dead-letter, canceled or stopped jobs")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all-dlq", metavar="QUEUE", help="requeue every dead-letter job of QUEUE")

    p = add("pause", cmd_pause, "stop handing out a queue's jobs (enqueueing still works)")
    p.add_argument("queue")
    p = add("resume", cmd_resume, "resume a paused queue")
    p.add_argument("queue")

    p = add("purge", cmd_purge, "cancel a queue's ready jobs (or delete its dead-letter jobs)")
    p.add_argument("queue")
    p.add_argument("--dead", action="store_true", help="delete the dead-letter jobs instead")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")


# -- connecting ----------------------------------------------------------------------------


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :class:`gqm.Client` from ``--redis``, ``--config``,
    ``$GQM_REDIS_URL`` and ``--prefix``."""
    options: dict[str, Any] = {}
    url: str | None = args.redis
    if args.config:
        from gqm.config import load_config_file, server_options

        settings = server_options(load_config_file(args.config)).kwargs
        options = {k: v for k, v in settings.items() if k in _CLIENT_PARAMS}
        if url:  # --redis replaces the connection settings, not the prefix
            options = {k: v for k, v in options.items() if k == "prefix"}
    elif not url:
        url = os.environ.get("GQM_REDIS_URL") or DEFAULT_REDIS
    if url:
        options["redis"] = url
    if args.prefix is not None:
        options["prefix"] = args.prefix
    return options


def describe(options: dict[str, Any]) -> str:
    """Where the client connects, without a password."""
    redis = options.get("redis")
    if isinstance(redis, str):
        parts = urlsplit(redis)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=host))
    return f"{options.get('host', '127.0.0.1')}:{options.get('port', 6379)}"


def run(args: argparse.Namespace, command: Command) -> int:
    options = client_options(args)

    async def main() -> int:
        async with gqm.Client(**options) as client:
            return await command(client, args)

    try:
        return anyio.run(main)
    except gqm.RedisConnectionError as err:
        raise CliError(f"cannot connect to Redis at {describe(options)}: {err}") from None


# -- the commands --------------------------------------------------------------------------


async def cmd_queues(client: gqm.Client, args: argparse.Namespace) -> int:
    infos = await client.queues()
    if args.json:
        print_json(infos)
    elif not infos:
        print("no queues yet")
    else:
        headers = [header for header, _ in _QUEUE_COLUMNS]
        print(table(headers, [[getattr(q, field) for _, field in _QUEUE_COLUMNS] for q in infos]))
    return OK


async def cmd_jobs(client: gqm.Client, args: argparse.Namespace) -> int:
    jobs, total = await client.list_jobs(
        args.queue, args.status, offset=args.offset, limit=args.limit
    )
    if args.json:
        page = {"queue": args.queue, "status": args.status, "total": total, "offset": args.offset}
        print_json({**page, "jobs": jobs})
        return OK
    if jobs:
        rows = [[j.id, j.type, j.status, j.attempt, j.created_at, _short(j.error)] for j in jobs]
        print(table(["id", "type", "status", "attempt", "created", "error"], rows))
    first = args.offset + 1 if jobs else args.offset
    print(f"{args.status} jobs in {args.queue}: {first}-{args.offset + len(jobs)} of {total}")
    return OK


async def cmd_job(client: gqm.Client, args: argparse.Namespace) -> int:
    job = await client.get_job(args.id)
    if args.json:
        print_json(job)
    else:
        print(job_details(job))
    return OK


async def cmd_enqueue(client: gqm.Client, args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.payload == "-" else args.payload
    try:
        payload = msgspec.json.decode(text)
    except msgspec.DecodeError as err:
        raise CliError(f"the payload is not valid JSON: {err}", USAGE) from None
    options: dict[str, Any] = {
        "queue": args.queue,
        "job_id": args.job_id,
        "max_retry": args.max_retry,
        "timeout": args.timeout,
        "unique": args.unique,
        "at_front": args.at_front,
    }
    if args.delay is not None:
        if args.depends_on:
            raise CliError("--delay cannot be combined with --depends-on", USAGE)
        job = await client.enqueue_in(args.type, payload, args.delay, **options)
    else:
        job = await client.enqueue(
            args.type,
            payload,
            depends_on=args.depends_on,
            allow_failure=args.allow_failure,
            **options,
        )
    if args.wait is not None:
        try:
            await client.result(job.id, timeout=args.wait)
        except TimeoutError:
            raise CliError(f"job {job.id} did not finish within {args.wait:g} s") from None
        job = await client.get_job(job.id)
    if args.json:
        print_json(job)
    else:
        print(f"enqueued {job.id} ({job.type} on queue {job.queue}): {job.status}")
        if args.wait is not None:
            print(f"result: {cell(job.result)}")
    return OK


async def cmd_retry(client: gqm.Client, args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.all_dlq):
        raise CliError("give job ids, or --all-dlq QUEUE", USAGE)
    if args.all_dlq:
        queue = args.all_dlq
        remaining = (await client.queue_info(queue)).dead_letter
        count = 0
        # Bounded by the count seen first: jobs that die again are not retried in a loop.
        while count < remaining:
            done = await client.retry_dead(queue, limit=remaining - count)
            if not done:
                break
            count += done
        if args.json:
            print_json({"queue": queue, "requeued": count})
        else:
            print(f"requeued {count} dead-letter job(s) of queue {queue}")
        return OK
    outcome = await client.retry(*args.ids)
    if args.json:
        print_json(outcome)
    else:
        for job_id, done in outcome.items():
            print(
                f"requeued {job_id}"
                if done
                else f"not requeued {job_id}: no such job, or not dead_letter, canceled or stopped"
            )
    return OK if all(outcome.values()) else FAILED


async def cmd_pause(client: gqm.Client, args: argparse.Namespace) -> int:
    return _paused(args, await client.pause(args.queue), paused=True)


async def cmd_resume(client: gqm.Client, args: argparse.Namespace) -> int:
    return _paused(args, await client.resume(args.queue), paused=False)


def _paused(args: argparse.Namespace, changed: bool, *, paused: bool) -> int:
    if args.json:
        print_json({"queue": args.queue, "paused": paused, "changed": changed})
    else:
        state = "paused" if paused else "resumed"
        already = "" if changed else "was already "
        print(f"queue {args.queue} {already}{state}")
    return OK


async def cmd_purge(client: gqm.Client, args: argparse.Namespace) -> int:
    info = await client.queue_info(args.queue)
    if args.dead:
        what, verb, count, purge = "dead-letter", "deleted", info.dead_letter, client.clear_dead
    else:
        what, verb, count, purge = "ready", "canceled", info.ready, client.empty
    done = 0
    if count:
        confirm(
            f"{'Delete' if args.dead else 'Cancel'} {count} {what} job(s) of queue {args.queue}?",
            yes=args.yes,
        )
        # Bounded by the count seen first: jobs enqueued meanwhile are left alone.
        while done < count:
            n = await purge(args.queue, limit=count - done)
            if not n:
                break
            done += n
    if args.json:
        print_json({"queue": args.queue, verb: done})
    else:
        print(f"{verb} {done} {what} job(s) of queue {args.queue}")
    return OK


# -- formatting ----------------------------------------------------------------------------

#: The ``gqm queues`` table: (header, QueueInfo field).
_QUEUE_COLUMNS = (
    ("queue", "name"), ("ready", "ready"), ("scheduled", "scheduled"),
    ("processing", "processing"), ("deferred", "deferred"), ("completed", "completed"),
    ("dead", "dead_letter"), ("canceled", "canceled"), ("processed", "processed_total"),
    ("failed", "failed_total"), ("paused", "paused"),
)  # fmt: skip

#: Shown even when empty.
_ALWAYS = frozenset({"id", "type", "queue", "status", "attempt", "payload", "result", "error"})


def job_details(job: gqm.Job[Any]) -> str:
    pairs = []
    for name in msgspec.structs.fields(job):
        value = getattr(job, name.name)
        if name.name in _ALWAYS or value not in (None, (), {}, False, 0):
            pairs.append((name.name, value))
    return details(pairs)


def _short(text: str | None, width: int = 60) -> str | None:
    if text is None:
        return None
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"
