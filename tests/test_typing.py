"""The generic public API type-checks from the outside: mypy --strict over tests/typing/."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from mypy import api as mypy_api

TYPING_DIR = Path(__file__).parent / "typing"
PYPROJECT = Path(__file__).parent.parent / "pyproject.toml"
REJECT_MARKER = "# mypy must reject this line"

_LINE = re.compile(
    r"^(?P<path>[^:\n]+):(?P<line>\d+): (?P<severity>error|note): (?P<message>.*?)"
    r"(?:  \[(?P<code>[a-z0-9-]+)\])?$"
)


@dataclass(frozen=True)
class Diagnostic:
    path: str
    line: int
    severity: str
    message: str
    code: str | None


def _mypy(path: Path, cache_dir: Path) -> tuple[int, str, list[Diagnostic]]:
    """Run mypy --strict on one file, in-process and without a shared cache."""
    stdout, stderr, status = mypy_api.run(
        [
            str(path),
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(cache_dir),
            "--config-file",
            str(PYPROJECT),
            "--show-error-codes",
            "--no-pretty",
            "--no-color-output",
            "--hide-error-context",
        ]
    )
    assert stderr == "", stderr
    diagnostics = [
        Diagnostic(m["path"], int(m["line"]), m["severity"], m["message"], m["code"])
        for m in map(_LINE.match, stdout.splitlines())
        if m
    ]
    return status, stdout, diagnostics


def test_typed_api_passes_strict_mypy(tmp_path: Path) -> None:
    """Every assert_type in tests/typing/typed_api.py holds under mypy --strict."""
    status, stdout, diagnostics = _mypy(TYPING_DIR / "typed_api.py", tmp_path)
    assert diagnostics == [], stdout
    assert status == 0, stdout
    # Guards against a vacuous pass (file excluded or not found).
    assert "Success: no issues found in 1 source file" in stdout


def _marked_line(path: Path) -> int:
    lines = [
        number
        for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if REJECT_MARKER in text
    ]
    assert len(lines) == 1, f"{path} must mark exactly one line with {REJECT_MARKER!r}"
    return lines[0]


def test_wrong_payload_type_is_rejected(tmp_path: Path) -> None:
    """mypy --strict rejects enqueueing a payload of the wrong type for a typed task,
    with exactly one error, on the enqueue line."""
    path = TYPING_DIR / "rejected_payload.py"
    status, stdout, diagnostics = _mypy(path, tmp_path)
    errors = [d for d in diagnostics if d.severity == "error"]
    assert status == 1, stdout
    assert [e.line for e in errors] == [_marked_line(path)], stdout
    (error,) = errors
    # mypy solves P from both arguments at once; Task is invariant in P, so Task[Email]
    # with a WrongPayload has no solution and mypy reports it as [misc] "Cannot infer
    # value of type parameter", not as [arg-type].
    if error.code == "misc":
        assert re.search(r'Cannot infer .*"enqueue"', error.message), stdout
    else:
        assert error.code == "arg-type", stdout


@pytest.mark.parametrize("name", ["typed_api.py", "rejected_payload.py"])
def test_typing_files_are_not_collected(name: str) -> None:
    """The mypy inputs are not named like test modules, so pytest never collects them."""
    assert (TYPING_DIR / name).is_file()
    assert not re.fullmatch(r"test_.*\.py|.*_test\.py", name)
