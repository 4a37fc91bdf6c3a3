"""Who is calling: passwords (argon2id), login sessions, API keys and login throttling.

Secrets never rest in Redis in usable form: a session is stored under the SHA-256 of its
token, API keys are compared as SHA-256 digests, and revoked keys are listed by digest.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from typing import TYPE_CHECKING, Literal

import anyio
import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from gqm import _scripts as scripts

from ._errors import ApiError, Code

if TYPE_CHECKING:
    from collections.abc import Callable

    from gqm import Client
    from gqm._redis import Driver

    from ._security import HeaderLookup
    from ._settings import User, WebSettings

log = logging.getLogger("gqm_web.auth")

Role = Literal["admin", "viewer"]
Via = Literal["session", "api_key", "none"]


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated caller. ``session`` is the stored session's key (hash) if any."""

    name: str
    role: Role
    via: Via
    session: str | None = None


class _Session(msgspec.Struct, kw_only=True):
    user: str
    role: Role
    #: The fingerprint of the user's credentials at login: a changed password or role
    #: makes it stale, which revokes the session.
    creds: str
    created: float
    seen: float


_session_decoder = msgspec.json.Decoder(_Session)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def credentials_fingerprint(user: User) -> str:
    """Changes whenever the user's password hash or role changes."""
    return _sha256(f"{user.username}\0{user.password_hash}\0{user.role}")


