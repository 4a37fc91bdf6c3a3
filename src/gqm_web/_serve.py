"""Serving the app with hypercorn inside the caller's task group, on either backend."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

import anyio
import sniffio
from hypercorn.config import Config

from ._settings import host_port

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskStatus
    from quart import Quart

    from ._settings import WebSettings

log = logging.getLogger("gqm_web")


def _listen(addr: str) -> socket.socket:
    host, port = host_port(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=1024)
    sock.setblocking(False)
    return sock


async def serve_app(
    app: Quart,
    settings: WebSettings,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``settings.addr`` until ``shutdown_trigger`` returns; then stop
    accepting, let in-flight requests finish (``graceful_timeout``) and return.

    ``task_status.started`` gets the bound ``(host, port)`` once the socket listens, so
    ``addr`` may use port 0.
    """
    sock = _listen(settings.addr)
    bound = sock.getsockname()[:2]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.include_server_header = False
    config.graceful_timeout = settings.graceful_timeout
    config.accesslog = None
    config.errorlog = logging.getLogger("gqm_web.http")
    if settings.tls_cert_file is not None:
        config.certfile = settings.tls_cert_file
        config.keyfile = settings.tls_key_file
    scheme = "https" if settings.tls else "http"
    log.info("API listening on %s://%s:%d", scheme, bound[0], bound[1])
    task_status.started((bound[0], bound[1]))
    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import serve as trio_serve

        await trio_serve(app, config, shutdown_trigger=shutdown_trigger)
    else:
        from hypercorn.asyncio import serve as asyncio_serve

        await asyncio_serve(app, config, shutdown_trigger=shutdown_trigger)
    log.info("API stopped")
