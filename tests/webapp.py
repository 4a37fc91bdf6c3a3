"""Serving the HTTP API for tests: a real hypercorn on a loopback port, real requests.

Users, API keys and passwords are made once per session (argon2 with its production
parameters, so logins cost what they cost in production).
"""

from __future__ import annotations

import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache, partial
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from argon2 import PasswordHasher

import gqm_web

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    import gqm

PASSWORDS = {"admin": "admin-password-1", "viewer": "viewer-password-1"}
KEYS = {
    name: f"gqm_ak_{name}_{secrets.token_urlsafe(32)}" for name in ("admin", "viewer", "revoked")
}
CSRF = {"X-GQM-CSRF": "1"}


class FakeClock:
    """An injectable wall clock that moves only when told to."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@cache
def _hash(password: str) -> str:
    return PasswordHasher().hash(password)


def settings(**overrides: Any) -> gqm_web.WebSettings:
    """API settings with users ``admin`` and ``viewer``, API keys ``admin``, ``viewer``
    and ``revoked`` (role viewer), on a free loopback port, with a rate limit high
    enough not to interfere unless a test lowers it."""
    values: dict[str, Any] = {
        "addr": "127.0.0.1:0",
        "users": (
            gqm_web.User(username="admin", password_hash=_hash(PASSWORDS["admin"]), role="admin"),
            gqm_web.User(
                username="viewer", password_hash=_hash(PASSWORDS["viewer"]), role="viewer"
            ),
        ),
        "api_keys": (
            gqm_web.ApiKey(name="admin", key=KEYS["admin"], role="admin"),
            gqm_web.ApiKey(name="viewer", key=KEYS["viewer"], role="viewer"),
            gqm_web.ApiKey(name="revoked", key=KEYS["revoked"], role="admin"),
        ),
        "rate_limit": 100_000.0,
    }
    values.update(overrides)
    return gqm_web.WebSettings(**values)


@dataclass
class Api:
    """A served app: an HTTP client on its base URL, and the app's state."""

    http: httpx.AsyncClient
    base_url: str
    app: Any

    @property
    def web(self) -> Any:
        return self.app.extensions["gqm_web"]

    async def login(self, username: str, password: str | None = None) -> str:
        """Log in and return the session token (the cookie is not kept by ``http``)."""
        r = await self.http.post(
            "/auth/login",
            json={"username": username, "password": password or PASSWORDS[username]},
        )
        assert r.status_code == 200, r.text
        token = r.cookies.get("gqm_session")
        assert token
        self.http.cookies.clear()
        return token


@asynccontextmanager
async def running_api(
    client: gqm.Client,
    web_settings: gqm_web.WebSettings | None = None,
    *,
    clock: Callable[[], float] | None = None,
    monotonic: Callable[[], float] | None = None,
) -> AsyncIterator[Api]:
    """Serve the API over ``client`` for the body of the ``async with`` (``clock`` and
    ``monotonic`` replace the app's wall clock and rate-limiter clock)."""
    web_settings = web_settings or settings()
    kwargs: dict[str, Any] = {}
    if clock is not None:
        kwargs["clock"] = clock
    if monotonic is not None:
        kwargs["monotonic"] = monotonic
    app = gqm_web.create_app(client, web_settings, **kwargs)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        host, port = await tg.start(
            partial(gqm_web.serve_app, app, web_settings, shutdown_trigger=stop.wait)
        )
        base_url = f"http://{host}:{port}"
        try:
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
                yield Api(http=http, base_url=base_url, app=app)
        finally:
            stop.set()
