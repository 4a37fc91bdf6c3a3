"""What every handler needs: the gqm client, the authenticator and the settings."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gqm import Client

from ._auth import Authenticator
from ._security import ClientAddress, RateLimiter
from ._settings import WebSettings


@dataclass(slots=True)
class Web:
    """The state of one app: shared by its requests, never by two apps."""

    client: Client
    settings: WebSettings
    auth: Authenticator
    limiter: RateLimiter
    addresses: ClientAddress
    clock: Callable[[], float]
    started: float = field(default_factory=time.monotonic)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def uptime(self) -> float:
        return round(time.monotonic() - self.started, 3)
