"""``gqm worker MODULE:ATTR``: run an application's server from the shell.

``ATTR`` names a :class:`gqm.Server`, or a function that returns one: called with no
argument, or with the loaded config when ``--config FILE`` is given (so an application
can build its server with ``Server.from_config(cfg)`` and register its handlers).
``Server.serve`` handles SIGINT and SIGTERM: the first drains, a second hands running
jobs back at once. Log records go to stderr through :mod:`logging`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import sys
from typing import TYPE_CHECKING

import anyio

import gqm

from ._output import OK, USAGE, CliError, help_text

if TYPE_CHECKING:
    import argparse

BACKENDS = ("asyncio", "trio")
LOG_LEVELS = ("debug", "info", "warning", "error")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "worker",
        help="run an application's gqm.Server",
        description=help_text(__doc__),
    )
    p.add_argument(
        "target",
        metavar="MODULE:ATTR",
        help="a gqm.Server, or a function returning one (imported with the current "
        "directory on sys.path; ATTR may be dotted)",
    )
    p.add_argument(
        "-c", "--config", metavar="FILE", help="load this config and pass it to ATTR(config)"
    )
    add_run_options(p, log_level="info")
    p.set_defaults(func=cmd_worker)


def add_run_options(p: argparse.ArgumentParser, *, log_level: str) -> None:
    p.add_argument("--backend", choices=BACKENDS, default="asyncio", help="default: asyncio")
    p.add_argument(
        "--log-level", choices=LOG_LEVELS, default=log_level, help=f"default: {log_level}"
    )


def setup(args: argparse.Namespace) -> None:
    """Check the backend and send log records to stderr."""
    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        raise CliError("--backend trio needs trio: pip install trio", USAGE)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )


def cmd_worker(args: argparse.Namespace) -> int:
    setup(args)
    server = load_server(args.target, args.config)
    anyio.run(server.serve, backend=args.backend)
    return OK


def load_server(target: str, config_path: str | None) -> gqm.Server:
    """Import ``MODULE:ATTR`` and get the server from it."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise CliError(f"expected MODULE:ATTR (like myapp.jobs:server), got {target!r}", USAGE)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        # Only the named module itself missing is a usage error; a missing import
        # inside it is the application's bug, reported with its traceback.
        if err.name is None or not (module_name + ".").startswith(err.name + "."):
            raise
        raise CliError(f"cannot import {module_name}: {err}", USAGE) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"{module_name} has no attribute {attr!r}", USAGE) from None
    if isinstance(obj, gqm.Server):
        if config_path:
            raise CliError(
                f"--config needs a function taking the config, but {target} is a Server", USAGE
            )
        return obj
    if not callable(obj):
        raise CliError(f"{target} is neither a gqm.Server nor a function returning one", USAGE)
    args: tuple[object, ...] = ()
    if config_path:
        from gqm.config import load_config_file

        args = (load_config_file(config_path),)
    try:
        inspect.signature(obj).bind(*args)
    except TypeError:
        given = "the config" if args else "no arguments"
        raise CliError(f"{target} cannot be called with {given}", USAGE) from None
    except ValueError:  # no signature to check (a builtin): just call it
        pass
    server = obj(*args)
    if not isinstance(server, gqm.Server):
        raise CliError(f"{target}() returned {type(server).__name__}, not a gqm.Server", USAGE)
    return server
