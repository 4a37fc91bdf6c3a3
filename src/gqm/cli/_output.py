"""What every command shares: the error that ends a command, and how results are printed.

Tables are plain aligned columns (no dependency); ``--json`` prints one JSON document
per command on stdout, built with :func:`msgspec.to_builtins` (datetimes become ISO 8601
strings, enums their values).
"""

from __future__ import annotations

import re
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

#: Exit codes: success, an operation that failed (no such job, Redis down), and a usage or
#: configuration error (bad arguments, an invalid config file).
OK, FAILED, USAGE = 0, 1, 2


class CliError(Exception):
    """Ends a command: ``message`` goes to stderr as one line, ``code`` is the exit code."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


def error(message: str) -> None:
    """Print one line to stderr, prefixed with the program name."""
    print(f"gqm: {message}", file=sys.stderr)


def help_text(doc: str | None) -> str | None:
    """A module docstring without its first paragraph (the title) and reST markup, as a
    command's ``--help`` description."""
    if not doc:
        return None
    body = doc.split("\n\n", 1)[-1]
    return re.sub(r":\w+:`~?([^`]*)`", r"\1", body).replace("``", "")


def print_json(value: Any) -> None:
    print(msgspec.json.encode(msgspec.to_builtins(value)).decode())


def cell(value: Any) -> str:
    """How one value reads in a table or a detail view."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return msgspec.json.encode(msgspec.to_builtins(value)).decode()


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Aligned columns under upper-case headers; numbers are right-aligned."""
    texts = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in texts:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    numeric = [
        bool(texts) and all(_is_number(row[i]) for row in texts) for i in range(len(headers))
    ]

    def line(values: Sequence[str], align: Sequence[bool]) -> str:
        parts = [
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, align, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line([h.upper() for h in headers], numeric)]
    out += [line(row, numeric) for row in texts]
    return "\n".join(out)


def details(pairs: Iterable[tuple[str, Any]]) -> str:
    """``key: value`` lines with the values aligned."""
    items = [(k, cell(v)) for k, v in pairs]
    width = max((len(k) for k, _ in items), default=0) + 1
    return "\n".join(f"{k + ':':<{width}} {v}".rstrip() for k, v in items)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == "-"
    return True


def confirm(question: str, *, yes: bool) -> None:
    """Ask ``question [y/N]`` on a terminal; without one, only ``--yes`` confirms.

    :raises CliError: the answer was not yes, or there is no terminal and no ``--yes``.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError("stdin is not a terminal: pass --yes to confirm", USAGE)
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise CliError("aborted: nothing was changed")
