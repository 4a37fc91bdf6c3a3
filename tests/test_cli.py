"""The ``gqm`` command: every command run as a subprocess (``python -m gqm``) against the
test redis-server, with state set up and checked through :class:`gqm.Client`.

Tests are plain sync functions (setup runs in ``anyio.run``); ``worker`` and ``dev``
run on both backends through their ``--backend`` option. Long-running commands are
followed line by line with timeouts, never with sleeps.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from argon2 import PasswordHasher

import gqm
from gqm import config as gqm_config

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

#: Generous bounds for a subprocess on a loaded CI machine; none is waited for in full.
TIMEOUT = 60.0


def _env(**extra: str) -> dict[str, str]:
    """The environment of a command: no $GQM_REDIS_URL unless a test sets it."""
    env = {k: v for k, v in os.environ.items() if k != "GQM_REDIS_URL"}
    env.update(extra)
    return env


def gqm_cli(
    *args: str, input: str = "", cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m gqm ARGS`` to completion; stdin is a pipe (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "gqm", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        env=env or _env(),
    )


@pytest.fixture
def cli(redis_url: str, prefix: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli("queues", "--json")``: a command against the test Redis and prefix."""

    def run(*args: str, input: str = "") -> subprocess.CompletedProcess[str]:
        return gqm_cli(*args, "--redis", redis_url, "--prefix", prefix, input=input)

    return run


