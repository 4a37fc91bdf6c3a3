"""The one interface the core uses to talk to Redis.

gqm runs on asyncio (through redis-py) and on trio (through coredis). The core never
imports either library: it speaks only to :class:`Driver`, which both adapters implement.
The surface is deliberately small: a single command, a pipeline of commands that
returns errors in place instead of raising, and a publish/subscribe stream.

Replies are returned raw: bulk strings as ``bytes``, integers as ``int``, arrays as
``list``, nil as ``None``. Error replies inside a pipeline come back as
:class:`~gqm.errors.RedisReplyError` instances at their position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

Arg: TypeAlias = bytes | str | int | float
Command: TypeAlias = Sequence[Arg]


class Subscription(Protocol):
    """An open subscription to one or more channels."""

    async def get_message(self) -> tuple[bytes, bytes]:
        """Wait for the next message and return ``(channel, data)``.

        Raises :class:`~gqm.errors.RedisConnectionError` if the connection is lost; the
        caller re-subscribes (messages published meanwhile may be lost, so callers
        re-check the state they wait on after a reconnect).
        """
        ...


class Driver(Protocol):
    """What gqm needs from a Redis client library."""

    #: "redis-py" or "coredis", for logs and diagnostics.
    name: str

    async def execute(self, *args: Arg) -> Any:
        """Run one command and return its raw reply; error replies raise
        :class:`~gqm.errors.RedisReplyError`, lost connections
        :class:`~gqm.errors.RedisConnectionError`."""
        ...

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` in one round trip (not a transaction).

        Returns one reply per command, in order; an error reply is returned in place as
        a :class:`~gqm.errors.RedisReplyError` instead of being raised, so that the
        caller can retry exactly the commands that failed.
        """
        ...

    def subscribe(self, *channels: str) -> AbstractAsyncContextManager[Subscription]:
        """Open a dedicated connection subscribed to ``channels``."""
        ...

    async def open(self) -> None:
        """Make the driver ready; idempotent. Call it before the first command, in the
        task that will call :meth:`aclose`, outside any cancel scope (it does not
        connect, so it needs no timeout), and close everything opened in between before
        calling :meth:`aclose`: the pair behaves like one ``async with`` block.

        The coredis driver needs this (entering a coredis client starts a task group
        owned by the calling task, so it must be a long-lived task, not whichever task
        sends the first command); for redis-py it does nothing.
        """
        ...

    async def aclose(self) -> None:
        """Release the connections, unless the client was injected by the user.
        Call it in the task that called :meth:`open`."""
        ...
