"""Where a scenario's time goes: ``python bench/profile.py [--scenario drain] [--backend asyncio]``.

Runs one scenario of ``bench/run.py`` (its jobs enqueued first by another process, as
there) under py-spy, sampling the worker process, and sorts every sample into one of a
few buckets by its innermost frames:

* **socket I/O**: a send or receive system call (loopback TCP to Redis);
* **waiting for events**: epoll, i.e. the event loop with nothing to run (py-spy counts
  it when the process is not idle in the kernel's sense, e.g. a zero-timeout poll);
* **startup**: imports (before the measured part);
* **gqm**, **anyio / event loop**, **msgspec**, **hiredis**, **other**: the innermost
  frame's package.

It also prints the top functions by self time and by inclusive time within gqm. Needs
``py-spy`` (``nox -s bench`` installs it) and the right to ptrace its child (root, or
``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

from gqm._embedded import EmbeddedRedis

RUN = str(Path(__file__).with_name("run.py"))

#: (bucket, substrings of an innermost frame that put a sample in it), first match wins.
BUCKETS = [
    ("socket I/O", ("Transport.write", "_nonblocking_helper", "sock_recv", "sock_send",
                    "_read_ready", "SocketStream.send", "SocketStream.receive")),
    ("waiting for events", ("select (selectors.py", "get_events (trio", "epoll")),
    ("startup", ("<frozen importlib", "_call_with_frames_removed", "<module>")),
    ("gqm", ("gqm/",)),
    ("msgspec", ("msgspec",)),
    ("hiredis", ("hiredis",)),
    ("anyio / event loop", ("anyio/", "asyncio/", "trio/", "outcome/", "sniffio", "contextlib")),
]  # fmt: skip


def _bucket(frames: list[str]) -> str:
    leaf = frames[-1]
    for name, needles in BUCKETS:
        if any(n in leaf for n in needles):
            return name
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", default="drain")
    parser.add_argument("--backend", default="asyncio")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    args = parser.parse_args()
    with EmbeddedRedis() as url, tempfile.TemporaryDirectory() as tmp:
        base = [sys.executable, RUN, "--one", args.scenario, "--backend", args.backend,
                "--url", url, "--n", str(args.n)]  # fmt: skip
        if args.scenario in ("drain", "burst30", "payload10k", "payload100k"):
            subprocess.run([*base, "--fill"], check=True)
        raw = Path(tmp) / "profile.txt"
        subprocess.run(
            ["py-spy", "record", "--format", "raw", "--rate", str(args.rate), "--output",
             str(raw), "--", *base],
            check=True, capture_output=True,
        )  # fmt: skip
        lines = raw.read_text().splitlines()
    total = 0
    buckets: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for line in lines:
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        total += n
        buckets[_bucket(frames)] += n
        own[frames[-1]] += n
        for frame in set(frames):
            if "gqm/" in frame:
                inclusive[frame] += n
    print(f"{args.backend} {args.scenario}: {total} samples")
    for name, n in buckets.most_common():
        print(f"  {n / total:6.1%}  {name}")
    print("top self time:")
    for frame, n in own.most_common(15):
        print(f"  {n / total:6.1%}  {frame}")
    print("gqm, inclusive:")
    for frame, n in inclusive.most_common(15):
        print(f"  {n / total:6.1%}  {frame}")


if __name__ == "__main__":
    main()
