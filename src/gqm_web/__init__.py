"""gqm_web: the HTTP API of gqm, with authentication, served inside a gqm Server.

Install with ``pip install 'gqm[web]'``. Usually enabled through the server::

    server = gqm.Server(redis_url, api=gqm_web.WebSettings(addr="127.0.0.1:8080"))

or built by hand with :func:`create_app` and served with :func:`serve_app`.
"""

from ._app import create_app
from ._auth import Authenticator, Principal
from ._errors import ApiError, Code
from ._serve import serve_app
from ._settings import ApiKey, User, WebSettings

__all__ = [
    "ApiError",
    "ApiKey",
    "Authenticator",
    "Code",
    "Principal",
    "User",
    "WebSettings",
    "create_app",
    "serve_app",
]