def with_client(redis_url: str, prefix: str, fn: Callable[[gqm.Client], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with gqm.Client(redis_url, prefix=prefix) as client:
            return await fn(client)

    return anyio.run(main)


def dead_jobs(redis_url: str, prefix: str, count: int) -> list[str]:
    """Ids of ``count`` jobs that ended in the dead-letter queue of ``default``."""

    async def main() -> list[str]:
        server = gqm.Server(redis_url, prefix=prefix, handle_signals=False, grace_period=1)

        @server.handler("cli.doomed")
        async def doomed(job: gqm.Job[Any]) -> None:
            raise gqm.SkipRetry("doomed")

        async with gqm.Client(redis_url, prefix=prefix) as client, anyio.create_task_group() as tg:
            await tg.start(server.serve)
            ids = [(await client.enqueue("cli.doomed", {"n": i})).id for i in range(count)]
            for job_id in ids:
                with pytest.raises(gqm.JobFailedError):
                    await client.result(job_id, timeout=TIMEOUT)
            server.shutdown()
        return ids

    return anyio.run(main)


class Running:
    """A long-running command whose output lines are read in the background, so that a
    test can wait for a line with a timeout."""

    def __init__(self, *args: str, cwd: Path | None = None, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gqm", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (self.process.stdout, self.process.stderr)
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """The first line (stdout or stderr) that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in: {self.seen}") from None
            if line is None:
                if self.process.poll() is not None and all(not r.is_alive() for r in self._readers):
                    raise AssertionError(f"exited without {pattern!r}: {self.seen}")
                continue
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found

    def finish(self, timeout: float = TIMEOUT) -> tuple[int, list[str]]:
        """Wait for the exit; the exit code and every output line."""
        code = self.process.wait(timeout=timeout)
        self.close()
        while not self.lines.empty():
            line = self.lines.get_nowait()
            if line is not None:
                self.seen.append(line)
        return code, self.seen

    def close(self) -> None:
        """Kill the process if it still runs, and release its pipes."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for reader in self._readers:
            reader.join(timeout=TIMEOUT)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def running() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Running:
        proc = Running(*args, cwd=cwd, env=env or _env())
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


# -- basics ----------------------------------------------------------------------------------


def test_version() -> None:
    """``gqm version`` and ``gqm --version`` print the package version."""
    for args in (["version"], ["--version"]):
        result = gqm_cli(*args)
        assert result.returncode == 0
        assert result.stdout.strip() == f"gqm {gqm.__version__}"


def test_usage_errors_exit_2() -> None:
    """No command, an unknown command or a missing argument is a usage error (exit 2)."""
    for args in ([], ["frobnicate"], ["jobs"]):
        result = gqm_cli(*args)
        assert result.returncode == 2, args
        assert "usage: gqm" in result.stderr


@pytest.mark.parametrize("args", [["dashboard", "export", "out"], ["tui"]])
def test_reserved_commands(args: list[str]) -> None:
    """``dashboard export`` and ``tui`` are reserved: not available yet, exit 2."""
    result = gqm_cli(*args)
    assert result.returncode == 2
    assert "not available yet" in result.stderr
    assert result.stdout == ""


# -- config files ------------------------------------------------------------------------------


def test_init_writes_a_private_template_that_checks(tmp_path: Path) -> None:
    """``init`` writes the template with mode 0600; ``check`` accepts it; a second
    ``init`` refuses to overwrite unless ``--force``."""
    path = tmp_path / "gqm.yaml"
    result = gqm_cli("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == gqm_config.TEMPLATE

    result = gqm_cli("check", "gqm.yaml", cwd=tmp_path)
    assert (result.returncode, result.stdout.strip()) == (0, "gqm.yaml: OK")

    path.write_text("redis: {}\n")
    result = gqm_cli("init", cwd=tmp_path)
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert path.read_text() == "redis: {}\n"
    assert gqm_cli("init", "--force", cwd=tmp_path).returncode == 0
    assert path.read_text() == gqm_config.TEMPLATE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_check_prints_every_problem(tmp_path: Path) -> None:
    """``check`` on a broken file prints each problem with its line, and exits 2."""
    path = tmp_path / "broken.yaml"
    path.write_text("redis:\n  db: -1\napp:\n  log_level: loud\npools:\n  - concurency: 3\n")
    result = gqm_cli("check", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("  ")]
    assert len(problems) >= 4
    for where in ("$.redis.db", "$.app.log_level", "$.pools[0].concurency", "$.pools[0].name"):
        assert any(where in line for line in problems), where
    assert f"{path}:2: $.redis.db" in result.stderr
    assert f"{len(problems)} problems" in result.stderr.splitlines()[0]

    result = gqm_cli("check", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert "cannot read the file" in result.stderr


def test_hash_password_reads_stdin() -> None:
    """Without a terminal, ``hash-password`` hashes the first line of stdin (argon2id)."""
    result = gqm_cli("hash-password", input="correct horse\n")
    assert result.returncode == 0, result.stderr
    hashed = result.stdout.strip()
    assert hashed.startswith("$argon2id$")
    assert PasswordHasher().verify(hashed, "correct horse")

    result = gqm_cli("hash-password", input="")
    assert result.returncode == 2
    assert "must not be empty" in result.stderr


def test_generate_api_key() -> None:
    """``generate-api-key`` prints gqm_ak_ and 32 random bytes, URL-safe base64."""
    keys = {gqm_cli("generate-api-key").stdout.strip() for _ in range(2)}
    assert len(keys) == 2
    for key in keys:
        assert re.fullmatch(r"gqm_ak_[A-Za-z0-9_-]{43}", key)


def _users(path: Path) -> list[gqm_config.UserConfig]:
    return gqm_config.load_config_file(path).monitoring.auth.users


def test_set_password_edits_the_file_in_place(tmp_path: Path) -> None:
    """``set-password`` adds the user (auth enabled), then updates only its hash; the
    template's comments survive, the mode stays 0600 and the file stays valid."""
    assert gqm_cli("init", cwd=tmp_path).returncode == 0
    path = tmp_path / "gqm.yaml"

    result = gqm_cli("set-password", "admin", input="first\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (user,) = _users(path)
    assert (user.username, user.role) == ("admin", "admin")
    assert PasswordHasher().verify(user.password_hash, "first")
    assert gqm_config.load_config_file(path).monitoring.auth.enabled
    text = path.read_text()
    assert "# gqm.yaml -- configuration of a gqm server" in text
    assert "# keys look like gqm:{queue}:ready" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    result = gqm_cli("reset-password", "admin", "--config", str(path), input="second\n")
    assert result.returncode == 0, result.stderr
    (user,) = _users(path)
    assert PasswordHasher().verify(user.password_hash, "second")
    result = gqm_cli("set-password", "viewer1", "--role", "viewer", "-c", str(path), input="v\n")
    assert result.returncode == 0, result.stderr
    assert [(u.username, u.role) for u in _users(path)] == [
        ("admin", "admin"),
        ("viewer1", "viewer"),
    ]
    assert gqm_cli("check", str(path)).returncode == 0

    result = gqm_cli("set-password", "admin", "-c", str(tmp_path / "none.yaml"), input="x\n")
    assert result.returncode == 2
    assert "gqm init" in result.stderr


def test_add_and_revoke_api_key(tmp_path: Path) -> None:
    """``add-api-key`` stores a new key and prints it; a duplicate name fails;
    ``revoke-api-key`` needs --yes without a terminal, then removes the key."""
    assert gqm_cli("init", cwd=tmp_path).returncode == 0
    path = tmp_path / "gqm.yaml"

    result = gqm_cli("add-api-key", "grafana", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert key.startswith("gqm_ak_")
    (stored,) = gqm_config.load_config_file(path).monitoring.api.api_keys
    assert (stored.name, stored.key, stored.role) == ("grafana", key, "viewer")
    result = gqm_cli("add-api-key", "ci", "--role", "admin", cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    result = gqm_cli("add-api-key", "grafana", cwd=tmp_path)
    assert result.returncode == 1
    assert "already exists" in result.stderr

    before = path.read_text()
    result = gqm_cli("revoke-api-key", "grafana", cwd=tmp_path)
    assert result.returncode == 2
    assert "--yes" in result.stderr
    assert path.read_text() == before

    result = gqm_cli("revoke-api-key", "grafana", "--yes", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    keys = gqm_config.load_config_file(path).monitoring.api.api_keys
    assert [k.name for k in keys] == ["ci"]
    assert "# gqm.yaml -- configuration of a gqm server" in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    result = gqm_cli("revoke-api-key", "grafana", "--yes", cwd=tmp_path)
    assert result.returncode == 1
    assert "no API key named 'grafana'" in result.stderr


def test_a_layout_the_edit_cannot_follow_is_rewritten(tmp_path: Path) -> None:
    """A non-empty flow-style list cannot be edited in place: the file is rewritten
    from its data (valid, mode 0600) and a note says that its comments were lost."""
    path = tmp_path / "gqm.yaml"
    key = "gqm_ak_" + "k" * 43
    path.write_text(f"# keys\nmonitoring:\n  api:\n    api_keys: [{{name: a, key: {key}}}]\n")
    result = gqm_cli("add-api-key", "b", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "comments were not kept" in result.stderr
    keys = gqm_config.load_config_file(path).monitoring.api.api_keys
    assert [(k.name, k.key) for k in keys] == [("a", key), ("b", result.stdout.strip())]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_edit_that_would_break_the_config_is_refused(tmp_path: Path) -> None:
    """Revoking the only key of an API that listens on every address without auth would
    make the config invalid: the file is left as it was (exit 2)."""
    path = tmp_path / "gqm.yaml"
    key = "gqm_ak_" + "k" * 43
    path.write_text(
        textwrap.dedent(f"""\
            monitoring:
              api:
                enabled: true
                addr: "0.0.0.0:8080"
                api_keys:
                  - name: only
                    key: {key}
            """)
    )
    before = path.read_text()
    result = gqm_cli("revoke-api-key", "only", "--yes", "-c", str(path))
    assert result.returncode == 2
    assert "not writing" in result.stderr
    assert "$.monitoring.api" in result.stderr
    assert path.read_text() == before


# -- queue commands ----------------------------------------------------------------------------


def test_enqueue_job_jobs_and_queues(
    cli: Callable[..., subprocess.CompletedProcess[str]], redis_url: str, prefix: str
) -> None:
    """``enqueue`` stores the job; ``job``, ``jobs`` and ``queues`` show it, as tables and
    as JSON."""
    result = cli("enqueue", "cli.echo", "--payload", '{"to": "a@x.com"}', "--queue", "mail")
    assert result.returncode == 0, result.stderr
    found = re.fullmatch(r"enqueued (\S+) \(cli\.echo on queue mail\): ready\n", result.stdout)
    assert found, result.stdout
    job_id = found[1]
    job = with_client(redis_url, prefix, lambda c: c.get_job(job_id))
    assert (job.payload, job.status) == ({"to": "a@x.com"}, gqm.JobStatus.READY)

    result = cli("enqueue", "cli.echo", "-p", "[1, 2]", "--json")
    assert result.returncode == 0, result.stderr
    second = json.loads(result.stdout)
    assert (second["type"], second["queue"], second["payload"]) == ("cli.echo", "default", [1, 2])

    result = cli("job", job_id)
    assert result.returncode == 0, result.stderr
    assert re.search(rf"^id:\s+{job_id}$", result.stdout, re.M)
    assert re.search(r'^payload:\s+\{"to":"a@x.com"\}$', result.stdout, re.M)
    data = json.loads(cli("job", job_id, "--json").stdout)
    assert (data["id"], data["status"], data["payload"]) == (job_id, "ready", {"to": "a@x.com"})

    result = cli("jobs", "mail")
    assert result.returncode == 0, result.stderr
    header, row, footer = result.stdout.splitlines()
    assert header.split() == ["ID", "TYPE", "STATUS", "ATTEMPT", "CREATED", "ERROR"]
    assert row.split()[:3] == [job_id, "cli.echo", "ready"]
    assert footer == "ready jobs in mail: 1-1 of 1"
    page = json.loads(cli("jobs", "mail", "--status", "ready", "--json").stdout)
    assert page["total"] == 1
    assert [j["id"] for j in page["jobs"]] == [job_id]
    assert cli("jobs", "mail", "--status", "completed").stdout.strip() == (
        "completed jobs in mail: 0-0 of 0"
    )

    result = cli("queues")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["QUEUE", "READY", "SCHEDULED"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["mail"][1] == "1"
    assert rows["default"][1] == "1"
    queues = {q["name"]: q for q in json.loads(cli("queues", "--json").stdout)}
    assert queues["mail"]["ready"] == 1
    assert queues["mail"]["paused"] is False


def test_enqueue_options_and_errors(
    cli: Callable[..., subprocess.CompletedProcess[str]], redis_url: str, prefix: str
) -> None:
    """Delayed and dependent jobs; bad JSON or a bad status is a usage error (exit 2);
    a missing job is a failure (exit 1), reported in one line."""
    delayed = json.loads(cli("enqueue", "cli.later", "--delay", "3600", "--json").stdout)
    assert delayed["status"] == "scheduled"
    child = cli("enqueue", "cli.child", "--depends-on", delayed["id"], "--json")
    assert json.loads(child.stdout)["status"] == "deferred"
    stdin = cli("enqueue", "cli.stdin", "--payload", "-", "--json", input='{"from": "stdin"}')
    assert json.loads(stdin.stdout)["payload"] == {"from": "stdin"}

    result = cli("enqueue", "cli.echo", "--payload", "{not json")
    assert result.returncode == 2
    assert result.stderr.startswith("gqm: the payload is not valid JSON")
    assert cli("jobs", "default", "--status", "bogus").returncode == 2

    result = cli("job", "no-such-id")
    assert result.returncode == 1
    assert result.stderr == "gqm: no job with id 'no-such-id'\n"


def test_retry_by_id_and_all_dead_letter(
    cli: Callable[..., subprocess.CompletedProcess[str]], redis_url: str, prefix: str
) -> None:
    """``retry ID`` requeues one dead-letter job; ``retry --all-dlq QUEUE`` the rest;
    an id that cannot be retried fails (exit 1)."""
    first, *rest = dead_jobs(redis_url, prefix, 3)
    result = cli("retry", first)
    assert (result.returncode, result.stdout) == (0, f"requeued {first}\n")
    job = with_client(redis_url, prefix, lambda c: c.get_job(first))
    assert job.status is gqm.JobStatus.READY

    result = cli("retry", "--all-dlq", "default", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"queue": "default", "requeued": 2}

    async def statuses(client: gqm.Client) -> list[gqm.JobStatus]:
        return [(await client.get_job(job_id)).status for job_id in rest]

    assert with_client(redis_url, prefix, statuses) == [gqm.JobStatus.READY] * 2
    assert cli("retry", "--all-dlq", "default").stdout == (
        "requeued 0 dead-letter job(s) of queue default\n"
    )

    result = cli("retry", first, "no-such-id")
    assert result.returncode == 1
    assert "not requeued no-such-id" in result.stdout
    assert cli("retry").returncode == 2


def test_pause_and_resume(
    cli: Callable[..., subprocess.CompletedProcess[str]], redis_url: str, prefix: str
) -> None:
    """``pause`` and ``resume`` flip the queue's flag and say when nothing changed."""
    assert cli("pause", "mail").stdout == "queue mail paused\n"
    assert with_client(redis_url, prefix, lambda c: c.is_paused("mail"))
    assert cli("pause", "mail").stdout == "queue mail was already paused\n"
    result = cli("resume", "mail", "--json")
    assert json.loads(result.stdout) == {"queue": "mail", "paused": False, "changed": True}
    assert not with_client(redis_url, prefix, lambda c: c.is_paused("mail"))


def test_purge(
    cli: Callable[..., subprocess.CompletedProcess[str]], redis_url: str, prefix: str
) -> None:
    """``purge`` cancels a queue's ready jobs (``--dead``: deletes its dead-letter jobs);
    without a terminal it needs --yes."""

    async def enqueue(client: gqm.Client) -> list[str]:
        return [(await client.enqueue("cli.echo", {"n": i})).id for i in range(3)]

    ids = with_client(redis_url, prefix, enqueue)
    result = cli("purge", "default")
    assert result.returncode == 2
    assert "--yes" in result.stderr
    assert with_client(redis_url, prefix, lambda c: c.queue_info("default")).ready == 3

    result = cli("purge", "default", "--yes")
    assert (result.returncode, result.stdout) == (0, "canceled 3 ready job(s) of queue default\n")
    info = with_client(redis_url, prefix, lambda c: c.queue_info("default"))
    assert (info.ready, info.canceled) == (0, 3)
    job = with_client(redis_url, prefix, lambda c: c.get_job(ids[0]))
    assert job.status is gqm.JobStatus.CANCELED

    dead_jobs(redis_url, prefix, 2)
    result = cli("purge", "default", "--dead", "--yes", "--json")
    assert json.loads(result.stdout) == {"queue": "default", "deleted": 2}
    assert with_client(redis_url, prefix, lambda c: c.queue_info("default")).dead_letter == 0
    assert cli("purge", "nowhere", "--yes").returncode == 1


def test_queue_commands_take_redis_from_a_config(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    """Without --redis, ``--config`` gives the Redis URL and the prefix."""
    with_client(redis_url, prefix, lambda c: c.enqueue("cli.echo", None, queue="fromcfg"))
    path = tmp_path / "gqm.yaml"
    path.write_text(f'redis:\n  url: "{redis_url}"\n  prefix: "{prefix}"\n')
    result = gqm_cli("queues", "--json", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert [q["name"] for q in json.loads(result.stdout)] == ["fromcfg"]


def test_unreachable_redis_is_one_line() -> None:
    """A Redis that does not answer: exit 1 and one line on stderr."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = gqm_cli("queues", "--redis", f"redis://127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stderr.startswith(f"gqm: cannot connect to Redis at redis://127.0.0.1:{port}")
    assert len(result.stderr.splitlines()) == 1


# -- worker ------------------------------------------------------------------------------------

APP = """
import os

import gqm

server = gqm.Server(os.environ["CLI_REDIS"], prefix=os.environ["CLI_PREFIX"], grace_period=5)


@server.handler("cli.echo")
async def echo(job):
    return {"echo": job.payload}


def make(cfg):
    built = gqm.Server.from_config(cfg)
    built.handle("cli.echo", echo)
    return built
"""


@pytest.fixture
def app_dir(tmp_path: Path, redis_url: str, prefix: str) -> Path:
    (tmp_path / "cli_app.py").write_text(APP)
    (tmp_path / "gqm.yaml").write_text(f'redis:\n  url: "{redis_url}"\n  prefix: "{prefix}"\n')
    return tmp_path


@pytest.mark.parametrize(
    ("backend", "target"),
    [("asyncio", ["cli_app:server"]), ("trio", ["cli_app:make", "--config", "gqm.yaml"])],
)
def test_worker_runs_jobs_and_stops_on_sigterm(
    running: Callable[..., Running],
    app_dir: Path,
    redis_url: str,
    prefix: str,
    backend: str,
    target: list[str],
) -> None:
    """``worker MODULE:ATTR`` serves the app's handlers (a Server, or a factory given
    the config) and drains on SIGTERM, exiting 0."""
    env = _env(CLI_REDIS=redis_url, CLI_PREFIX=prefix)
    worker = running("worker", *target, "--backend", backend, cwd=app_dir, env=env)
    worker.wait_for(r"gqm\.server: server \S+ serving")

    async def roundtrip(client: gqm.Client) -> Any:
        job = await client.enqueue("cli.echo", {"hi": backend})
        return await client.result(job.id, timeout=TIMEOUT)

    assert with_client(redis_url, prefix, roundtrip) == {"echo": {"hi": backend}}
    worker.process.send_signal(signal.SIGTERM)
    code, lines = worker.finish()
    assert code == 0, lines
    assert any("stopped" in line for line in lines)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("cli_app", "expected MODULE:ATTR"),
        ("no_such_module:server", "cannot import no_such_module"),
        ("cli_app:missing", "has no attribute 'missing'"),
        ("cli_app:echo", "cli_app:echo cannot be called with no arguments"),
        ("cli_app:make", "cli_app:make cannot be called with no arguments"),
        ("cli_app:os.getcwd", "cli_app:os.getcwd() returned str, not a gqm.Server"),
        ("cli_app:server --config gqm.yaml", "--config needs a function"),
    ],
)
def test_worker_target_errors(
    app_dir: Path, redis_url: str, prefix: str, target: str, message: str
) -> None:
    """A target that is not MODULE:ATTR of a Server (or a factory) is a usage error."""
    env = _env(CLI_REDIS=redis_url, CLI_PREFIX=prefix)
    result = gqm_cli("worker", *target.split(), cwd=app_dir, env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# -- dev ---------------------------------------------------------------------------------------


def _assert_stopped(pid: int, url: str) -> None:
    """The private redis-server is gone: no such process, nothing on its port."""
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    host, port = url.removeprefix("redis://").split(":")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=5).close()


def test_dev_runs_the_example_and_stops_by_itself() -> None:
    """``dev --duration`` with no Redis configured starts a private redis-server, runs
    the example jobs, prints one line per finished attempt, exits 0 and stops Redis."""
    result = subprocess.run(
        [sys.executable, "-m", "gqm", "dev", "--duration", "5"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    started = re.search(r"started a private redis-server \(pid (\d+)\) at (\S+)", out)
    assert started, out
    assert re.search(r"dev\.fast\s+\S+\s+completed\s+[\d.]+ ms", out)
    assert re.search(r"dev\.slow\s+\S+\s+progress 1/4", out)
    assert re.search(r"dev\.flaky\s+\S+\s+retry\s+.*attempt 1: ConnectionError", out)
    assert re.search(r"dev\.load\s+\S+\s+completed", out)  # the DAG ran to its end
    assert re.search(r"stopped after [\d.]+ s; attempts: \d+ completed", out)
    assert out.rstrip().endswith("private redis-server stopped")
    _assert_stopped(int(started[1]), started[2])


def test_dev_uses_a_given_redis(redis_url: str, prefix: str) -> None:
    """With --redis, ``dev`` starts no redis-server and its jobs land in that Redis."""
    result = gqm_cli("dev", "--redis", redis_url, "--prefix", prefix, "--duration", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "redis-server" not in result.stdout
    info = with_client(redis_url, prefix, lambda c: c.queue_info("default"))
    assert info.processed_total > 0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_dev_drains_on_ctrl_c(running: Callable[..., Running], backend: str) -> None:
    """SIGINT stops the producers, drains running jobs and exits 0 with Redis stopped."""
    dev = running("dev", "--backend", backend)
    started = dev.wait_for(r"started a private redis-server \(pid (\d+)\) at (\S+)")
    dev.wait_for(r"dev\.fast\s+\S+\s+completed")
    dev.process.send_signal(signal.SIGINT)
    code, lines = dev.finish()
    assert code == 0, lines
    assert any("received SIGINT" in line for line in lines)
    assert any("stopping: draining" in line for line in lines)
    assert "private redis-server stopped" in lines
    _assert_stopped(int(started[1]), started[2])