class Authenticator:
    """Authenticates requests and logins against the settings' users and keys.

    :param clock: the wall clock for session expiry (injectable for tests).
    """

    def __init__(self, settings: WebSettings, client: Client, clock: Callable[[], float]) -> None:
        self.settings = settings
        self._client = client
        self._clock = clock
        self._users = {u.username: u for u in settings.users}
        self._keys = [
            (hashlib.sha256(k.key.encode()).digest(), k.name, k.role) for k in settings.api_keys
        ]
        self._hasher = PasswordHasher()
        self._hash_slots = anyio.CapacityLimiter(settings.max_concurrent_hashes)
        self._dummy_hash: str | None = None
        self._rehashed: dict[str, str] = {}
        base = f"{client.keys.prefix}:web"
        self._session_prefix = f"{base}:session:"
        self._attempts_prefix = f"{base}:login:"
        self._revoked_key = f"{base}:revoked-keys"
        self._rehash_key = f"{base}:rehashed"

    # -- requests --------------------------------------------------------------------

    async def authenticate(
        self, headers: HeaderLookup, session_token: str | None
    ) -> Principal | None:
        """The caller of a request, or None. An ``X-API-Key`` header wins over a cookie
        (and a wrong key is not rescued by a valid cookie)."""
        if not self.settings.auth_enabled:
            return Principal(name="anonymous", role="admin", via="none")
        key = headers.get("X-API-Key")
        if key is not None:
            return await self._by_key(key)
        if session_token:
            return await self._by_session(session_token)
        return None

    async def _by_key(self, key: str) -> Principal | None:
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found: tuple[str, Role] | None = None
        # Every key is compared, in constant time, whether or not one matched already.
        for stored, name, role in self._keys:
            if hmac.compare_digest(stored, digest):
                found = (name, role)  # type: ignore[assignment]
        if found is None:
            return None
        driver = await self._driver()
        if await driver.execute("SISMEMBER", self._revoked_key, digest.hex()):
            return None
        return Principal(name=found[0], role=found[1], via="api_key")

    async def _by_session(self, token: str) -> Principal | None:
        if len(token) > 128:
            return None
        key = self._session_prefix + _sha256(token)
        driver = await self._driver()
        raw = await driver.execute("GET", key)
        if raw is None:
            return None
        try:
            session = _session_decoder.decode(raw)
        except msgspec.DecodeError:
            await driver.execute("DEL", key)
            return None
        now = self._clock()
        user = self._users.get(session.user)
        if (
            user is None
            or not hmac.compare_digest(session.creds, credentials_fingerprint(user))
            or now - session.created >= self.settings.session_ttl
            or now - session.seen >= self.settings.session_idle
        ):
            await driver.execute("DEL", key)
            return None
        # Refresh "last seen" at most every tenth of the idle timeout: reads stay reads.
        if now - session.seen >= min(60.0, self.settings.session_idle / 10):
            session.seen = now
            await driver.execute(
                "SET", key, msgspec.json.encode(session), "PX", self._session_ms(session, now)
            )
        return Principal(name=user.username, role=user.role, via="session", session=key)  # type: ignore[arg-type]

    def _session_ms(self, session: _Session, now: float) -> int:
        left = min(self.settings.session_idle, session.created + self.settings.session_ttl - now)
        return max(1, int(left * 1000))

    # -- login / logout --------------------------------------------------------------

    async def login(self, username: str, password: str, client_ip: str) -> tuple[Principal, str]:
        """Check a password and open a session; returns the caller and the new token.

        The attempt is counted (per user and per IP) before the password is checked, so
        parallel guesses cannot outrun the limit. A successful login is not counted.
        Unknown users cost a verification too, so they cannot be told apart by timing.
        """
        window_ms = int(self.settings.login_window * 1000)
        counters = [
            f"{self._attempts_prefix}user:{_sha256(username)[:32]}",
            f"{self._attempts_prefix}ip:{client_ip}",
        ]
        driver = await self._driver()
        throttle = scripts.script("web_throttle")
        per_user, per_ip = await scripts.run(driver, throttle, counters, [window_ms, "count"])
        if (
            per_user > self.settings.login_attempts_per_user
            or per_ip > self.settings.login_attempts_per_ip
        ):
            raise ApiError(
                Code.RATE_LIMITED,
                "too many login attempts: try again later",
                headers={"Retry-After": str(int(self.settings.login_window))},
            )
        user = self._users.get(username)
        stored = await self._stored_hash(user) if user else await self._dummy()
        verified = await anyio.to_thread.run_sync(
            self._verify, stored, password, limiter=self._hash_slots
        )
        if user is None or not verified:
            raise ApiError(Code.UNAUTHORIZED, "invalid username or password")
        await scripts.run(driver, throttle, counters, [window_ms, "refund"])
        if self._hasher.check_needs_rehash(stored):
            await self._rehash(user, password)
        token = secrets.token_urlsafe(32)  # 256 bits from the OS CSPRNG
        now = self._clock()
        session = _Session(
            user=user.username,
            role=user.role,  # type: ignore[arg-type]
            creds=credentials_fingerprint(user),
            created=now,
            seen=now,
        )
        key = self._session_prefix + _sha256(token)
        await driver.execute(
            "SET", key, msgspec.json.encode(session), "PX", self._session_ms(session, now)
        )
        principal = Principal(name=user.username, role=user.role, via="session", session=key)  # type: ignore[arg-type]
        return principal, token

    async def logout(self, principal: Principal) -> bool:
        """Delete the caller's session on the server; False when there was none."""
        if principal.session is None:
            return False
        driver = await self._driver()
        return bool(await driver.execute("DEL", principal.session))

    async def forget_token(self, token: str) -> None:
        """Delete the session of a token, if it has one."""
        if len(token) <= 128:
            driver = await self._driver()
            await driver.execute("DEL", self._session_prefix + _sha256(token))

    async def revoke_key(self, name: str) -> bool:
        """Revoke the API key called ``name`` for every server sharing this Redis; it is
        refused from the next request on. False when no key has this name."""
        digests = [d.hex() for d, n, _role in self._keys if n == name]
        if not digests:
            return False
        driver = await self._driver()
        await driver.execute("SADD", self._revoked_key, *digests)
        return True

    # -- passwords -------------------------------------------------------------------

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    async def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = await anyio.to_thread.run_sync(
                self._hasher.hash, secrets.token_hex(16), limiter=self._hash_slots
            )
        return self._dummy_hash

    async def _stored_hash(self, user: User) -> str:
        """The user's hash: the configured one, or its upgrade made at an earlier login
        (only while the configured hash is the one it upgraded)."""
        if user.username in self._rehashed:
            return self._rehashed[user.username]
        driver = await self._driver()
        raw = await driver.execute("HGET", self._rehash_key, user.username)
        if raw is not None:
            text: str = raw.decode()
            of, _, upgraded = text.partition(" ")
            if hmac.compare_digest(of, _sha256(user.password_hash)):
                self._rehashed[user.username] = upgraded
                return upgraded
        return user.password_hash

    async def _rehash(self, user: User, password: str) -> None:
        """Store a hash with the current parameters (the config file keeps the old one;
        ``gqm hash-password`` makes a new one for it)."""
        upgraded = await anyio.to_thread.run_sync(
            self._hasher.hash, password, limiter=self._hash_slots
        )
        self._rehashed[user.username] = upgraded
        driver = await self._driver()
        value = f"{_sha256(user.password_hash)} {upgraded}"
        await driver.execute("HSET", self._rehash_key, user.username, value)
        log.info("password hash of %r upgraded to the current argon2 parameters", user.username)

    async def prepare(self) -> None:
        """Compute the dummy hash ahead of the first login (it takes a hash's time)."""
        if self.settings.users:
            await self._dummy()

    async def _driver(self) -> Driver:
        return await self._client._driver()
