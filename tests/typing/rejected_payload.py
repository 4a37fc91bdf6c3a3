"""A snippet mypy must reject: a payload of the wrong type for a typed task.

Checked by tests/test_typing.py, which expects exactly one error, on the marked line.
"""

from __future__ import annotations

import msgspec

import gqm


class Email(msgspec.Struct):
    to: str


class WrongPayload(msgspec.Struct):
    number: int


send_email = gqm.task("email.send", Email)


async def produce(client: gqm.Client) -> None:
    await client.enqueue(send_email, WrongPayload(number=1))  # mypy must reject this line
