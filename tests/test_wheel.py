"""The built wheel is complete: installed alone in a clean venv, it runs a real job.

The Lua scripts live at the top of the repository and reach the wheel only through the
build config (``force-include``), so a source checkout can pass every other test while
the published wheel is broken. This test builds the wheel, installs it with
``--no-deps`` into a fresh venv and runs one job end to end against the test Redis (on
asyncio: covering both backends is the rest of the suite's job). The dev environment's
third-party packages are made visible through a ``.pth`` file of plain path lines, so
nothing is downloaded again; plain lines do not process the ``.pth`` files inside those
directories, so an editable gqm stays invisible.
"""

from __future__ import annotations

import importlib.util
import json
import os
import site
import subprocess
import sys
import textwrap
import uuid
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Files a working wheel cannot do without.
REQUIRED_IN_WHEEL = (
    "gqm/lua/claim.lua",
    "gqm/lua/_common.lua",
    "gqm/py.typed",
    "gqm_web/__init__.py",
)

#: Run by the clean venv's python: one job through the installed gqm.
JOB_SCRIPT = textwrap.dedent(
    """
    import importlib.resources
    import importlib.util
    import json
    import os

    import anyio

    import gqm

    URL = os.environ["GQM_WHEEL_TEST_REDIS_URL"]
    PREFIX = os.environ["GQM_WHEEL_TEST_PREFIX"]


    async def run_one_job():
        server = gqm.Server(URL, prefix=PREFIX, handle_signals=False)

        @server.handler("wheel.double")
        async def double(job):
            return {"doubled": job.payload["n"] * 2}

        with anyio.fail_after(60):
            async with gqm.Client(URL, prefix=PREFIX) as client:
                job = await client.enqueue("wheel.double", {"n": 21})
                async with anyio.create_task_group() as tg:
                    await tg.start(server.serve)
                    result = await client.result(job.id, timeout=30)
                    server.shutdown()
        return result


    result = anyio.run(run_one_job)
    gqm_web = importlib.util.find_spec("gqm_web")
    print(
        json.dumps(
            {
                "gqm_file": gqm.__file__,
                "gqm_web_origin": gqm_web.origin if gqm_web else None,
                "packaged_claim_lua": importlib.resources.files("gqm")
                .joinpath("lua", "claim.lua")
                .is_file(),
                "result": result,
            }
        )
    )
    """
)


def _run(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Run a command; on failure, fail the test with its whole output."""
    proc = subprocess.run(
        args,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"command failed ({proc.returncode}): {' '.join(args)}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc.stdout


def _clean_env() -> dict[str, str]:
    """This process's environment without what would leak the dev install into a child."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__"):
        env.pop(name, None)
    env["PYTHONNOUSERSITE"] = "1"  # the user site, if used here, is passed on explicitly
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def _dependency_dirs() -> list[str]:
    """The site directories this interpreter imports third-party packages from."""
    candidates = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        candidates.append(site.getusersitepackages())
    return [p for p in dict.fromkeys(candidates) if p in sys.path and Path(p).is_dir()]


def test_wheel_installs_alone_and_runs_a_job(tmp_path: Path, redis_url: str) -> None:
    """The wheel holds the Lua scripts, the typing marker and gqm_web, and, installed
    alone in a clean venv, serves a real job."""
    if importlib.util.find_spec("build") is None:
        pytest.fail(
            "the 'build' package is missing: install the dev extra (pip install -e '.[dev]') "
            "to build the wheel under test"
        )
    env = _clean_env()

    # 1. Build the wheel (isolated build, as pip and CI do it).
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPO)],
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    wheels = sorted(dist.glob("gqm-*.whl"))
    assert len(wheels) == 1, f"expected one wheel, found {wheels}"
    wheel = wheels[0]
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    missing = [name for name in REQUIRED_IN_WHEEL if name not in names]
    assert not missing, f"{wheel.name} lacks {missing}"

    # 2. A clean venv with only the wheel installed (before the .pth exists, so pip
    #    cannot mistake the dev environment's gqm for an installed one).
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=env, timeout=120)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = str(bindir / "python")
    _run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        cwd=tmp_path,
        env=env,
        timeout=120,
    )

    # 3. Make the dev environment's dependencies importable without downloading them.
    purelib = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=tmp_path,
        env=env,
        timeout=30,
    ).strip()
    (Path(purelib) / "_gqm_wheel_test_deps.pth").write_text(
        "".join(f"{d}\n" for d in _dependency_dirs()), encoding="utf-8"
    )

    # 4. Run one job through the installed gqm (asyncio), against the test Redis.
    workdir = tmp_path / "job"
    workdir.mkdir()
    script = workdir / "run_job.py"
    script.write_text(JOB_SCRIPT, encoding="utf-8")
    env["GQM_WHEEL_TEST_REDIS_URL"] = redis_url
    env["GQM_WHEEL_TEST_PREFIX"] = f"wheel{uuid.uuid4().hex[:8]}"
    out = _run([python, str(script)], cwd=workdir, env=env, timeout=120)
    report = json.loads(out.strip().splitlines()[-1])

    gqm_file = Path(report["gqm_file"]).resolve()
    assert gqm_file.is_relative_to(venv.resolve()), f"gqm imported from {gqm_file}"
    assert not gqm_file.is_relative_to(REPO / "src")
    assert report["gqm_web_origin"] is not None
    assert Path(report["gqm_web_origin"]).resolve().is_relative_to(venv.resolve())
    assert report["packaged_claim_lua"] is True
    assert report["result"] == {"doubled": 42}
