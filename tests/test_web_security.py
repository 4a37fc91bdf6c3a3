"""Security of the HTTP API (RELIABILITY.md T17-T23), against real servers and Redis.

Every test serves the app with hypercorn on loopback and talks to it over HTTP; Redis
is real, and "nothing changed" is checked by comparing dumps of every key of the test
prefix. Sessions are sent as an explicit ``Cookie`` header (the client's jar is cleared
after every login), and time-dependent behaviour runs on injected clocks, never sleeps.
"""

from __future__ import annotations

import hashlib
import ipaddress
import string
import threading
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest
from argon2 import PasswordHasher, Type

import gqm_web
from gqm.errors import ConfigurationError
from gqm_web._errors import ApiError, Code
from gqm_web._routing import ROUTES, Access, Route
from gqm_web._security import ClientAddress, RateLimiter
from gqm_web._types import EntryId, JobId, JobIdsBody, LoginBody, QueueName, ServerId, WorkerId

from .helpers import raw
from .webapp import CSRF, KEYS, PASSWORDS, Api, FakeClock, running_api, settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    import httpx

    import gqm

pytestmark = pytest.mark.anyio

EVIL = "https://evil.example"


# -- helpers -----------------------------------------------------------------------------


def cookie(token: str, name: str = "gqm_session") -> dict[str, str]:
    return {"Cookie": f"{name}={token}"}


def session_key(client: gqm.Client, token: str) -> str:
    """Where the session of ``token`` is stored (under the SHA-256 of the token)."""
    return f"{client.keys.prefix}:web:session:{hashlib.sha256(token.encode()).hexdigest()}"


