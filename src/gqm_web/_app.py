"""The app factory: a Quart app on asyncio, a QuartTrio app on trio, one blueprint."""

from __future__ import annotations

import contextlib
import logging
import time
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import sniffio
from quart import Quart, Response, g, request
from werkzeug.exceptions import HTTPException

from . import _api, _auth_routes  # noqa: F401 -- importing declares their routes
from ._auth import Authenticator
from ._errors import ApiError, Code
from ._openapi import openapi_document
from ._routing import ROUTES, Access, route
from ._security import ClientAddress, RateLimiter, add_security_headers
from ._settings import WebSettings
from ._state import Web
from ._views import build_blueprint, current_web, error_response

if TYPE_CHECKING:
    from collections.abc import Callable

    from gqm import Client

log = logging.getLogger("gqm_web")

_HTTP_CODES = {
    400: Code.BAD_REQUEST,
    401: Code.UNAUTHORIZED,
    403: Code.FORBIDDEN,
    404: Code.NOT_FOUND,
    405: Code.METHOD_NOT_ALLOWED,
    409: Code.CONFLICT,
    413: Code.PAYLOAD_TOO_LARGE,
    415: Code.UNSUPPORTED_MEDIA_TYPE,
    429: Code.RATE_LIMITED,
}


def _gqm_version() -> str:
    try:
        return version("gqm")
    except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        return "0"


@cache
def _document() -> bytes:
    import msgspec

    doc = openapi_document(ROUTES, title="gqm API", version=_gqm_version())
    return msgspec.json.encode(doc)


@route(
    "GET",
    "/api/v1/openapi.json",
    access=Access.VIEWER,
    data=dict[str, Any],
    tag="meta",
    envelope=False,
)
async def openapi(web: Web) -> Response:
    """This document: the OpenAPI 3.1 description of the API."""
    return Response(_document(), content_type="application/json")


_blueprint = build_blueprint()


def create_app(
    client: Client,
    settings: WebSettings | None = None,
    *,
    backend: str | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> Quart:
    """Build the API app over ``client`` (which must stay open while it serves).

    :param backend: ``"asyncio"`` (a Quart app) or ``"trio"`` (a QuartTrio app); by
        default the running async library, else asyncio.
    :param clock: wall-clock time for session expiry (tests inject their own).
    :param monotonic: the rate limiter's clock (likewise).
    """
    settings = settings or WebSettings()
    if backend is None:
        try:
            backend = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            backend = "asyncio"
    app: Quart
    if backend == "trio":
        from quart_trio import QuartTrio

        app = QuartTrio("gqm_web")
    elif backend == "asyncio":
        app = Quart("gqm_web")
    else:
        raise ValueError(f"unsupported async backend {backend!r}: use 'asyncio' or 'trio'")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body,
        PROVIDE_AUTOMATIC_OPTIONS=False,
        BODY_TIMEOUT=30,
    )
    app.extensions["gqm_web"] = Web(
        client=client,
        settings=settings,
        auth=Authenticator(settings, client, clock),
        limiter=RateLimiter(settings.rate_limit, clock=monotonic),
        addresses=ClientAddress(settings.trusted_proxies),
        clock=clock,
    )
    app.register_blueprint(_blueprint)
    app.before_serving(_prepare)
    app.before_request(_before_request)
    app.after_request(_after_request)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _internal_error)
    return app


async def _prepare() -> None:
    await current_web().auth.prepare()


async def _before_request() -> None:
    web = current_web()
    ip = web.addresses.of(request.remote_addr, request.headers.get("X-Forwarded-For"))
    g.client_ip = ip
    if request.path != "/health":
        web.limiter.check(ip)


async def _after_request(response: Response) -> Response:
    add_security_headers(response.headers, request.path, tls=current_web().settings.tls)
    # Receive whatever request body the view did not read (a refusal before the body,
    # a route that takes none): answered early, hypercorn drops the keep-alive
    # connection, and on trio the response was sometimes never delivered.
    with contextlib.suppress(HTTPException):  # too large (413) or too slow: that stands
        await request.get_data(cache=False)
    return response


async def _api_error(err: ApiError) -> Response:
    return error_response(err.code, err.message, err.status, err.headers)


async def _http_error(err: HTTPException) -> Response:
    status = err.code or 500
    code = _HTTP_CODES.get(status, Code.BAD_REQUEST if status < 500 else Code.INTERNAL)
    headers = {}
    valid = getattr(err, "valid_methods", None)
    if status == 405 and valid:
        headers["Allow"] = ", ".join(valid)
    message = {
        404: "no such route",
        405: "method not allowed on this route",
        413: "the request body is too large",
    }.get(status, err.name.lower())
    return error_response(code, message, status, headers)


async def _internal_error(err: Exception) -> Response:
    # The details go to the log, never to the client.
    log.error("internal error on %s %s", request.method, request.path, exc_info=err)
    return error_response(Code.INTERNAL, "internal error", 500)
