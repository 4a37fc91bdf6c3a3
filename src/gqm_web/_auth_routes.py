"""``/auth/login``, ``/auth/logout`` and ``/auth/me``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import g, request

from ._routing import Access, route
from ._types import Envelope, LoggedOut, LoginBody, Me
from ._views import cookie_name, json_response

if TYPE_CHECKING:
    from quart import Response

    from ._state import Web


@route(
    "POST",
    "/auth/login",
    access=Access.PUBLIC,
    data=Me,
    tag="auth",
    body=LoginBody,
    errors=(401, 403),
)
async def login(web: Web, body: LoginBody) -> Response:
    """Log in with a username and password; sets the session cookie."""
    name = cookie_name(web)
    planted = request.cookies.get(name)
    principal, token = await web.auth.login(body.username, body.password, g.client_ip)
    if planted:
        # Whatever session the browser held before is ended: a login always starts a
        # fresh one, so a cookie planted by someone else is never upgraded.
        await web.auth.forget_token(planted)
    response = json_response(
        Envelope(data=Me(username=principal.name, role=principal.role, via="session"))
    )
    response.set_cookie(
        name,
        token,
        max_age=int(web.settings.session_ttl),
        path="/",
        secure=web.settings.cookie_secure,
        httponly=True,
        samesite="Strict",
    )
    return response


@route("POST", "/auth/logout", access=Access.AUTHENTICATED, data=LoggedOut, tag="auth")
async def logout(web: Web) -> Response:
    """End the session (on the server too) and clear the cookie."""
    ended = await web.auth.logout(g.principal)
    response = json_response(Envelope(data=LoggedOut(logged_out=ended)))
    response.delete_cookie(
        cookie_name(web),
        path="/",
        secure=web.settings.cookie_secure,
        httponly=True,
        samesite="Strict",
    )
    return response


@route("GET", "/auth/me", access=Access.AUTHENTICATED, data=Me, tag="auth")
async def me(web: Web) -> Envelope[Me]:
    """Who the caller is, and their role."""
    p = g.principal
    return Envelope(data=Me(username=p.name, role=p.role, via=p.via))