async def post_login(
    api: Api, username: str, password: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """``POST /auth/login``; the client's cookie jar is cleared so nothing leaks into
    later requests."""
    r = await api.http.post(
        "/auth/login", json={"username": username, "password": password}, headers=headers
    )
    api.http.cookies.clear()
    return r


async def me(api: Api, token: str, name: str = "gqm_session") -> httpx.Response:
    return await api.http.get("/auth/me", headers=cookie(token, name))


def set_cookie(r: httpx.Response) -> tuple[str, str, dict[str, str]]:
    """The one ``Set-Cookie`` of a response: name, value and attributes (lower-cased
    names; flags map to "")."""
    (header,) = r.headers.get_list("set-cookie")
    first, *rest = (part.strip() for part in header.split(";"))
    name, _, value = first.partition("=")
    attrs = {}
    for part in rest:
        key, _, val = part.partition("=")
        attrs[key.strip().lower()] = val.strip()
    return name, value, attrs


async def scan(client: gqm.Client, pattern: str) -> list[bytes]:
    keys: list[bytes] = []
    cursor: Any = 0
    while True:
        cursor, batch = await raw(client, "SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        keys.extend(batch)
        if int(cursor) == 0:
            return sorted(set(keys))


async def snapshot(client: gqm.Client, *, skip: Iterable[str] = ()) -> dict[bytes, bytes]:
    """Every key of the test prefix with its ``DUMP`` (type, content and encoding)."""
    skipped = {s.encode() for s in skip}
    keys = [k for k in await scan(client, f"{client.keys.prefix}:*") if k not in skipped]
    if not keys:
        return {}
    dumps = await (await client._conn.get()).pipeline([["DUMP", k] for k in keys])
    return dict(zip(keys, dumps, strict=True))


async def stored_text(client: gqm.Client, pattern: str) -> list[bytes]:
    """Every key matching ``pattern`` and every member, field and value in it, read
    type by type (a ``DUMP`` may be LZF-compressed, which would hide a substring)."""
    out: list[bytes] = []
    for key in await scan(client, pattern):
        out.append(key)
        kind = (await raw(client, "TYPE", key)).decode()
        reads = {
            "string": ["GET", key],
            "hash": ["HGETALL", key],
            "set": ["SMEMBERS", key],
            "zset": ["ZRANGE", key, 0, -1],
            "list": ["LRANGE", key, 0, -1],
        }
        value = await raw(client, *reads[kind])
        if isinstance(value, dict):
            out.extend(b for kv in value.items() for b in kv)
        elif isinstance(value, list | set | tuple):
            out.extend(value)
        elif value is not None:
            out.append(value)
    return out


class VerifyProbe:
    """Wraps ``Authenticator._verify`` (run in worker threads) to count password
    verifications, record the hashes they used and the most that ran at once."""

    def __init__(self, auth: gqm_web.Authenticator) -> None:
        self._inner = auth._verify
        self._lock = threading.Lock()
        self.calls = 0
        self.active = 0
        self.peak = 0
        self.hashes: list[str] = []
        auth._verify = self  # type: ignore[method-assign]

    def __call__(self, stored: str, password: str) -> bool:
        with self._lock:
            self.calls += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.hashes.append(stored)
        try:
            return self._inner(stored, password)
        finally:
            with self._lock:
                self.active -= 1


async def in_parallel(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run ``fn(0) .. fn(n-1)`` concurrently; their results in order."""
    results: list[Any] = [None] * n

    async def one(i: int) -> None:
        results[i] = await fn(i)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return results


# -- T17: the authorization matrix ----------------------------------------------------------

ANONYMOUS = "anonymous"
VIEWER_SESSION = "viewer session"
ADMIN_SESSION_NO_CSRF = "admin session without CSRF header"
ADMIN_SESSION = "admin session"
VIEWER_KEY = "viewer key"
ADMIN_KEY = "admin key"
REVOKED_KEY = "revoked key"
EXPIRED_SESSION = "expired session"
CALLERS = (
    ANONYMOUS,
    VIEWER_SESSION,
    ADMIN_SESSION_NO_CSRF,
    ADMIN_SESSION,
    VIEWER_KEY,
    ADMIN_KEY,
    REVOKED_KEY,
    EXPIRED_SESSION,
)
NO_CREDENTIALS = {ANONYMOUS, REVOKED_KEY, EXPIRED_SESSION}
VIEWERS = {VIEWER_SESSION, VIEWER_KEY}


@dataclass(frozen=True)
class Outcome:
    """A refusal (``status`` and ``code``), or ``None``: let through (any status except
    401, 403 and 5xx; a 404 for an id that does not exist is fine)."""

    status: int | None = None
    code: Code | None = None


ALLOWED = Outcome()

#: The expected outcome of a (route, caller) pair: the first matching rule wins.
RULES: list[tuple[str, Callable[[Route, str], bool], Outcome]] = [
    ("public routes need no credentials", lambda r, c: r.access is Access.PUBLIC, ALLOWED),
    ("no valid credentials", lambda r, c: c in NO_CREDENTIALS, Outcome(401, Code.UNAUTHORIZED)),
    (
        "viewers may not act",
        lambda r, c: c in VIEWERS and r.access is Access.ADMIN,
        Outcome(403, Code.FORBIDDEN),
    ),
    (
        "cookie changes need the CSRF header",
        lambda r, c: c == ADMIN_SESSION_NO_CSRF and r.mutating,
        Outcome(403, Code.CSRF_REQUIRED),
    ),
    ("everything else is let through", lambda r, c: True, ALLOWED),
]


def expected(route: Route, caller: str) -> Outcome:
    return next(outcome for _why, applies, outcome in RULES if applies(route, caller))


def fill_path(route: Route, job_id: str) -> str:
    """The route's path with ids that exist where that is cheap (the job, queue "q");
    cron entries, servers and pools do not exist (those answer 404)."""
    values = [
        (QueueName, "q"),
        (JobId, job_id),
        (EntryId, "no-such-entry"),
        (ServerId, "no-such-server"),
        (WorkerId, "no-such-server:pool"),
    ]
    args = {name: next(v for t, v in values if t is type_) for name, type_ in route.params.items()}
    return route.path.format(**args)


def body_of(route: Route, job_id: str) -> Any:
    if route.body is JobIdsBody:
        return {"job_ids": [job_id]}
    if route.body is LoginBody:
        return {}  # a 400 after the guard: the matrix never opens or ends sessions
    assert route.body is None, f"no body for {route.path}: extend body_of"
    return None


def matrix_order(route: Route) -> int:
    # Logging out ends the caller's session: that route goes last.
    return route.path == "/auth/logout"


async def test_authorization_matrix(client: gqm.Client) -> None:
    """T17: every declared route x every kind of caller gets the status the rules say,
    and no refused change touches Redis."""
    clock = FakeClock()
    web_settings = settings()
    async with running_api(client, web_settings, clock=clock) as api:
        job = await client.enqueue("noop", {"n": 1}, queue="q")
        await api.web.auth.revoke_key("revoked")
        expired_token = await api.login("admin")
        expired_key = session_key(client, expired_token)
        stale_session = await raw(client, "GET", expired_key)
        assert (await me(api, expired_token)).status_code == 200
        clock.advance(web_settings.session_idle + 1)
        viewer_token = await api.login("viewer")
        admin_token = await api.login("admin")
        headers = {
            ANONYMOUS: {},
            VIEWER_SESSION: {**cookie(viewer_token), **CSRF},
            ADMIN_SESSION_NO_CSRF: cookie(admin_token),
            ADMIN_SESSION: {**cookie(admin_token), **CSRF},
            VIEWER_KEY: {"X-API-Key": KEYS["viewer"]},
            ADMIN_KEY: {"X-API-Key": KEYS["admin"]},
            REVOKED_KEY: {"X-API-Key": KEYS["revoked"]},
            EXPIRED_SESSION: {**cookie(expired_token), **CSRF},
        }
        assert set(headers) == set(CALLERS)

        cases: list[tuple[str, str, str]] = []
        failures: list[str] = []
        for route in sorted(ROUTES, key=matrix_order):
            path = fill_path(route, job.id)
            for caller in CALLERS:
                want = expected(route, caller)
                if caller == EXPIRED_SESSION:
                    # The stale session is still stored, as if not yet touched since it
                    # went idle: each request meets it anew.
                    await raw(client, "SET", expired_key, stale_session)
                watch = want.status is not None and route.mutating
                before = await snapshot(client, skip=[expired_key]) if watch else None
                r = await api.http.request(
                    route.method, path, headers=headers[caller], json=body_of(route, job.id)
                )
                cases.append((route.method, route.path, caller))
                case = f"{route.method} {path} as {caller}: {r.status_code} {r.text[:120]}"
                body = r.json() if r.content else {}
                if want.status is None:
                    if r.status_code in (401, 403) or r.status_code >= 500:
                        failures.append(f"{case} (expected to be let through)")
                    if r.status_code in (404, 405) and body.get("error") == "no such route":
                        failures.append(f"{case} (the matrix missed the route)")
                elif (r.status_code, body.get("code")) != (want.status, want.code):
                    failures.append(f"{case} (expected {want.status} {want.code})")
                if before is not None and await snapshot(client, skip=[expired_key]) != before:
                    failures.append(f"{case} (a refused change wrote to Redis)")
                # A stale session is deleted when it is presented.
                stale = caller == EXPIRED_SESSION and route.access is not Access.PUBLIC
                if stale and await raw(client, "EXISTS", expired_key):
                    failures.append(f"{case} (the stale session was kept)")
        assert not failures, "\n".join(failures)
        assert len(set(cases)) == len(ROUTES) * len(CALLERS) == len(cases)
        print(f"T17: {len(cases)} (route, caller) cases over {len(ROUTES)} routes")


def test_matrix_rules_cover_every_access_level() -> None:
    """The rule table itself: each access level meets each kind of refusal it should."""
    by_access = {r.access: r for r in ROUTES if not r.mutating}
    admin_route = next(r for r in ROUTES if r.access is Access.ADMIN)
    assert expected(by_access[Access.PUBLIC], ANONYMOUS) == ALLOWED
    assert expected(by_access[Access.VIEWER], ANONYMOUS).status == 401
    assert expected(by_access[Access.AUTHENTICATED], REVOKED_KEY).status == 401
    assert expected(admin_route, VIEWER_KEY) == Outcome(403, Code.FORBIDDEN)
    assert expected(admin_route, ADMIN_SESSION_NO_CSRF) == Outcome(403, Code.CSRF_REQUIRED)
    assert expected(admin_route, ADMIN_SESSION) == ALLOWED
    assert expected(by_access[Access.VIEWER], ADMIN_SESSION_NO_CSRF) == ALLOWED
    # Every route is declared once, and every access level is used.
    assert len({(r.method, r.path) for r in ROUTES}) == len(ROUTES)
    assert {r.access for r in ROUTES} == set(Access)


# -- T18: CSRF ------------------------------------------------------------------------------

MUTATING = [r for r in ROUTES if r.mutating]


def attack_body(route: Route, job_id: str) -> dict[str, str]:
    """What a forged request would carry: for the login, real credentials (a session
    opened by it would show in Redis)."""
    if route.body is LoginBody:
        return {"username": "admin", "password": PASSWORDS["admin"]}
    return {"job_ids": job_id}


#: Cross-site HTML forms: they can send these content types and no custom header.
FORMS: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
    "text/plain": lambda body: {
        "content": msgspec.json.encode(body),
        "headers": {"Content-Type": "text/plain"},
    },
    "urlencoded": lambda body: {"data": body},
    "multipart": lambda body: {"data": body, "files": {"f": ("f.txt", b"x", "text/plain")}},
}

#: What a browser marks cross-site requests with; even the CSRF header does not help.
CROSS_SITE: dict[str, dict[str, str]] = {
    "Sec-Fetch-Site: cross-site": {"Sec-Fetch-Site": "cross-site"},
    "Sec-Fetch-Site: same-site": {"Sec-Fetch-Site": "same-site"},
    "foreign Origin": {"Origin": EVIL},
    "Origin: null": {"Origin": "null"},
}


async def test_csrf(client: gqm.Client) -> None:
    """T18: forged cross-site requests with a valid admin cookie change nothing; API-key
    callers are not subject to origin checks."""
    async with running_api(client, settings(), clock=FakeClock()) as api:
        job = await client.enqueue("noop", None, queue="q")
        token = await api.login("admin")
        failures: list[str] = []
        for route in MUTATING:
            path = fill_path(route, job.id)
            attempts: list[tuple[str, dict[str, Any], set[int]]] = [
                (f"{form} form", FORMS[form](attack_body(route, job.id)), {403, 415})
                for form in FORMS
            ]
            attempts += [
                (
                    why,
                    {"json": attack_body(route, job.id), "headers": extra | CSRF},
                    {403},
                )
                for why, extra in CROSS_SITE.items()
            ]
            for why, kwargs, allowed in attempts:
                kwargs["headers"] = cookie(token) | kwargs.get("headers", {})
                before = await snapshot(client)
                r = await api.http.request(route.method, path, **kwargs)
                api.http.cookies.clear()
                case = f"{route.method} {path} ({why}): {r.status_code} {r.text[:120]}"
                if r.status_code not in allowed:
                    failures.append(f"{case} (expected one of {sorted(allowed)})")
                elif r.status_code == 403 and r.json()["code"] != Code.CSRF_REQUIRED:
                    failures.append(f"{case} (expected code CSRF_REQUIRED)")
                if await snapshot(client) != before:
                    failures.append(f"{case} (Redis changed)")
        assert not failures, "\n".join(failures)
        # The session survived all of it, and a same-origin request with the header works.
        assert (await me(api, token)).status_code == 200
        same_origin = {"Origin": api.base_url, "Sec-Fetch-Site": "same-origin", **CSRF}
        r = await api.http.post("/api/v1/queues/q/pause", headers=cookie(token) | same_origin)
        assert r.status_code == 200, r.text

        # No CORS preflight is ever granted, so a cross-site fetch cannot add the header.
        r = await api.http.options(
            "/api/v1/queues/q/pause",
            headers={
                "Origin": EVIL,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-gqm-csrf",
            },
        )
        assert r.status_code == 405
        assert not [h for h in r.headers if h.lower().startswith("access-control-")]

        # API keys are not sent by browsers on their own: no origin checks for them.
        for route in MUTATING:
            if route.access is Access.PUBLIC:
                continue  # the login takes no key: it is a browser's route
            r = await api.http.request(
                route.method,
                fill_path(route, job.id),
                headers={
                    "X-API-Key": KEYS["admin"],
                    "Origin": EVIL,
                    "Sec-Fetch-Site": "cross-site",
                },
                json=body_of(route, job.id),
            )
            assert r.status_code not in (401, 403), (route.path, r.text)
            assert r.status_code < 500, (route.path, r.text)


async def test_dns_rebinding_cannot_reach_the_unauthenticated_api(client: gqm.Client) -> None:
    """T18: with no users and no keys every caller is an admin, so the API listens on
    loopback; a page whose name was re-pointed at 127.0.0.1 (DNS rebinding) sends its
    own name as Host and a matching Origin, and must be refused all the same."""
    open_settings = gqm_web.WebSettings(addr="127.0.0.1:0", rate_limit=100_000.0)
    assert not open_settings.auth_enabled
    async with running_api(client, open_settings) as api:
        await client.enqueue("noop", None, queue="q")
        port = api.base_url.rsplit(":", 1)[1]
        rebound = f"evil.example:{port}"
        page = {"Host": rebound, "Origin": f"http://{rebound}", "Sec-Fetch-Site": "same-origin"}
        before = await snapshot(client)
        for method, path in [
            ("GET", "/api/v1/queues"),
            ("GET", "/auth/me"),
            ("POST", "/api/v1/queues/q/pause"),
            ("DELETE", "/api/v1/queues/q/empty"),
        ]:
            r = await api.http.request(method, path, headers=page | CSRF)
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["code"] == "FORBIDDEN"
        assert await snapshot(client) == before
        # Requests addressed to this machine work without credentials.
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.1"):
            r = await api.http.get("/api/v1/queues", headers={"Host": host})
            assert r.status_code == 200, (host, r.text)
        assert (await api.http.get("/health", headers={"Host": rebound})).status_code == 200
    # With authentication on, the credentials are the defence: the Host does not matter.
    async with running_api(client) as api:
        r = await api.http.get(
            "/api/v1/queues", headers={"Host": "api.example.com", "X-API-Key": KEYS["viewer"]}
        )
        assert r.status_code == 200


# -- T19: sessions --------------------------------------------------------------------------


async def test_session_cookie_attributes(client: gqm.Client) -> None:
    """T19: the session cookie is HttpOnly, SameSite=Strict, Path=/, host-only, and
    ``__Host-``-prefixed and Secure when secure cookies are on; the token has 256 bits."""
    async with running_api(client) as api:
        r = await post_login(api, "admin", PASSWORDS["admin"])
        assert r.status_code == 200
        assert r.json() == {"data": {"username": "admin", "role": "admin", "via": "session"}}
        name, token, attrs = set_cookie(r)
        assert name == "gqm_session"
        assert {"httponly", "path", "samesite"} <= attrs.keys()
        assert attrs["path"] == "/"
        assert attrs["samesite"].lower() == "strict"
        assert "domain" not in attrs
        assert "secure" not in attrs
        assert int(attrs["max-age"]) == int(api.web.settings.session_ttl)
        # secrets.token_urlsafe(32): 32 random bytes are 43 base64url characters.
        assert len(token) >= 43
        assert set(token) <= set(string.ascii_letters + string.digits + "-_")
        other = set_cookie(await post_login(api, "viewer", PASSWORDS["viewer"]))[1]
        assert other != token

    async with running_api(client, settings(secure_cookies=True)) as api:
        r = await post_login(api, "admin", PASSWORDS["admin"])
        name, token, attrs = set_cookie(r)
        assert name == "__Host-gqm_session"
        assert "secure" in attrs
        assert attrs["path"] == "/"
        assert "domain" not in attrs
        assert (await me(api, token, "__Host-gqm_session")).status_code == 200
        # The unprefixed name is not read when the prefixed one is in use.
        assert (await me(api, token, "gqm_session")).status_code == 401


async def test_login_ignores_a_planted_cookie(client: gqm.Client) -> None:
    """T19: a session cookie set before the login is never upgraded: the login issues a
    new token and ends the planted session."""
    async with running_api(client) as api:
        planted = "attacker-chosen-value-" + "x" * 30
        r = await post_login(api, "admin", PASSWORDS["admin"], headers=cookie(planted))
        assert r.status_code == 200
        token = set_cookie(r)[1]
        assert token != planted
        assert (await me(api, planted)).status_code == 401
        assert (await me(api, token)).json()["data"]["username"] == "admin"

        # A real session of the attacker's, planted in the victim's browser.
        attacker = await api.login("viewer")
        r = await post_login(api, "admin", PASSWORDS["admin"], headers=cookie(attacker))
        assert r.status_code == 200
        victim = set_cookie(r)[1]
        assert victim not in (attacker, token)
        assert (await me(api, attacker)).status_code == 401
        assert not await raw(client, "EXISTS", session_key(client, attacker))
        assert (await me(api, victim)).json()["data"] == {
            "username": "admin",
            "role": "admin",
            "via": "session",
        }


async def test_logout_deletes_the_session(client: gqm.Client) -> None:
    """T19: logging out deletes the session in Redis (not just the cookie)."""
    async with running_api(client) as api:
        token = await api.login("viewer")
        key = session_key(client, token)
        assert await raw(client, "EXISTS", key) == 1
        r = await api.http.post("/auth/logout", headers=cookie(token) | CSRF)
        assert r.status_code == 200
        assert r.json() == {"data": {"logged_out": True}}
        name, value, attrs = set_cookie(r)
        assert name == "gqm_session"
        assert value in ("", '""')
        assert attrs.get("max-age") == "0" or "expires" in attrs
        assert await raw(client, "EXISTS", key) == 0
        assert (await me(api, token)).status_code == 401
        r = await api.http.post("/auth/logout", headers=cookie(token) | CSRF)
        assert r.status_code == 401


async def test_session_idle_and_absolute_timeouts(client: gqm.Client) -> None:
    """T19: use keeps a session alive past the idle timeout, but never past its
    absolute lifetime."""
    clock = FakeClock()
    web_settings = settings(session_idle=100.0, session_ttl=300.0)
    async with running_api(client, web_settings, clock=clock) as api:
        # Idle: each use within 100 s refreshes "last seen".
        token = await api.login("viewer")
        clock.advance(90)
        assert (await me(api, token)).status_code == 200
        stored = msgspec.json.decode(await raw(client, "GET", session_key(client, token)))
        assert stored["seen"] == clock.now  # refreshed
        clock.advance(90)  # 180 s after the login, 90 s after the last use
        assert (await me(api, token)).status_code == 200
        clock.advance(101)
        assert (await me(api, token)).status_code == 401
        assert not await raw(client, "EXISTS", session_key(client, token))

        # Absolute: used every 90 s, it still ends 300 s after the login.
        token = await api.login("viewer")
        for _ in range(3):
            clock.advance(90)
            assert (await me(api, token)).status_code == 200
        clock.advance(31)  # 301 s after the login, 31 s after the last use
        assert (await me(api, token)).status_code == 401
        assert not await raw(client, "EXISTS", session_key(client, token))


async def test_password_or_role_change_revokes_sessions(client: gqm.Client) -> None:
    """T19: a server configured with a new password hash or role for a user refuses
    that user's existing sessions; other users' sessions stay valid."""
    base = settings()
    admin, viewer = base.users
    new_password = gqm_web.User(
        username="admin",
        password_hash=PasswordHasher().hash("a-new-admin-password"),
        role="admin",
    )
    promoted = gqm_web.User(username="viewer", password_hash=viewer.password_hash, role="admin")
    async with running_api(client, base) as api:
        admin_token = await api.login("admin")
        viewer_token = await api.login("viewer")
        async with running_api(client, settings(users=(admin, viewer))) as same:
            assert (await me(same, admin_token)).status_code == 200  # control
        async with running_api(client, settings(users=(new_password, viewer))) as changed:
            assert (await me(changed, admin_token)).status_code == 401
            assert (await me(changed, viewer_token)).status_code == 200
        async with running_api(client, settings(users=(admin, promoted))) as changed:
            assert (await me(changed, viewer_token)).status_code == 401
        removed_token = await api.login("admin")
        async with running_api(client, settings(users=(viewer,))) as removed:
            assert (await me(removed, removed_token)).status_code == 401
        # Revoked for good: the sessions were deleted, not just refused.
        assert (await me(api, admin_token)).status_code == 401
        assert (await me(api, viewer_token)).status_code == 401


async def test_redis_holds_no_usable_token(client: gqm.Client) -> None:
    """T19: sessions are stored under the token's hash: the token itself is nowhere."""
    async with running_api(client) as api:
        tokens = [await api.login("admin"), await api.login("viewer")]
        for token in tokens:
            assert (await me(api, token)).status_code == 200
            assert await raw(client, "EXISTS", session_key(client, token)) == 1
        stored = await stored_text(client, f"{client.keys.prefix}:*")
        assert any(b":web:session:" in s for s in stored)
        for token in tokens:
            assert not [s for s in stored if token.encode() in s]


# -- T20: login abuse -------------------------------------------------------------------------


async def test_parallel_guesses_cannot_outrun_the_per_user_limit(client: gqm.Client) -> None:
    """T20: 50 wrong passwords at once for one user: only the allowed number reach the
    password check, the rest are throttled."""
    async with running_api(client) as api:
        probe = VerifyProbe(api.web.auth)
        limit = api.web.settings.login_attempts_per_user

        async def guess(i: int) -> tuple[int, str]:
            r = await post_login(api, "admin", f"wrong-{i}")
            return r.status_code, r.json()["code"]

        results = await in_parallel(50, guess)
        counts = Counter(results)
        assert probe.calls == limit
        assert counts == {(401, "UNAUTHORIZED"): limit, (429, "RATE_LIMITED"): 50 - limit}


async def test_per_user_limit_holds_across_client_ips(client: gqm.Client) -> None:
    """T20: spreading guesses over many client addresses does not lift the per-account
    cap."""
    async with running_api(client, settings(trusted_proxies=("127.0.0.1",))) as api:
        probe = VerifyProbe(api.web.auth)
        statuses = []
        for i in range(10):
            r = await post_login(
                api, "admin", "wrong", headers={"X-Forwarded-For": f"198.51.100.{i}"}
            )
            statuses.append(r.status_code)
        assert statuses == [401] * 5 + [429] * 5
        assert probe.calls == 5
        # The addresses were believed (each has its own per-IP counter).
        ip_counters = await scan(client, f"{client.keys.prefix}:web:login:ip:*")
        assert len(ip_counters) == 10


async def test_unknown_user_and_wrong_password_look_alike(client: gqm.Client) -> None:
    """T20: an unknown user and a wrong password get the same status and body (and both
    cost a password verification)."""
    async with running_api(client) as api:
        probe = VerifyProbe(api.web.auth)
        unknown = await post_login(api, "nobody", "whatever")
        wrong = await post_login(api, "admin", "whatever")
        assert unknown.status_code == wrong.status_code == 401
        assert unknown.content == wrong.content
        assert wrong.json() == {"error": "invalid username or password", "code": "UNAUTHORIZED"}
        assert sorted(unknown.headers.keys()) == sorted(wrong.headers.keys())
        assert probe.calls == 2


async def test_successful_logins_are_not_counted(client: gqm.Client) -> None:
    """T20: only failures use up the attempts: after 4 failures and 3 successes, one
    more failure is still checked, the next is throttled (and so is a right password)."""
    async with running_api(client) as api:
        for _ in range(4):
            assert (await post_login(api, "admin", "wrong")).status_code == 401
        for _ in range(3):
            assert (await post_login(api, "admin", PASSWORDS["admin"])).status_code == 200
        assert (await post_login(api, "admin", "wrong")).status_code == 401
        r = await post_login(api, "admin", "wrong")
        assert r.status_code == 429
        assert r.json()["code"] == "RATE_LIMITED"
        assert int(r.headers["Retry-After"]) > 0
        assert (await post_login(api, "admin", PASSWORDS["admin"])).status_code == 429
        # Other users are not affected by the throttling of this one.
        assert (await post_login(api, "viewer", PASSWORDS["viewer"])).status_code == 200


async def test_weak_hash_is_upgraded_on_login(client: gqm.Client) -> None:
    """T20: a user whose hash has weaker parameters logs in, and the hash is upgraded to
    the current argon2id parameters (kept in Redis, used from then on)."""
    password = "legacy-password-1"
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(password)
    legacy = gqm_web.User(username="legacy", password_hash=weak, role="viewer")
    web_settings = settings(users=(*settings().users, legacy))
    async with running_api(client, web_settings) as api:
        probe = VerifyProbe(api.web.auth)
        assert (await post_login(api, "legacy", password)).status_code == 200
        stored = await raw(client, "HGET", f"{client.keys.prefix}:web:rehashed", "legacy")
        assert stored is not None
        upgraded = stored.decode().split(" ", 1)[1]
        assert upgraded.startswith("$argon2id$")
        assert "m=65536,t=3," in upgraded
        assert PasswordHasher().verify(upgraded, password)
        assert not PasswordHasher().check_needs_rehash(upgraded)
        assert (await post_login(api, "legacy", password)).status_code == 200
        assert probe.hashes == [weak, upgraded]
        assert (await post_login(api, "legacy", "wrong")).status_code == 401
    # Another server sharing the Redis uses the upgrade too.
    async with running_api(client, web_settings) as api:
        probe = VerifyProbe(api.web.auth)
        assert (await post_login(api, "legacy", password)).status_code == 200
        assert probe.hashes == [upgraded]


def test_only_argon2id_hashes_are_accepted() -> None:
    """T20: the configured hashes are argon2id; anything else is refused up front."""
    assert all(u.password_hash.startswith("$argon2id$") for u in settings().users)
    argon2i = PasswordHasher(type=Type.I).hash("x")
    with pytest.raises(ConfigurationError, match="argon2id"):
        settings(users=(gqm_web.User(username="u", password_hash=argon2i),))


async def test_concurrent_password_checks_are_bounded(client: gqm.Client) -> None:
    """T20: at most ``max_concurrent_hashes`` verifications run at once (each takes
    64 MiB), however many logins arrive together."""
    async with running_api(client, settings(trusted_proxies=("127.0.0.1",))) as api:
        probe = VerifyProbe(api.web.auth)

        async def attempt(i: int) -> int:
            r = await post_login(
                api, f"ghost-{i}", "whatever", headers={"X-Forwarded-For": f"203.0.113.{i}"}
            )
            return r.status_code

        assert await in_parallel(10, attempt) == [401] * 10
        assert probe.calls == 10
        assert 1 <= probe.peak <= api.web.settings.max_concurrent_hashes


# -- T21: API keys ------------------------------------------------------------------------------


async def test_api_keys_are_kept_as_digests(client: gqm.Client) -> None:
    """T21: the authenticator keeps only SHA-256 digests of the keys, and nothing about
    them but digests reaches Redis."""
    async with running_api(client) as api:
        auth = api.web.auth
        assert len(auth._keys) == len(KEYS)
        for digest, name, _role in auth._keys:
            assert digest == hashlib.sha256(KEYS[name].encode()).digest()
        plain = [k.encode() for k in KEYS.values()]
        flat = repr(auth._keys).encode()
        assert not [k for k in plain if k in flat or k.hex().encode() in flat]

        for name in KEYS:
            await api.http.get("/api/v1/queues", headers={"X-API-Key": KEYS[name]})
        assert await auth.revoke_key("revoked")
        stored = await stored_text(client, f"{client.keys.prefix}:*")
        assert hashlib.sha256(KEYS["revoked"].encode()).hexdigest().encode() in stored
        assert not [s for s in stored for k in plain if k in s]


async def test_revoked_and_near_miss_keys_are_refused(client: gqm.Client) -> None:
    """T21: a revoked key is refused from the next request on (on every server sharing
    the Redis); keys that differ by one character are refused."""
    async with running_api(client) as api, running_api(client) as other:

        async def status(key: str | bytes, via: Api = api, **extra: str) -> int:
            r = await via.http.get("/api/v1/queues", headers={"X-API-Key": key, **extra})
            return r.status_code

        key = KEYS["admin"]
        assert await status(key) == 200
        last = key[-1]
        near_misses = [
            key[:-1] + ("A" if last != "A" else "B"),
            key[:-1],
            key + "x",
            key.upper() if key.upper() != key else key.lower(),
            key[1:],
        ]
        for miss in near_misses:
            assert await status(miss) == 401, miss
        assert await status(b"\xff" * 40) == 401  # not UTF-8: refused, not a 500
        # A wrong key is not rescued by a valid session cookie.
        token = await api.login("admin")
        assert await status("wrong-" + key, **cookie(token)) == 401

        assert await status(KEYS["revoked"]) == 200
        assert await status(KEYS["viewer"], other) == 200
        assert await api.web.auth.revoke_key("revoked")
        assert await status(KEYS["revoked"]) == 401
        assert await other.web.auth.revoke_key("viewer")
        assert await status(KEYS["viewer"]) == 401  # revoked by the other server
        assert not await api.web.auth.revoke_key("no-such-key")
        assert await status(key) == 200


# -- T22: rate limiting -------------------------------------------------------------------------


async def test_rate_limit_bursts_then_429(client: gqm.Client) -> None:
    """T22: with 5 requests/s, a burst of 10 passes, then 429 with Retry-After; /health
    is exempt."""
    # The limiter's clock is frozen so the burst is not refilled while the test runs.
    async with running_api(client, settings(rate_limit=5.0), monotonic=FakeClock()) as api:
        viewer = {"X-API-Key": KEYS["viewer"]}
        statuses = [(await api.http.get("/api/v1/queues", headers=viewer)).status_code]
        statuses += [(await api.http.get("/api/v1/stats", headers=viewer)).status_code]
        statuses += [(await api.http.get("/nothing-here")).status_code for _ in range(8)]
        assert statuses == [200, 200] + [404] * 8
        r = await api.http.get("/api/v1/queues", headers=viewer)
        assert r.status_code == 429
        assert r.json() == {"error": "too many requests: slow down", "code": "RATE_LIMITED"}
        assert int(r.headers["Retry-After"]) >= 1
        assert check_security_headers(r) == []
        assert (await post_login(api, "admin", PASSWORDS["admin"])).status_code == 429
        for _ in range(20):
            assert (await api.http.get("/health")).status_code == 200


async def test_forwarded_for_is_believed_only_from_trusted_proxies(client: gqm.Client) -> None:
    """T22: a spoofed X-Forwarded-For from an untrusted peer does not buy a new bucket;
    behind a trusted proxy each client has its own."""
    async with running_api(client, settings(rate_limit=5.0), monotonic=FakeClock()) as api:
        spoofed = [
            (await api.http.get("/nothing-here", headers={"X-Forwarded-For": f"192.0.2.{i}"}))
            for i in range(11)
        ]
        assert [r.status_code for r in spoofed] == [404] * 10 + [429]
        assert len(api.web.limiter) == 1

    trusted = settings(rate_limit=5.0, trusted_proxies=("127.0.0.1",))
    async with running_api(client, trusted, monotonic=FakeClock()) as api:

        async def get(ip: str) -> int:
            r = await api.http.get("/nothing-here", headers={"X-Forwarded-For": ip})
            return r.status_code

        assert [await get("192.0.2.1") for _ in range(11)] == [404] * 10 + [429]
        assert await get("192.0.2.2") == 404
        assert await get("192.0.2.1") == 429
        assert len(api.web.limiter) == 2


def test_rate_limiter_refills() -> None:
    """T22 (unit): the bucket refills at ``rate``, up to ``burst``."""
    clock = FakeClock(0.0)
    limiter = RateLimiter(5.0, clock=clock)
    assert limiter.burst == 10
    for _ in range(10):
        limiter.check("a")
    with pytest.raises(ApiError) as refused:
        limiter.check("a")
    assert refused.value.code is Code.RATE_LIMITED
    assert refused.value.status == 429
    assert int(refused.value.headers["Retry-After"]) >= 1
    limiter.check("b")  # other clients have their own bucket
    clock.advance(0.2)  # one token
    limiter.check("a")
    with pytest.raises(ApiError):
        limiter.check("a")
    clock.advance(3600)  # refills up to the burst only
    for _ in range(10):
        limiter.check("a")
    with pytest.raises(ApiError):
        limiter.check("a")


def test_rate_limiter_memory_is_bounded() -> None:
    """T22 (unit): 100,000 distinct addresses keep at most ``max_clients`` buckets, the
    least recently seen evicted."""
    limiter = RateLimiter(5.0, max_clients=1000, clock=FakeClock(0.0))
    for i in range(100_000):
        limiter.check(str(ipaddress.IPv4Address(0x0A000000 + i)))
    print(f"T22: {len(limiter)} buckets after 100,000 distinct IPs (max_clients=1000)")
    assert len(limiter) == 1000
    last = str(ipaddress.IPv4Address(0x0A000000 + 99_999))
    for _ in range(9):
        limiter.check(last)  # kept: its bucket has 9 of 10 tokens left
    with pytest.raises(ApiError):
        limiter.check(last)


#: (trusted proxies, peer, X-Forwarded-For, the client address believed)
CLIENT_ADDRESSES: list[tuple[tuple[str, ...], str | None, str | None, str]] = [
    ((), "203.0.113.9", "198.51.100.1", "203.0.113.9"),  # no proxy trusted
    (("127.0.0.1",), "203.0.113.9", "198.51.100.1", "203.0.113.9"),  # peer not trusted
    (("127.0.0.1",), "127.0.0.1", None, "127.0.0.1"),
    (("127.0.0.1",), "127.0.0.1", "", "127.0.0.1"),
    (("127.0.0.1",), "127.0.0.1", "198.51.100.1", "198.51.100.1"),
    (("127.0.0.1",), "127.0.0.1", " 198.51.100.1 ", "198.51.100.1"),
    # The client can write anything left of the proxy's own entry: only the rightmost
    # untrusted hop counts.
    (("127.0.0.1",), "127.0.0.1", "6.6.6.6, 198.51.100.1", "198.51.100.1"),
    (("127.0.0.1", "10.0.0.0/8"), "127.0.0.1", "6.6.6.6, 198.51.100.1, 10.1.2.3", "198.51.100.1"),
    (("127.0.0.1", "10.0.0.0/8"), "10.9.9.9", "198.51.100.1, 10.1.2.3, 10.4.5.6", "198.51.100.1"),
    (("127.0.0.1", "10.0.0.0/8"), "127.0.0.1", "10.1.2.3, 10.4.5.6", "127.0.0.1"),  # all trusted
    # Malformed chains: nothing of them is believed once a bad hop is reached.
    (("127.0.0.1",), "127.0.0.1", "198.51.100.1, not-an-ip", "127.0.0.1"),
    (("127.0.0.1",), "127.0.0.1", "198.51.100.1,,", "127.0.0.1"),
    (("127.0.0.1",), "127.0.0.1", "198.51.100.1:4444", "127.0.0.1"),
    (("127.0.0.1",), "127.0.0.1", "<script>", "127.0.0.1"),
    (("127.0.0.1",), "127.0.0.1", "not-an-ip, 198.51.100.1", "198.51.100.1"),
    (("127.0.0.1",), "127.0.0.1", ",", "127.0.0.1"),
    # IPv6, and peers that are not addresses at all.
    (("::1",), "::1", "2001:db8::7", "2001:db8::7"),
    (("::1",), "::1", "2001:db8::7, ::1", "2001:db8::7"),
    (("127.0.0.1",), None, "198.51.100.1", "unknown"),
    (("127.0.0.1",), "garbage", "198.51.100.1", "garbage"),
]


@pytest.mark.parametrize(("trusted", "peer", "forwarded", "want"), CLIENT_ADDRESSES)
def test_client_address(
    trusted: tuple[str, ...], peer: str | None, forwarded: str | None, want: str
) -> None:
    """T22 (unit): which address X-Forwarded-For yields, hop by hop."""
    assert ClientAddress(trusted).of(peer, forwarded) == want


# -- T23: headers on every kind of response -------------------------------------------------

INTERNAL = {"error": "internal error", "code": "INTERNAL"}


def check_security_headers(r: httpx.Response) -> list[str]:
    """What is wrong with a response's security headers."""
    wrong = []
    csp = r.headers.get("Content-Security-Policy", "")
    directives = {
        d.split()[0]: d.split(None, 1)[1] if " " in d.strip() else ""
        for d in (part.strip() for part in csp.split(";"))
        if d
    }
    for name, value in {
        "frame-ancestors": "'none'",
        "object-src": "'none'",
        "base-uri": "'none'",
    }.items():
        if directives.get(name) != value:
            wrong.append(f"CSP {name} is {directives.get(name)!r}")
    if "'unsafe-inline'" in csp or "'unsafe-eval'" in csp or "default-src" not in directives:
        wrong.append(f"weak CSP {csp!r}")
    expected_headers = {
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }
    if r.url.path == "/health" or r.url.path.startswith(("/api/", "/auth/")):
        expected_headers["Cache-Control"] = "no-store"
    for name, value in expected_headers.items():
        if r.headers.get(name) != value:
            wrong.append(f"{name} is {r.headers.get(name)!r}")
    for name in ("Access-Control-Allow-Origin", "Access-Control-Allow-Credentials", "Server"):
        if name in r.headers:
            wrong.append(f"{name} is set: {r.headers[name]!r}")
    return wrong


async def test_security_headers_on_every_response(
    client: gqm.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """T23: every status the API answers with carries the security headers, and a 500
    says nothing of its cause."""
    async with running_api(client) as api:
        job = await client.enqueue("noop", None, queue="q")
        viewer = {"X-API-Key": KEYS["viewer"], "Origin": EVIL}
        admin = {"X-API-Key": KEYS["admin"], "Origin": EVIL}
        for _ in range(api.web.settings.login_attempts_per_user):
            await post_login(api, "viewer", "wrong")

        async def boom() -> None:
            raise RuntimeError("secret detail from deep inside")

        responses: dict[int, httpx.Response] = {}

        async def record(status: int, r: httpx.Response) -> None:
            assert r.status_code == status, (status, r.text)
            responses[status] = r

        await record(200, await api.http.get("/api/v1/queues", headers=viewer))
        health = await api.http.get("/health", headers={"Origin": EVIL})
        await record(204, await api.http.delete(f"/api/v1/jobs/{job.id}", headers=admin))
        await record(400, await api.http.get("/api/v1/queues/q/dead-letter?page=0", headers=viewer))
        await record(401, await api.http.get("/api/v1/queues", headers={"Origin": EVIL}))
        await record(403, await api.http.post("/api/v1/queues/q/pause", headers=viewer))
        await record(404, await api.http.get("/api/v1/no-such-route", headers=viewer))
        await record(405, await api.http.get("/auth/login", headers=viewer))
        oversize = {"job_ids": ["x" * 200] * ((api.web.settings.max_body // 200) + 10)}
        await record(
            413, await api.http.post("/api/v1/jobs/batch/delete", headers=admin, json=oversize)
        )
        await record(
            415,
            await api.http.post(
                "/api/v1/jobs/batch/delete",
                headers=admin | {"Content-Type": "text/plain"},
                content=b'{"job_ids": ["x"]}',
            ),
        )
        await record(429, await post_login(api, "viewer", "wrong"))
        monkeypatch.setattr(api.web.client, "queues", boom)
        await record(500, await api.http.get("/api/v1/queues", headers=viewer))

        failures = {
            status: check_security_headers(r)
            for status, r in [*responses.items(), (health.status_code, health)]
        }
        assert not {s: w for s, w in failures.items() if w}, failures
        assert responses[200].headers["Content-Type"] == "application/json"
        assert responses[405].headers["Allow"] == "POST"
        for status, r in responses.items():
            if status not in (200, 204):
                assert r.json()["code"] in Code.__members__, r.text
        error = responses[500]
        assert error.json() == INTERNAL
        assert b"secret" not in error.content
        assert b"Traceback" not in error.content
        assert b"RuntimeError" not in error.content
