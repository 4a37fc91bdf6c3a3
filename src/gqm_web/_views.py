"""Turning declared routes into Quart views: the guard (authentication, role, CSRF),
input parsing, and JSON responses and errors."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec
from quart import Blueprint, Response, current_app, g, request

from gqm.errors import ConfigurationError, NotFoundError, RedisError

from ._errors import ApiError, Code
from ._routing import ROUTES, Access, Route, convert_param, convert_query, decode_body
from ._security import check_csrf, check_loopback_host, check_same_origin
from ._types import Envelope, ErrorBody

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._auth import Principal
    from ._state import Web

log = logging.getLogger("gqm_web")

_encoder = msgspec.json.Encoder()
JSON = "application/json"


def current_web() -> Web:
    web: Web = current_app.extensions["gqm_web"]
    return web


def cookie_name(web: Web) -> str:
    # The __Host- prefix makes browsers refuse the cookie unless it is Secure, host-only
    # and for Path=/, so a sibling subdomain cannot plant or shadow it.
    return "__Host-gqm_session" if web.settings.cookie_secure else "gqm_session"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(body), status=status, content_type=JSON, headers=headers)


def error_response(
    code: Code, message: str, status: int, headers: dict[str, str] | None = None
) -> Response:
    return json_response(ErrorBody(error=message, code=code), status, headers)


async def guard(web: Web, route: Route) -> Principal | None:
    """Authenticate the caller and check the route's access level and CSRF proof."""
    if route.access is Access.PUBLIC:
        if route.mutating:
            check_same_origin(request.headers, request.host)
        return None
    if not web.settings.auth_enabled:
        check_loopback_host(request.host)
    principal = await web.auth.authenticate(request.headers, request.cookies.get(cookie_name(web)))
    if principal is None:
        raise ApiError(Code.UNAUTHORIZED, "authentication required: log in or send X-API-Key")
    if route.access is Access.ADMIN and principal.role != "admin":
        raise ApiError(Code.FORBIDDEN, "this action needs the admin role")
    if route.mutating and principal.via != "api_key":
        check_csrf(request.headers, request.host)
    return principal


def make_view(route: Route) -> Callable[..., Awaitable[Response]]:
    """The Quart view of a declared route."""

    async def view(**path: str) -> Response:
        web = current_web()
        try:
            g.principal = await guard(web, route)
            kwargs: dict[str, Any] = {
                name: convert_param(name, path[name], type_) for name, type_ in route.params.items()
            }
            if route.query is not None:
                kwargs["query"] = convert_query(request.args.to_dict(), route.query)
            if route.body is not None:
                raw = await request.get_data(cache=False, as_text=False)
                kwargs["body"] = decode_body(raw, request.headers.get("Content-Type"), route.body)
            result = await route.endpoint(web, **kwargs)
        except NotFoundError as err:
            raise ApiError(Code.NOT_FOUND, str(err)) from None
        except ConfigurationError as err:
            raise ApiError(Code.BAD_REQUEST, str(err)) from None
        except RedisError as err:
            log.warning("Redis error in %s %s: %s", route.method, route.path, err)
            raise ApiError(Code.UNAVAILABLE, "Redis is unavailable") from None
        if isinstance(result, Response):
            return result
        if result is None:
            return Response(b"", status=204)
        if isinstance(result, tuple):
            body, status = result
            return json_response(body, status)
        assert isinstance(result, Envelope)
        return json_response(result, route.status)

    view.__name__ = route.endpoint_name
    return view


def build_blueprint() -> Blueprint:
    """One blueprint with every declared route; the same for Quart and QuartTrio apps."""
    blueprint = Blueprint("gqm_web", __name__)
    for route in ROUTES:
        blueprint.add_url_rule(
            route.rule, route.endpoint_name, make_view(route), methods=[route.method]
        )
    return blueprint
