"""The ``gqm`` command (also ``python -m gqm``).

Exit codes: 0 success, 1 an operation failed (no such job, Redis unreachable, ...),
2 a usage or configuration error. Errors are one line on stderr; an invalid config
lists each of its problems.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

import gqm

from . import _config_cmds, _dev, _queue_cmds, _worker
from ._output import FAILED, OK, USAGE, CliError, error

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["build_parser", "main"]

_RESERVED = {
    "dashboard": "the web dashboard",
    "tui": "the terminal UI",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gqm",
        description="gqm: a Redis job queue for asyncio and trio.",
        epilog="Run 'gqm COMMAND --help' for a command's options.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"gqm {gqm.__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    _dev.register(commands)
    _worker.register(commands)
    _queue_cmds.register(commands)
    _config_cmds.register(commands)

    p = commands.add_parser("version", help="print the version")
    p.set_defaults(func=_version)

    p = commands.add_parser("dashboard", help="(not available yet) export the dashboard")
    p.add_argument("action", nargs="?", choices=["export"])
    p.add_argument("dir", nargs="?")
    p.set_defaults(func=_reserved("dashboard"))
    p = commands.add_parser("tui", help="(not available yet) the terminal monitor")
    p.add_argument("--api-url")
    p.add_argument("--api-key")
    p.set_defaults(func=_reserved("tui"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a usage error (already printed)
        return stop.code if isinstance(stop.code, int) else USAGE
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return USAGE
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        reported = _report(err)
        if reported is None:
            raise
        return reported
    return code


def _report(err: Exception) -> int | None:
    """Print an expected error in one line (an invalid config: one per problem) and
    return the exit code; None for a bug, which keeps its traceback."""
    while isinstance(err, ExceptionGroup) and len(err.exceptions) == 1:
        err = err.exceptions[0]  # raised in a task of a task group
    config = sys.modules.get("gqm.config")  # not imported: none of its errors was raised
    if isinstance(err, CliError):
        error(str(err))
        return err.code
    if config is not None and isinstance(err, config.ConfigError):
        _config_cmds.print_problems(err)
        return USAGE
    if isinstance(err, BrokenPipeError):  # `gqm jobs ... | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return FAILED
    if isinstance(err, gqm.GqmError | OSError):
        error(str(err))
        return USAGE if isinstance(err, gqm.ConfigurationError) else FAILED
    return None


def _version(args: argparse.Namespace) -> int:
    print(f"gqm {gqm.__version__}")
    return OK


def _reserved(name: str) -> Callable[[argparse.Namespace], int]:
    def fail(args: argparse.Namespace) -> int:
        error(f"{name}: not available yet: comes with {_RESERVED[name]}")
        return USAGE

    return fail
