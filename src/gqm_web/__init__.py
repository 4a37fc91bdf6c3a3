"""gqm_web: the HTTP API and dashboard of gqm (coming with the web issue).

Install it with ``pip install 'gqm[web]'``; the core never imports this package unless
the API is enabled.
"""

__all__: list[str] = []
