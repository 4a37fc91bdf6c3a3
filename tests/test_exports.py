"""The public front door: ``gqm.__all__`` is sorted, complete and exact (STYLE §10.1, §10.6)."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import gqm

SRC_GQM = Path(gqm.__file__).resolve().parent


def _isort_key(name: str) -> tuple[int, list[str | int]]:
    """The order of ruff's RUF022 (selected in pyproject.toml): SCREAMING_SNAKE_CASE
    constants, then CamelCase classes, then everything else; natural order within each."""
    if len(name) > 1 and name.isupper():
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    natural = [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
    return group, natural


def _public_attributes() -> set[str]:
    return {
        name
        for name, value in vars(gqm).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        # ``from __future__ import annotations`` binds a compiler flag, not an API.
        and type(value).__module__ != "__future__"
    }


def test_all_is_sorted_as_ruff_enforces() -> None:
    """``__all__`` is in RUF022 (isort-style) order: constants, classes, then the rest."""
    assert gqm.__all__ == sorted(gqm.__all__, key=_isort_key)


def test_all_is_sorted_within_each_group() -> None:
    """Within constants, classes and other names, ``__all__`` is in plain ``sorted`` order."""
    for group in (0, 1, 2):
        names = [n for n in gqm.__all__ if _isort_key(n)[0] == group]
        assert names, f"group {group} is empty"
        assert names == sorted(names)


def test_all_has_no_duplicates() -> None:
    """No name is listed twice in ``__all__``."""
    assert len(gqm.__all__) == len(set(gqm.__all__))


def test_every_name_in_all_exists() -> None:
    """Every name in ``__all__`` is an attribute of the ``gqm`` module."""
    missing = [name for name in gqm.__all__ if not hasattr(gqm, name)]
    assert missing == []


def test_every_public_attribute_is_in_all() -> None:
    """Every public, non-module attribute of ``gqm`` is exported through ``__all__``."""
    assert _public_attributes() - set(gqm.__all__) == set()


def test_star_import_gives_exactly_all() -> None:
    """``from gqm import *`` binds exactly the names of ``__all__``."""
    namespace: dict[str, object] = {}
    exec("from gqm import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(gqm.__all__)


def test_gqm_web_imports() -> None:
    """The ``gqm_web`` package imports and declares an ``__all__`` list."""
    gqm_web = importlib.import_module("gqm_web")
    assert isinstance(gqm_web.__all__, list)


def _asyncio_imports(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name == "asyncio" or name.startswith("asyncio.") for name in names):
            lines.append(node.lineno)
    return sorted(lines)


#: The one module allowed to import asyncio: the resp driver's transport on asyncio,
#: loaded only when the running library is asyncio (see its docstring).
ASYNCIO_TRANSPORT = "_redis/_asyncio_conn.py"


def test_gqm_never_imports_asyncio() -> None:
    """No module under ``src/gqm`` imports asyncio (gqm runs on anyio only), but the
    resp driver's asyncio transport."""
    sources = sorted(SRC_GQM.rglob("*.py"))
    assert len(sources) > 10, f"found too few sources under {SRC_GQM}"
    offenders = {
        str(path.relative_to(SRC_GQM)): lines
        for path in sources
        if (lines := _asyncio_imports(path))
    }
    assert set(offenders) == {ASYNCIO_TRANSPORT}


def test_gqm_on_trio_never_loads_asyncio() -> None:
    """A trio program using gqm's client and driver does not load asyncio: the asyncio
    transport is imported only on asyncio. Run in a fresh interpreter."""
    code = (
        "import sys, trio, gqm\n"
        "from gqm._redis._resp import RespDriver\n"
        "from gqm._redis._settings import RedisSettings\n"
        "async def main():\n"
        "    d = RespDriver(RedisSettings(url='redis://127.0.0.1:1', connect_timeout=1))\n"
        "    try:\n"
        "        await d.execute('PING')\n"
        "    except gqm.RedisConnectionError:\n"
        "        pass\n"
        "trio.run(main)\n"
        "print(sorted(m for m in sys.modules if m == 'asyncio' or m.startswith('gqm._redis')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert "gqm._redis._resp" in loaded
    assert "asyncio" not in loaded
    assert "gqm._redis._asyncio_conn" not in loaded


def test_gqm_sources_have_no_textual_asyncio_import() -> None:
    """No line in ``src/gqm`` starts with ``import asyncio`` or ``from asyncio``
    (also catches imports hidden in strings passed to ``exec``), but in the asyncio
    transport."""
    pattern = re.compile(r"^\s*(import\s+asyncio\b|from\s+asyncio\b)", re.MULTILINE)
    offenders = [
        str(path.relative_to(SRC_GQM))
        for path in SRC_GQM.rglob("*.py")
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == [ASYNCIO_TRANSPORT]


def test_asyncio_import_detector_finds_imports(tmp_path: Path) -> None:
    """The AST check used above does detect every spelling of an asyncio import."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os, asyncio\n"
        "from asyncio import sleep\n"
        "import asyncio.events as ev\n"
        "if False:\n"
        "    from asyncio.tasks import Task\n"
        "from .asyncio import x\n"
        "import asyncio_extras\n",
        encoding="utf-8",
    )
    assert _asyncio_imports(sample) == [1, 2, 3, 5]
