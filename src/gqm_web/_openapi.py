"""The OpenAPI 3.1 document, generated from the route table and its msgspec types."""

from __future__ import annotations

import types
import typing
from typing import TYPE_CHECKING, Any

import msgspec

from ._routing import Access
from ._types import Envelope, ErrorBody, QueueName

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._routing import Route

REF = "#/components/schemas/{name}"

_ERRORS = {
    400: "Bad input (path, query or body)",
    401: "Not authenticated",
    403: "Not allowed (role or CSRF proof)",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflicts with the job's state",
    413: "Body too large",
    415: "Body is not JSON",
    429: "Rate limited",
    503: "Redis unavailable",
}


def _strip_none(annotation: Any) -> Any:
    """``X | None`` as ``X``: an absent query parameter is the None."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != "$defs"}


def _parameters(route: Route) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, type_ in route.params.items():
        schema = _inline(msgspec.json.schema(type_))
        out.append({"name": name, "in": "path", "required": True, "schema": schema})
    if route.query is not None:
        for f in msgspec.structs.fields(route.query):
            schema = _inline(msgspec.json.schema(_strip_none(f.type)))
            if f.default is not msgspec.NODEFAULT and f.default is not None:
                schema["default"] = f.default
            out.append({"name": f.encode_name, "in": "query", "required": False, "schema": schema})
    return out


def _names_a_queue(route: Route) -> bool:
    """Whether a query parameter names a queue (an unknown one is a 404, like a path's)."""
    if route.query is None:
        return False
    return any(_strip_none(f.type) == QueueName for f in msgspec.structs.fields(route.query))


def _error_statuses(route: Route) -> list[int]:
    statuses = {405, 503}
    if route.path != "/health":
        statuses.add(429)
    if route.params or route.query or route.body:
        statuses.add(400)
    if route.params or _names_a_queue(route):
        statuses.add(404)
    if route.body is not None:
        statuses |= {413, 415}
    if route.access is not Access.PUBLIC:
        statuses.add(401)
    if route.access is Access.ADMIN or route.mutating:
        statuses.add(403)
    statuses |= set(route.errors)
    return sorted(statuses)


def openapi_document(routes: Sequence[Route], *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``."""
    envelope: Any = Envelope  # subscripted with runtime types below
    data_types = [
        None if r.data is None else envelope[r.data] if r.envelope else r.data for r in routes
    ]
    wanted = [
        ErrorBody,
        *(t for t in data_types if t is not None),
        *(r.body for r in routes if r.body is not None),
    ]
    schemas, components = msgspec.json.schema_components(wanted, ref_template=REF)
    found = iter(schemas)
    error_schema = next(found)
    data_schemas = [None if t is None else next(found) for t in data_types]
    body_schemas = [None if r.body is None else next(found) for r in routes]
    paths: dict[str, dict[str, Any]] = {}
    for r, data_schema, body_schema in zip(routes, data_schemas, body_schemas, strict=True):
        responses: dict[str, Any] = {}
        if data_schema is None:
            responses[str(r.status)] = {"description": "Done (no content)"}
        else:
            responses[str(r.status)] = {
                "description": "OK",
                "content": {"application/json": {"schema": data_schema}},
            }
        for status in _error_statuses(r):
            responses[str(status)] = {
                "description": _ERRORS[status],
                "content": {"application/json": {"schema": error_schema}},
            }
        operation: dict[str, Any] = {
            "operationId": r.endpoint_name,
            "summary": r.summary,
            "tags": [r.tag],
            "responses": responses,
            "security": [] if r.access is Access.PUBLIC else [{"apiKey": []}, {"session": []}],
        }
        params = _parameters(r)
        if params:
            operation["parameters"] = params
        if body_schema is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body_schema}},
            }
        paths.setdefault(r.path, {})[r.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "session": {"type": "apiKey", "in": "cookie", "name": "gqm_session"},
            },
        },
    }
