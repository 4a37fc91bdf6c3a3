"""A gqm worker as a separate process, for process-fault tests and ``bench/sigkill.py``.

Run as a script (``python -P tests/_worker_proc.py --url ... --backend trio ...``), it
serves one job type with a handler that, per job:

1. appends ``<tag> <job id> <attempt>`` to ``--exec-log`` (executions are counted there,
   outside gqm's keys; one ``O_APPEND`` write per line);
2. prints ``started <job id>`` to stdout (flushed);
3. then, by ``--mode``: ``block`` awaits an event nobody sets, ``sleep`` sleeps
   ``--sleep`` seconds (the job's work), ``complete`` returns at once.

It prints ``ready`` once ``Server.serve`` has started, ``log <level> <logger> <message>``
for gqm's log records, and ``exited`` when ``serve`` has returned. The exit code is 0
unless ``serve`` raised.

Imported, :func:`worker_process` starts the script and reads its stdout in the
background (no polling: callers wait for lines with a bounded timeout).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from anyio.abc import Process

SCRIPT = Path(__file__).resolve()
JOB_TYPE = "proc.work"


# -- the worker (child side) ---------------------------------------------------------------


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", default="gqm")
    p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    p.add_argument("--mode", choices=["block", "sleep", "complete"], default="complete")
    p.add_argument("--sleep", type=float, default=0.5)
    p.add_argument("--tag", default="w")
    p.add_argument("--exec-log", required=True)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--lease-ttl", type=float, default=None)
    p.add_argument("--reap-interval", type=float, default=None)
    p.add_argument("--grace-period", type=float, default=None)
    p.add_argument("--no-signals", action="store_true")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    import gqm

    settings: dict[str, Any] = {
        "prefix": args.prefix,
        "concurrency": args.concurrency,
        "handle_signals": not args.no_signals,
    }
    for name in ("lease_ttl", "reap_interval", "grace_period"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    server = gqm.Server(args.url, **settings)
    fd = os.open(args.exec_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    tag: str = args.tag
    mode: str = args.mode
    pause: float = args.sleep

    async def work(job: gqm.Job[Any]) -> str:
        os.write(fd, f"{tag} {job.id} {job.attempt}\n".encode())
        print(f"started {job.id}", flush=True)
        if mode == "block":
            await anyio.Event().wait()
        elif mode == "sleep":
            await anyio.sleep(pause)
        return tag

    server.handle(JOB_TYPE, work)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve)
            print("ready", flush=True)
    finally:
        os.close(fd)
    print("exited", flush=True)


class _StdoutLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        msg = self.format(record).replace("\n", " | ")
        print(f"log {record.levelname} {record.name} {msg}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    logging.getLogger("gqm").addHandler(_StdoutLog())
    anyio.run(_serve, args, backend=args.backend)


# -- the launcher (parent side) ------------------------------------------------------------


class WorkerProcess:
    """A running worker script: its stdout lines, the job ids it started, its exit."""

    def __init__(self, process: Process, stderr_path: Path, name: str) -> None:
        self.process = process
        self.stderr_path = stderr_path
        self.name = name
        self.lines: list[str] = []
        self.started: list[str] = []
        self.eof = False
        self._changed = anyio.Event()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def stderr_tail(self, chars: int = 4000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def describe(self) -> str:
        return (
            f"worker {self.name} (pid {self.pid}, returncode {self.returncode}): "
            f"{len(self.started)} started, {len(self.lines)} stdout lines, last: "
            f"{self.lines[-5:]!r}\n--- stderr tail ---\n{self.stderr_tail()}"
        )

    async def _read(self) -> None:
        assert self.process.stdout is not None
        stream = BufferedByteReceiveStream(self.process.stdout)
        try:
            while True:
                try:
                    raw = await stream.receive_until(b"\n", 1 << 20)
                except (anyio.IncompleteRead, anyio.ClosedResourceError, anyio.BrokenResourceError):
                    break
                line = raw.decode(errors="replace")
                self.lines.append(line)
                if line.startswith("started "):
                    self.started.append(line.split(" ", 1)[1])
                self._notify()
        finally:
            self.eof = True
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, condition: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Wait (at most ``timeout`` seconds) until ``condition()`` holds; it is checked
        after every stdout line. Fails with the worker's output if it never does."""
        problem = "timed out"
        with anyio.move_on_after(timeout):
            while not condition():
                if self.eof:
                    problem = "stdout closed (the worker exited)"
                    break
                await self._changed.wait()
            else:
                return
        raise AssertionError(
            f"waiting for {what}: {problem} after <= {timeout}s; {self.describe()}"
        )

    async def wait_started(self, n: int, *, timeout: float) -> set[str]:
        """Wait until ``n`` distinct jobs have started; returns their ids."""
        await self.wait_until(
            lambda: len(set(self.started)) >= n, timeout=timeout, what=f"{n} jobs started"
        )
        return set(self.started)

    async def wait_line(self, needle: str, *, timeout: float) -> str:
        """Wait until a stdout line contains ``needle``; returns the line."""
        found: list[str] = []

        def seen() -> bool:
            found[:] = [line for line in self.lines if needle in line][:1]
            return bool(found)

        await self.wait_until(seen, timeout=timeout, what=repr(needle))
        return found[0]

    async def wait_exit(self, *, timeout: float) -> int:
        """Wait (at most ``timeout`` seconds) for the process to exit; its return code."""
        with anyio.move_on_after(timeout):
            return await self.process.wait()
        raise AssertionError(f"still running {timeout}s later; {self.describe()}")

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signal.Signals(signum))

    def kill(self) -> None:
        self.process.kill()


@contextlib.asynccontextmanager
async def worker_process(
    args: Sequence[str], *, stderr_path: Path, name: str = "w", script: Path = SCRIPT
) -> AsyncIterator[WorkerProcess]:
    """Run the worker script (this file, or another ``script`` that speaks the same
    stdout protocol) with ``args``; on exit it is SIGKILLed if still running and
    reaped. Its stdout is read in the background; stderr goes to ``stderr_path``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with stderr_path.open("ab") as err:
        process = await anyio.open_process(
            [sys.executable, "-P", str(script), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
    worker = WorkerProcess(process, stderr_path, name)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker._read)
            try:
                yield worker
            finally:
                with anyio.CancelScope(shield=True):
                    if process.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            process.kill()
                    await process.wait()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()


if __name__ == "__main__":
    main()
