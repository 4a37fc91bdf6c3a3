"""Request-level defences: client IPs behind proxies, per-IP rate limits, CSRF checks
and the security headers of every response."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from ._errors import ApiError, Code
from ._settings import is_loopback

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from werkzeug.datastructures import Headers


class HeaderLookup(Protocol):
    """Request headers, looked up case-insensitively."""

    def get(self, key: str) -> str | None: ...


#: Allows our own scripts and styles only; nothing may frame the dashboard.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
}

#: The header a browser page must send with every cookie-authenticated change. A
#: cross-site form cannot set it, and a cross-site fetch cannot without a CORS
#: preflight, which this API never grants.
CSRF_HEADER = "X-GQM-CSRF"


def add_security_headers(headers: Headers, path: str, *, tls: bool) -> None:
    """Set the security headers on a response (any type, including errors)."""
    headers.update(SECURITY_HEADERS)
    if tls:
        headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
    if path == "/health" or path.startswith(("/api/", "/auth/")):
        headers["Cache-Control"] = "no-store"
    headers.pop("Server", None)


class ClientAddress:
    """Finds the client IP of a request; ``X-Forwarded-For`` is believed only when the
    peer is a trusted proxy, and then only up to the first untrusted hop."""

    def __init__(self, trusted: Sequence[str]) -> None:
        self._trusted = [ipaddress.ip_network(t, strict=False) for t in trusted]

    def _is_trusted(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self._trusted)

    def of(self, peer: str | None, forwarded_for: str | None) -> str:
        peer = peer or "unknown"
        if not self._trusted or not forwarded_for or not self._is_trusted(peer):
            return peer
        for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer  # a malformed chain: trust nothing of it
            if not self._is_trusted(hop):
                return hop
        return peer


class RateLimiter:
    """A token bucket per client IP: ``rate`` requests per second, bursts of ``burst``.

    At most ``max_clients`` buckets are kept (least recently used evicted), so a flood
    of source addresses cannot grow memory without bound; an evicted client starts over
    with a full bucket.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else 2 * rate
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, client: str) -> None:
        """Take a token for ``client``, or raise a 429 with ``Retry-After``."""
        now = self._clock()
        tokens, stamp = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens < 1:
            self._remember(client, tokens, now)
            wait = (1 - tokens) / self.rate
            raise ApiError(
                Code.RATE_LIMITED,
                "too many requests: slow down",
                headers={"Retry-After": str(max(1, round(wait + 0.5)))},
            )
        self._remember(client, tokens - 1, now)

    def _remember(self, client: str, tokens: float, now: float) -> None:
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)


def check_same_origin(headers: HeaderLookup, own_host: str) -> None:
    """Refuse a request a browser marked as cross-site, or whose ``Origin`` is not ours.

    The Origin's host is compared with the request's ``Host``, not its scheme: a
    TLS-terminating proxy changes the scheme only.
    """
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise ApiError(Code.CSRF_REQUIRED, f"cross-site request refused (Sec-Fetch-Site: {site})")
    origin = headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc.lower() != own_host.lower():
        raise ApiError(Code.CSRF_REQUIRED, "cross-origin request refused (Origin mismatch)")


def check_csrf(headers: HeaderLookup, own_host: str) -> None:
    """The CSRF proof of a cookie-authenticated (or unauthenticated) change: the custom
    header, and no sign of a cross-site origin."""
    if headers.get(CSRF_HEADER) != "1":
        raise ApiError(
            Code.CSRF_REQUIRED, f"changes need the header {CSRF_HEADER}: 1 (or an API key)"
        )
    check_same_origin(headers, own_host)


def check_loopback_host(own_host: str) -> None:
    """Refuse a request not addressed to a loopback host (its ``Host`` header).

    Without users or API keys every caller is an admin, which is safe only because the
    API then listens on loopback. A web page can still reach it by DNS rebinding (its
    own name re-pointed at 127.0.0.1): the browser then sends the page's name as
    ``Host`` and a matching ``Origin``, so the same-origin checks pass. Such a request
    never names a loopback host.
    """
    try:
        hostname = urlsplit(f"//{own_host}").hostname
    except ValueError:
        hostname = None
    if hostname is None or not is_loopback(hostname):
        raise ApiError(
            Code.FORBIDDEN,
            "without authentication the API answers only requests addressed to a loopback "
            "host (such as 127.0.0.1 or localhost)",
        )
