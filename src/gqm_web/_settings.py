"""The settings of the HTTP API: where it listens, who may use it, and its limits."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

import msgspec

from gqm.errors import ConfigurationError

if TYPE_CHECKING:
    from gqm.config import MonitoringConfig

ROLES = ("admin", "viewer")
MIN_API_KEY_LENGTH = 32


class User(msgspec.Struct, frozen=True, kw_only=True):
    """A dashboard login: ``password_hash`` is an argon2id hash (``gqm hash-password``)."""

    username: str
    password_hash: str
    role: str = "viewer"


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """A key for ``X-API-Key``. Requests are checked against its SHA-256 digest, and
    nothing of it is written to Redis (revocations are listed by digest)."""

    name: str
    key: str
    role: str = "viewer"


class WebSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How the API is served and secured.

    Authentication is on when there is a user or an API key; with neither, every caller
    is an admin, so the API must then listen on a loopback address.

    :param addr: ``host:port`` (``:port`` means all interfaces; port 0 picks a free one).
    :param session_ttl: absolute lifetime of a login session, in seconds.
    :param session_idle: a session unused this long expires.
    :param secure_cookies: mark the session cookie ``Secure`` (and name it ``__Host-``);
        ``None`` means "when served over TLS".
    :param rate_limit: requests per second per client IP (``/health`` is exempt); bursts
        of twice this are allowed.
    :param trusted_proxies: peers (IPs or networks) whose ``X-Forwarded-For`` is believed.
    :param login_attempts_per_user: password checks per user per ``login_window``.
    :param login_attempts_per_ip: password checks per client IP per ``login_window``.
    :param max_concurrent_hashes: password verifications running at once (each takes
        the hash's memory cost, 64 MiB by default).
    :param max_body: largest request body accepted, in bytes.
    :param graceful_timeout: seconds in-flight requests get to finish at shutdown.
    """

    addr: str = "127.0.0.1:8080"
    users: tuple[User, ...] = ()
    api_keys: tuple[ApiKey, ...] = ()
    session_ttl: float = 86400.0
    session_idle: float = 1800.0
    secure_cookies: bool | None = None
    rate_limit: float = 100.0
    trusted_proxies: tuple[str, ...] = ()
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    login_attempts_per_user: int = 5
    login_attempts_per_ip: int = 20
    login_window: float = 300.0
    max_concurrent_hashes: int = 2
    max_body: int = 64 * 1024
    graceful_timeout: float = 5.0

    def __post_init__(self) -> None:
        host_port(self.addr)
        names: set[str] = set()
        for user in self.users:
            if not user.username or user.username in names:
                raise ConfigurationError(f"user names must be unique and not empty: {user!r}")
            names.add(user.username)
            if user.role not in ROLES:
                raise ConfigurationError(f"user {user.username!r}: role must be admin or viewer")
            if not user.password_hash.startswith("$argon2id$"):
                raise ConfigurationError(
                    f"user {user.username!r}: password_hash must be an argon2id hash "
                    "(create one with `gqm hash-password`)"
                )
        for key in self.api_keys:
            if len(key.key) < MIN_API_KEY_LENGTH:
                raise ConfigurationError(
                    f"API key {key.name!r} must be {MIN_API_KEY_LENGTH} characters or more"
                )
            if key.role not in ROLES:
                raise ConfigurationError(f"API key {key.name!r}: role must be admin or viewer")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                msg = f"trusted proxy {proxy!r} is not an IP address or network"
                raise ConfigurationError(msg) from None
        if self.rate_limit <= 0:
            raise ConfigurationError("rate_limit must be > 0")
        if min(self.session_ttl, self.session_idle, self.login_window) <= 0:
            raise ConfigurationError("session_ttl, session_idle and login_window must be > 0")
        if min(self.login_attempts_per_user, self.login_attempts_per_ip) < 1:
            raise ConfigurationError("login attempt limits must be >= 1")
        if self.max_concurrent_hashes < 1 or self.max_body < 1024:
            raise ConfigurationError("max_concurrent_hashes >= 1 and max_body >= 1024")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigurationError("tls_cert_file and tls_key_file go together")
        if not self.auth_enabled and not is_loopback(host_port(self.addr)[0]):
            raise ConfigurationError(
                f"the API would listen on {self.addr} with no users and no API keys, so anyone "
                "reaching it would be an admin: add users or API keys, or listen on loopback "
                "such as 127.0.0.1:8080"
            )

    @property
    def auth_enabled(self) -> bool:
        """Whether callers must authenticate (there is a user or an API key)."""
        return bool(self.users or self.api_keys)

    @property
    def tls(self) -> bool:
        """Whether the API is served over HTTPS."""
        return self.tls_cert_file is not None

    @property
    def cookie_secure(self) -> bool:
        """Whether the session cookie is ``Secure`` (and ``__Host-`` prefixed)."""
        return self.tls if self.secure_cookies is None else self.secure_cookies

    @classmethod
    def from_config(cls, monitoring: MonitoringConfig) -> WebSettings:
        """The settings of a config file's ``monitoring:`` section."""
        auth, api = monitoring.auth, monitoring.api
        users = (
            tuple(
                User(username=u.username, password_hash=u.password_hash, role=u.role)
                for u in auth.users
            )
            if auth.enabled
            else ()
        )
        tls = api.tls
        return cls(
            addr=api.addr,
            users=users,
            api_keys=tuple(ApiKey(name=k.name, key=k.key, role=k.role) for k in api.api_keys),
            session_ttl=auth.session_ttl or 86400.0,
            rate_limit=float(api.rate_limit),
            trusted_proxies=tuple(api.trusted_proxies),
            tls_cert_file=tls.cert_file if tls and tls.cert_file else None,
            tls_key_file=tls.key_file if tls and tls.key_file else None,
        )


def host_port(addr: str) -> tuple[str, int]:
    """Split ``host:port`` (``:port`` is every interface; ``[::1]:80`` for IPv6)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigurationError(f'invalid address {addr!r}: use "host:port" or ":port"')
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
