"""The route table: each route's method, path, access level and typed inputs/outputs.

Routes are declared once, here, with :func:`route`; the app factory turns them into
Quart views and the OpenAPI document is generated from the same declarations.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, get_args

import msgspec

from ._errors import ApiError, Code
from ._types import JobId


class Access(enum.Enum):
    """Who may call a route. ``ADMIN`` routes change state and also need CSRF proof when
    the caller is authenticated by cookie."""

    PUBLIC = "public"
    AUTHENTICATED = "authenticated"
    VIEWER = "viewer"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Route:
    """One route. ``path`` is in OpenAPI form (``/api/v1/jobs/{id}``)."""

    method: str
    path: str
    access: Access
    endpoint: Callable[..., Awaitable[Any]]
    summary: str
    tag: str
    #: The type of ``data`` in the success body (None: 204 No Content).
    data: Any
    params: dict[str, Any] = field(default_factory=dict)
    query: type[msgspec.Struct] | None = None
    body: type[msgspec.Struct] | None = None
    status: int = 200
    paged: bool = False
    #: Statuses of errors this route may answer with, besides the common ones.
    errors: tuple[int, ...] = ()
    #: Whether the success body is ``{"data": ...}`` (the OpenAPI document is not).
    envelope: bool = True

    @property
    def mutating(self) -> bool:
        return self.method not in ("GET", "HEAD")

    @property
    def rule(self) -> str:
        """The path as a Quart URL rule (job ids may contain ``/``)."""

        def convert(m: re.Match[str]) -> str:
            name = m.group(1)
            return f"<path:{name}>" if self.params.get(name) is JobId else f"<{name}>"

        return re.sub(r"\{(\w+)\}", convert, self.path)

    @property
    def endpoint_name(self) -> str:
        return self.endpoint.__name__


ROUTES: list[Route] = []


def route(
    method: str,
    path: str,
    *,
    access: Access,
    data: Any,
    tag: str,
    params: dict[str, Any] | None = None,
    query: type[msgspec.Struct] | None = None,
    body: type[msgspec.Struct] | None = None,
    status: int = 200,
    paged: bool = False,
    errors: tuple[int, ...] = (),
    envelope: bool = True,
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Declare a route; the endpoint's docstring's first line is its summary."""

    def register(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        summary = (fn.__doc__ or fn.__name__).strip().splitlines()[0]
        ROUTES.append(
            Route(
                method=method,
                path=path,
                access=access,
                endpoint=fn,
                summary=summary,
                tag=tag,
                data=data,
                params=params or {},
                query=query,
                body=body,
                status=status,
                paged=paged,
                errors=errors,
                envelope=envelope,
            )
        )
        return fn

    return register


#: How much of a refused value an error message repeats.
_MAX_ECHO = 80


def _hint(type_: Any) -> str | None:
    """The ``hint`` of an ``Annotated[..., Meta(extra={"hint": ...})]`` type."""
    for meta in get_args(type_)[1:]:
        if isinstance(meta, msgspec.Meta) and meta.extra:
            hint = meta.extra.get("hint")
            if isinstance(hint, str):
                return hint
    return None


def convert_param(name: str, value: str, type_: Any) -> Any:
    """A path parameter checked against its declared type (400 when it does not fit)."""
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as err:
        shown = repr(value if len(value) <= _MAX_ECHO else value[:_MAX_ECHO] + "...")
        raise ApiError(Code.BAD_REQUEST, f"invalid {name} {shown}: {_hint(type_) or err}") from None


def convert_query(args: dict[str, str], type_: type[msgspec.Struct]) -> Any:
    """The query string as its declared struct; numbers are parsed from their text."""
    try:
        return msgspec.convert(args, type_, strict=False)
    except msgspec.ValidationError as err:
        raise ApiError(Code.BAD_REQUEST, f"invalid query parameter: {_where(err)}") from None


def decode_body(raw: bytes | str, content_type: str | None, type_: type[msgspec.Struct]) -> Any:
    """A JSON body as its declared struct: 415 unless the content type is JSON, 400 when
    the JSON is malformed or does not fit."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime != "application/json":
        raise ApiError(
            Code.UNSUPPORTED_MEDIA_TYPE, "the request body must be JSON (application/json)"
        )
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.ValidationError as err:
        raise ApiError(Code.BAD_REQUEST, f"invalid body: {_where(err)}") from None
    except msgspec.DecodeError as err:
        raise ApiError(Code.BAD_REQUEST, f"malformed JSON: {err}") from None


def _where(err: msgspec.ValidationError) -> str:
    # msgspec says "... - at `$.page`"; the dollar path is clear enough for an API.
    return str(err)
