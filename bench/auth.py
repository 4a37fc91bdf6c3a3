"""Security timing figures of the HTTP API (RELIABILITY.md T20 and T21).

``python bench/auth.py [--backend asyncio|trio]`` starts a private redis-server, serves
the real API (``gqm.Client`` + ``gqm_web.create_app`` + ``gqm_web.serve_app``) on a
loopback port, talks to it over real HTTP (httpx), prints a table and writes
``bench/results/auth-<timestamp>.json``. Figures, not assertions: the targets are
printed next to them.

1. **Login timing** (T20): unknown user vs known user with a wrong password, interleaved,
   one real ``POST /auth/login`` each; mean, p50, p99 and the difference of the means
   (target < 5 ms), and whether statuses and bodies were identical. The login throttle
   would refuse most of these attempts, so this part runs with
   ``login_attempts_per_user`` and ``login_attempts_per_ip`` raised to 10**6.
2. **Login abuse** (T20), default throttle settings:

   * 50 parallel wrong passwords for one user: password verifications run (target <= 5)
     and statuses;
   * concurrent logins of distinct users (each from its own client address, sent as
     ``X-Forwarded-For`` by a trusted proxy, so the per-IP throttle does not refuse
     them): peak extra RSS (target <= max_concurrent_hashes x argon2 memory cost) and
     ``/health`` p99 latency meanwhile (target < 100 ms).
3. **API-key comparison** (T21): ``Authenticator._by_key`` timed for wrong keys sharing
   0, half, and all but the last character of a real key, and for the real key (which
   also asks Redis whether it was revoked, so it is not comparable with the others);
   mean and median ns, the largest difference between the wrong-key cases and a Welch t
   between the 0-prefix and all-but-last cases, next to the same t between two unrelated
   0-prefix keys (a null control for the noise of the day). ``hmac.compare_digest`` on
   the digests and on the keys themselves, and plain ``==`` on the keys (a comparison
   that does leak, to show what the measurement can resolve), for reference.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import hmac
import json
import math
import os
import random
import secrets
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from argon2 import PasswordHasher

import gqm
import gqm_web
from gqm._embedded import EmbeddedRedis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024
#: The reference comparisons take ~100 ns, about a tick or two of the clock here: each
#: of their samples times this many calls in a row (and reports the time per call).
REF_BATCH = 20


# -- helpers -------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "p50": statistics.median(values),
        "p99": _pct(values, 0.99),
        "max": max(values),
    }


def _welch_t(a: list[float], b: list[float]) -> float:
    va, vb = statistics.variance(a), statistics.variance(b)
    se = math.sqrt(va / len(a) + vb / len(b))
    return (statistics.fmean(a) - statistics.fmean(b)) / se if se else 0.0


def _trimmed(a: list[float], b: list[float], q: float = 0.99) -> tuple[list[float], list[float]]:
    """Both samples without the values above the pooled ``q`` percentile (interrupts,
    scheduler preemption: outliers that say nothing about the comparison)."""
    cut = _pct(a + b, q)
    return [x for x in a if x <= cut], [x for x in b if x <= cut]


def _rss() -> int:
    """Resident set size of this process, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _reset_hwm() -> bool:
    """Reset this process's peak RSS (VmHWM), where the kernel allows it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class VerifyCounter:
    """Wraps ``Authenticator._verify`` (it runs in worker threads): counts password
    verifications and the most that ran at once."""

    def __init__(self, auth: Any) -> None:
        self._inner = auth._verify
        self._lock = threading.Lock()
        self.calls = 0
        self.active = 0
        self.peak = 0
        auth._verify = self

    def __call__(self, stored: str, password: str) -> bool:
        with self._lock:
            self.calls += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            return bool(self._inner(stored, password))
        finally:
            with self._lock:
                self.active -= 1


async def _flush(client: gqm.Client) -> None:
    await (await client._driver()).execute("FLUSHALL")


@asynccontextmanager
async def _serving(
    client: gqm.Client, settings: gqm_web.WebSettings
) -> AsyncIterator[tuple[Any, str]]:
    """Serve the API over ``client`` meanwhile; yields the app and its base URL."""
    app = gqm_web.create_app(client, settings)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        host, port = await tg.start(
            partial(gqm_web.serve_app, app, settings, shutdown_trigger=stop.wait)
        )
        try:
            yield app, f"http://{host}:{port}"
        finally:
            stop.set()


def _settings(**overrides: Any) -> gqm_web.WebSettings:
    values: dict[str, Any] = {"addr": "127.0.0.1:0"}
    values.update(overrides)
    return gqm_web.WebSettings(**values)


def _user(name: str, password_hash: str) -> gqm_web.User:
    return gqm_web.User(username=name, password_hash=password_hash, role="viewer")


# -- 1. login timing -----------------------------------------------------------------------


async def _login_timing(client: gqm.Client, alice_hash: str, samples: int) -> dict[str, Any]:
    settings = _settings(
        users=(_user("alice", alice_hash),),
        login_attempts_per_user=10**6,
        login_attempts_per_ip=10**6,
    )
    await _flush(client)
    async with (
        _serving(client, settings) as (app, base_url),
        httpx.AsyncClient(base_url=base_url, timeout=60) as http,
    ):
        verify = VerifyCounter(app.extensions["gqm_web"].auth)

        async def attempt(username: str, password: str) -> tuple[float, httpx.Response]:
            t0 = time.perf_counter()
            r = await http.post("/auth/login", json={"username": username, "password": password})
            elapsed = (time.perf_counter() - t0) * 1000
            http.cookies.clear()
            return elapsed, r

        for i in range(5):  # warm-up: connections, caches; not counted
            await attempt("nobody", f"warm-{i}")
            await attempt("alice", f"warm-{i}")
        verify.calls = 0
        unknown: list[float] = []
        known: list[float] = []
        status_mismatch = body_mismatch = header_mismatch = 0
        statuses: Counter[str] = Counter()
        for i in range(samples):
            password = f"wrong-password-{i}"
            t_unknown, r_unknown = await attempt("nobody", password)
            t_known, r_known = await attempt("alice", password)
            unknown.append(t_unknown)
            known.append(t_known)
            statuses[f"unknown {r_unknown.status_code}"] += 1
            statuses[f"known {r_known.status_code}"] += 1
            status_mismatch += r_unknown.status_code != r_known.status_code
            body_mismatch += r_unknown.content != r_known.content
            header_mismatch += sorted(r_unknown.headers.keys()) != sorted(r_known.headers.keys())
    return {
        "settings": {"login_attempts_per_user": 10**6, "login_attempts_per_ip": 10**6},
        "unknown_user_ms": _summary(unknown),
        "wrong_password_ms": _summary(known),
        "mean_difference_ms": statistics.fmean(known) - statistics.fmean(unknown),
        "welch_t": _welch_t(known, unknown),
        "statuses": dict(statuses),
        "status_mismatches": status_mismatch,
        "body_mismatches": body_mismatch,
        "header_name_mismatches": header_mismatch,
        "verifications": verify.calls,
        "samples_ms": {"unknown_user": unknown, "wrong_password": known},
    }


# -- 2. login abuse ------------------------------------------------------------------------


async def _parallel_guesses(client: gqm.Client, alice_hash: str, n: int = 50) -> dict[str, Any]:
    settings = _settings(users=(_user("alice", alice_hash),))
    await _flush(client)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=n)
    async with (
        _serving(client, settings) as (app, base_url),
        httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as http,
    ):
        verify = VerifyCounter(app.extensions["gqm_web"].auth)
        results: Counter[str] = Counter()

        async def guess(i: int) -> None:
            r = await http.post("/auth/login", json={"username": "alice", "password": f"g{i}"})
            results[f"{r.status_code} {r.json()['code']}"] += 1

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(guess, i)
        elapsed = time.perf_counter() - t0
    return {
        "attempts": n,
        "login_attempts_per_user": settings.login_attempts_per_user,
        "verifications": verify.calls,
        "statuses": dict(results),
        "seconds": elapsed,
    }


async def _burst(
    client: gqm.Client, users: list[tuple[str, str, str]], memory_cost_kib: int
) -> dict[str, Any]:
    """Concurrent successful logins of distinct users, each from its own address."""
    settings = _settings(
        users=tuple(_user(name, h) for name, _pw, h in users),
        trusted_proxies=("127.0.0.1",),
    )
    await _flush(client)
    n = len(users)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=n)
    async with (
        _serving(client, settings) as (app, base_url),
        httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as http,
        httpx.AsyncClient(base_url=base_url, timeout=30) as probe,
    ):
        verify = VerifyCounter(app.extensions["gqm_web"].auth)
        # /health while idle, for comparison.
        idle: list[float] = []
        for _ in range(100):
            t0 = time.perf_counter()
            await probe.get("/health")
            idle.append((time.perf_counter() - t0) * 1000)
            await anyio.sleep(0.005)

        gc.collect()
        done = anyio.Event()
        rss_samples: list[int] = []
        #: RSS minus the hash buffers that can be live (a verification allocates after it
        #: is counted as active and frees before it stops being): the rest of the burst.
        rest_samples: list[int] = []
        health: list[float] = []
        health_statuses: Counter[int] = Counter()
        statuses: Counter[int] = Counter()

        async def sample_rss() -> None:
            while not done.is_set():
                before = verify.active
                rss = _rss()  # the GIL is let go meanwhile: a hash may start
                active = max(before, verify.active)
                rss_samples.append(rss)
                rest_samples.append(rss - active * memory_cost_kib * 1024)
                await anyio.sleep(0.005)

        async def poll_health() -> None:
            while not done.is_set():
                t0 = time.perf_counter()
                r = await probe.get("/health")
                health.append((time.perf_counter() - t0) * 1000)
                health_statuses[r.status_code] += 1
                await anyio.sleep(0.01)

        async def login(i: int) -> None:
            name, password, _hash = users[i]
            r = await http.post(
                "/auth/login",
                json={"username": name, "password": password},
                headers={"X-Forwarded-For": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"},
            )
            statuses[r.status_code] += 1

        baseline = _rss()
        hwm_reset = _reset_hwm()
        t0 = time.perf_counter()
        async with anyio.create_task_group() as outer:
            outer.start_soon(sample_rss)
            outer.start_soon(poll_health)
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(login, i)
            elapsed = time.perf_counter() - t0
            done.set()
        hwm = _hwm()
        # The hash buffers are unmapped by now: what stays is the rest of the burst's
        # memory (connections of both ends, sessions, the Python heap).
        after = _rss()
        max_hashes = settings.max_concurrent_hashes
    budget = max_hashes * memory_cost_kib * 1024
    return {
        "logins": n,
        "statuses": {str(k): v for k, v in statuses.items()},
        "seconds": elapsed,
        "logins_per_s": n / elapsed,
        "verifications": verify.calls,
        "peak_concurrent_verifications": verify.peak,
        "max_concurrent_hashes": max_hashes,
        "baseline_rss_mib": baseline / MIB,
        "peak_extra_rss_mib": (max(rss_samples) - baseline) / MIB,
        "peak_extra_rss_hwm_mib": (hwm - baseline) / MIB if hwm_reset else None,
        "extra_rss_after_mib": (after - baseline) / MIB,
        "peak_extra_rss_not_hashes_mib": (max(rest_samples) - baseline) / MIB,
        "rss_samples": len(rss_samples),
        "rss_budget_mib": budget / MIB,
        "health_ms": _summary(health),
        "health_statuses": {str(k): v for k, v in health_statuses.items()},
        "health_idle_ms": _summary(idle),
    }


# -- 3. API-key comparison -----------------------------------------------------------------


def _differing(c: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return random.choice([a for a in alphabet if a != c])


def _key_cases(key: str) -> dict[str, str]:
    """Wrong keys sharing 0, half, and all but the last character with ``key``, a
    second unrelated 0-prefix key (a null control: what two cases that cannot differ
    look like, on this machine, today), and ``key`` itself."""
    n, half = len(key), len(key) // 2

    def fresh() -> str:
        return secrets.token_urlsafe(n)[:n]

    return {
        "prefix 0": _differing(key[0]) + fresh()[1:],
        f"prefix {half}": key[:half] + _differing(key[half]) + fresh()[half + 1 :],
        f"prefix {n - 1}": key[:-1] + _differing(key[-1]),
        "prefix 0 (2nd)": _differing(key[0]) + fresh()[1:],
        "right key": key,
    }


async def _key_timing(client: gqm.Client, samples: int) -> dict[str, Any]:
    keys = [secrets.token_urlsafe(32) for _ in range(3)]  # 43 characters, 256 bits
    settings = _settings(
        api_keys=tuple(
            gqm_web.ApiKey(name=f"key{i}", key=k, role="viewer") for i, k in enumerate(keys)
        )
    )
    await _flush(client)
    app = gqm_web.create_app(client, settings)  # the Authenticator is what is measured
    auth = app.extensions["gqm_web"].auth
    key = keys[1]
    cases = _key_cases(key)
    assert all(len(c) == len(key) for c in cases.values())
    stored = hashlib.sha256(key.encode()).digest()
    digests = {name: hashlib.sha256(c.encode()).digest() for name, c in cases.items()}
    assert await auth._by_key(key) is not None
    assert all([await auth._by_key(c) is None for n, c in cases.items() if n != "right key"])

    by_key: dict[str, list[float]] = {n: [] for n in cases}
    raw: dict[str, list[float]] = {n: [] for n in cases}
    raw_keys: dict[str, list[float]] = {n: [] for n in cases}
    plain: dict[str, list[float]] = {n: [] for n in cases}
    order = list(cases)
    clock = time.perf_counter_ns
    compare = hmac.compare_digest
    batch = range(REF_BATCH)
    gc.collect()
    gc.disable()
    try:
        # Each sample gets fresh copies of its inputs, so that where the objects lie in
        # memory (alignment, cache lines) varies instead of biasing one case. _by_key is
        # timed in its own pass: the right key suspends on a Redis call, which would
        # leave the caches cold for whatever were timed right after it.
        for _ in range(samples):
            random.shuffle(order)
            for name in order:
                candidate = cases[name].encode().decode()
                t0 = clock()
                await auth._by_key(candidate)
                by_key[name].append(clock() - t0)
        for _ in range(samples):
            random.shuffle(order)
            for name in order:
                candidate = cases[name].encode().decode()
                digest = bytes(bytearray(digests[name]))
                t0 = clock()
                for _ in batch:
                    compare(stored, digest)
                t1 = clock()
                for _ in batch:
                    compare(key, candidate)
                t2 = clock()
                for _ in batch:
                    _ = key == candidate
                t3 = clock()
                raw[name].append((t1 - t0) / REF_BATCH)
                raw_keys[name].append((t2 - t1) / REF_BATCH)
                plain[name].append((t3 - t2) / REF_BATCH)
    finally:
        gc.enable()
    empty = []
    for _ in range(samples):
        t0 = clock()
        empty.append(clock() - t0)

    wrong = [n for n in cases if n != "right key"]
    first, last, control = "prefix 0", f"prefix {len(key) - 1}", "prefix 0 (2nd)"

    def stats(data: dict[str, list[float]]) -> dict[str, Any]:
        means = {n: statistics.fmean(data[n]) for n in wrong}
        medians = {n: statistics.median(data[n]) for n in wrong}
        a, b = _trimmed(data[first], data[last])
        return {
            "cases": {
                n: {"mean_ns": statistics.fmean(v), "median_ns": statistics.median(v)}
                for n, v in data.items()
            },
            "wrong_max_mean_diff_ns": max(means.values()) - min(means.values()),
            "wrong_max_median_diff_ns": max(medians.values()) - min(medians.values()),
            "welch_t": _welch_t(data[first], data[last]),
            "welch_t_trimmed_p99": _welch_t(a, b),
            "welch_between": [first, last],
            "null_control_between": [first, control],
            "welch_t_null_control": _welch_t(data[first], data[control]),
            "welch_t_null_control_trimmed_p99": _welch_t(*_trimmed(data[first], data[control])),
        }

    return {
        "key_length": len(key),
        "configured_keys": len(keys),
        "samples_per_case": samples,
        "reference_batch": REF_BATCH,
        "timer_overhead_median_ns": statistics.median(empty),
        "by_key": stats(by_key),
        "compare_digest_on_digests": stats(raw),
        "compare_digest_on_keys": stats(raw_keys),
        "plain_eq_on_keys": stats(plain),
    }


# -- main ----------------------------------------------------------------------------------


async def _main(url: str, args: argparse.Namespace, hashes: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with gqm.Client(url) as client:
        await client.ping()
        t = time.perf_counter()
        results["login_timing"] = await _login_timing(client, hashes["alice"], args.samples)
        results["login_timing"]["seconds"] = time.perf_counter() - t
        print_login_timing(results["login_timing"])
        results["parallel_guesses"] = await _parallel_guesses(client, hashes["alice"])
        print_parallel_guesses(results["parallel_guesses"])
        results["burst"] = await _burst(client, hashes["users"], hashes["memory_cost_kib"])
        print_burst(results["burst"])
        results["api_keys"] = await _key_timing(client, args.key_samples)
        print_keys(results["api_keys"])
        await _flush(client)
    return results


def print_login_timing(r: dict[str, Any]) -> None:
    print(
        "\n1. Login timing (T20): unknown user vs known user + wrong password, "
        f"{r['unknown_user_ms']['n']} interleaved samples each"
    )
    print(
        "   throttle raised for this part only: login_attempts_per_user=10**6, "
        "login_attempts_per_ip=10**6"
    )
    print(f"   {'':<22}{'mean ms':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for label, key in (
        ("unknown user", "unknown_user_ms"),
        ("wrong password", "wrong_password_ms"),
    ):
        s = r[key]
        print(f"   {label:<22}{s['mean']:>9.2f}{s['p50']:>9.2f}{s['p99']:>9.2f}{s['max']:>9.2f}")
    print(
        f"   difference of means (wrong - unknown): {r['mean_difference_ms']:+.2f} ms "
        f"(target |d| < 5 ms), Welch t {r['welch_t']:+.2f}"
    )
    print(
        f"   statuses {r['statuses']}; mismatches: status {r['status_mismatches']}, "
        f"body {r['body_mismatches']}, header names {r['header_name_mismatches']}; "
        f"password verifications {r['verifications']}",
        flush=True,
    )


def print_parallel_guesses(r: dict[str, Any]) -> None:
    print(
        f"\n2a. {r['attempts']} parallel wrong passwords for one user "
        f"(default throttle, login_attempts_per_user={r['login_attempts_per_user']})"
    )
    print(
        f"   password verifications: {r['verifications']} (target <= "
        f"{r['login_attempts_per_user']}); statuses {r['statuses']}; {r['seconds']:.2f} s",
        flush=True,
    )


def print_burst(r: dict[str, Any]) -> None:
    print(
        f"\n2b. {r['logins']} concurrent logins of distinct users (default throttle; one "
        "X-Forwarded-For address each, 127.0.0.1 trusted)"
    )
    print(
        f"   statuses {r['statuses']}; {r['seconds']:.1f} s ({r['logins_per_s']:.1f} logins/s); "
        f"verifications {r['verifications']}, at most {r['peak_concurrent_verifications']} "
        f"at once (max_concurrent_hashes={r['max_concurrent_hashes']})"
    )
    hwm = r["peak_extra_rss_hwm_mib"]
    hwm_text = f", VmHWM {hwm:.1f} MiB" if hwm is not None else ""
    print(
        f"   peak extra RSS {r['peak_extra_rss_mib']:.1f} MiB (statm every 5 ms, "
        f"{r['rss_samples']} samples{hwm_text}) vs budget {r['rss_budget_mib']:.0f} MiB "
        f"(max_concurrent_hashes x memory_cost); baseline {r['baseline_rss_mib']:.0f} MiB"
    )
    print(
        f"   of which not hash buffers (max of RSS - active verifications x memory_cost; the "
        f"HTTP client and server share this process): {r['peak_extra_rss_not_hashes_mib']:.1f}"
        f" MiB; left after the burst {r['extra_rss_after_mib']:.1f} MiB"
    )
    h, i = r["health_ms"], r["health_idle_ms"]
    print(
        f"   /health during burst: n {h['n']}, p50 {h['p50']:.2f} ms, p99 {h['p99']:.2f} ms, "
        f"max {h['max']:.2f} ms (target p99 < 100 ms); statuses {r['health_statuses']}; "
        f"idle p99 {i['p99']:.2f} ms",
        flush=True,
    )


def print_keys(r: dict[str, Any]) -> None:
    print(
        f"\n3. API-key check timing (T21): key of {r['key_length']} characters, "
        f"{r['configured_keys']} keys configured, {r['samples_per_case']:,} samples per case, "
        f"interleaved (timer overhead ~{r['timer_overhead_median_ns']:.0f} ns; the reference "
        f"rows below _by_key time batches of {r['reference_batch']} calls: ns per call)"
    )
    names = list(r["by_key"]["cases"])
    sections = (
        ("Authenticator._by_key", "by_key"),
        ("compare_digest(digests)", "compare_digest_on_digests"),
        ("compare_digest(keys)", "compare_digest_on_keys"),
        ("key == candidate (leaky)", "plain_eq_on_keys"),
    )
    header = "".join(f"{n:>17}" for n in names)
    print(f"   {'mean / median ns':<26}{header}")
    for label, key in sections:
        cases, digits = r[key]["cases"], 0 if key == "by_key" else 1
        row = "".join(
            f"{cases[n]['mean_ns']:>8.{digits}f} / {cases[n]['median_ns']:<6.{digits}f}"
            for n in names
        )
        print(f"   {label:<26}{row.rstrip()}")
    first, last = r["by_key"]["welch_between"]
    control = r["by_key"]["null_control_between"][1]
    print(
        "   wrong-key cases (the right key also does a Redis SISMEMBER); Welch t "
        f"(raw / trimmed at p99) of {first!r} vs {last!r}, and of the null control "
        f"{first!r} vs {control!r}:"
    )
    for label, key in sections:
        s = r[key]
        print(
            f"   {label:<26}max diff of means {s['wrong_max_mean_diff_ns']:>5.1f} ns, "
            f"of medians {s['wrong_max_median_diff_ns']:>4.1f} ns; t {s['welch_t']:+6.2f} / "
            f"{s['welch_t_trimmed_p99']:+6.2f}; null t {s['welch_t_null_control']:+6.2f} / "
            f"{s['welch_t_null_control_trimmed_p99']:+6.2f}"
        )
    sys.stdout.flush()


def _make_users(n: int) -> dict[str, Any]:
    hasher = PasswordHasher()  # argon2-cffi defaults, as in production
    passwords = [f"password-{i}-{secrets.token_urlsafe(12)}" for i in range(n)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        alice, *hashes = pool.map(hasher.hash, ["alice-password-1", *passwords])
    return {
        "alice": alice,
        "users": [
            (f"user{i:04d}", p, h) for i, (p, h) in enumerate(zip(passwords, hashes, strict=True))
        ],
        "memory_cost_kib": hasher.memory_cost,
        "time_cost": hasher.time_cost,
        "parallelism": hasher.parallelism,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--samples", type=int, default=200, help="login samples per kind")
    parser.add_argument("--burst", type=int, default=200, help="concurrent logins (users)")
    parser.add_argument("--key-samples", type=int, default=10_000, help="API-key samples per case")
    args = parser.parse_args()
    started = time.perf_counter()
    t = time.perf_counter()
    hashes = _make_users(args.burst)
    hash_seconds = time.perf_counter() - t
    print(
        f"gqm {gqm.__version__}, {args.backend}, {os.cpu_count()} CPUs; argon2id "
        f"m={hashes['memory_cost_kib']} KiB t={hashes['time_cost']} p={hashes['parallelism']}; "
        f"{args.burst + 1} hashes made in {hash_seconds:.1f} s",
        flush=True,
    )
    with EmbeddedRedis() as url:
        results = anyio.run(_main, url, args, hashes, backend=args.backend)
    total = time.perf_counter() - started
    meta = {
        "backend": args.backend,
        "samples": args.samples,
        "burst": args.burst,
        "key_samples": args.key_samples,
        "python": sys.version,
        "gqm": gqm.__version__,
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "argon2": {
            "memory_cost_kib": hashes["memory_cost_kib"],
            "time_cost": hashes["time_cost"],
            "parallelism": hashes["parallelism"],
        },
        "hashing_seconds": hash_seconds,
        "total_seconds": total,
    }
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"auth-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"\ntotal {total:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
