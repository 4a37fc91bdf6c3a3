"""Typed task handles: a job type name bound to a payload type.

A handle is shared by the producer and the worker, so that both agree on the payload::

    class Email(msgspec.Struct):
        to: str

    send_email = gqm.task("email.send", Email)
    await client.enqueue(send_email, Email(to="a@x.com"))     # type-checked

    @server.handler(send_email)
    async def deliver(job: gqm.Job[Email]) -> None: ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

import msgspec

from ._keys import check_queue_name
from .errors import ConfigurationError

P = TypeVar("P")

_JOB_TYPE_MAX = 256


def check_job_type(name: str) -> str:
    """Return ``name`` if it is a usable job type name."""
    if not isinstance(name, str) or not name or len(name) > _JOB_TYPE_MAX or not name.isprintable():
        raise ConfigurationError(
            f"invalid job type {name!r}: use 1-{_JOB_TYPE_MAX} printable characters"
        )
    return name


@dataclass(frozen=True, slots=True)
class Task(Generic[P]):
    """A job type with its payload type. Create one with :func:`task`."""

    name: str
    payload_type: type[P]
    queue: str | None = None

    def decoder(self) -> msgspec.json.Decoder[P]:
        return _decoder(self.payload_type)


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decoder(tp: Any) -> msgspec.json.Decoder[Any]:
    dec = _decoders.get(tp)
    if dec is None:
        dec = _decoders[tp] = msgspec.json.Decoder(tp)
    return dec


@overload
def task(name: str, *, queue: str | None = None) -> Task[dict[str, Any]]: ...
@overload
def task(name: str, payload_type: type[P], *, queue: str | None = None) -> Task[P]: ...
def task(name: str, payload_type: Any = None, *, queue: str | None = None) -> Task[Any]:
    """Declare a job type and its payload type (any type msgspec can decode; a
    ``msgspec.Struct`` is the usual choice). Without a type, payloads are dicts.

    ``queue`` is where the producer sends these jobs unless told otherwise, and what a
    dedicated pool (``server.handle(task, fn, workers=N)``) reads: give a task its own
    queue to isolate it from the others.
    """
    if queue is not None:
        check_queue_name(queue)
    return Task(check_job_type(name), dict if payload_type is None else payload_type, queue)
