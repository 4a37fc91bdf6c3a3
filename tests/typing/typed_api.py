"""Static checks of the generic public API, run by mypy --strict from tests/test_typing.py.

Not collected by pytest (the name does not match ``test_*.py``) and never executed.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, assert_type

import msgspec

import gqm


class Email(msgspec.Struct):
    to: str


send_email = gqm.task("email.send", Email)
assert_type(send_email, gqm.Task[Email])
assert_type(gqm.task("untyped"), gqm.Task[dict[str, Any]])

server = gqm.Server("redis://localhost")


# Positional-only, so that its type can be spelled as a Callable in assert_type below.
@server.handler(send_email)
async def deliver(job: gqm.Job[Email], /) -> None:
    assert_type(job.payload, Email)


# The decorator returns the function unchanged, not widened to gqm.Handler.
assert_type(deliver, Callable[[gqm.Job[Email]], Coroutine[Any, Any, None]])


async def produce(client: gqm.Client) -> None:
    typed = await client.enqueue(send_email, Email(to="a@example.com"))
    assert_type(typed, gqm.Job[Email])
    assert_type(typed.payload, Email)
    untyped = await client.enqueue("email.send", {"to": "a@example.com"})
    assert_type(untyped, gqm.Job[Any])
