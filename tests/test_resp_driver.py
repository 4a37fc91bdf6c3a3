"""The resp driver (RESP parsed by hiredis), on asyncio, uvloop and trio.

The same contract as ``test_drivers.py`` (raw replies, errors in place in pipelines,
NOSCRIPT, publish/subscribe, connection errors) against the session's redis-server,
plus what a hand-written client must prove: AUTH (password and ACL user), SELECT,
unix sockets, TLS, reconnection after ``CLIENT KILL``, cancellation and timeouts that
never leave a reply unread on a reused connection, and a bounded pool under
concurrency. Every async test runs four ways: on asyncio and on uvloop (the pool's
connections are then asyncio protocols, ``_asyncio_conn``), on trio (bare sockets,
``_trio_conn``) and on asyncio with ``GQM_RESP_TRANSPORT=anyio`` (anyio streams). A second, private
redis-server (password, ACL user, DEBUG enabled, a unix socket, and a TLS port when
``openssl`` and a TLS-enabled redis-server are at hand) and small scripted fake servers
cover what the shared one cannot.

No sleeps: waits are on events, on ``wait_all_tasks_blocked``, or polls that are each
a round trip to Redis, all bounded by ``fail_after``.
"""

from __future__ import annotations

import enum
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import hiredis
import pytest
from anyio.abc import SocketAttribute

from gqm._embedded import find_redis_server, free_port
from gqm._redis._asyncio_conn import AsyncioConnection
from gqm._redis._resp import RespDriver, _Connection, _pack, _target
from gqm._redis._settings import RedisSettings
from gqm._redis._trio_conn import TrioConnection
from gqm.errors import ConfigurationError, RedisConnectionError, RedisReplyError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    from anyio.abc import SocketStream

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}, "auto"), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}, "auto"), id="uvloop"),
        pytest.param(("asyncio", {}, "anyio"), id="asyncio-streams"),
        pytest.param(("trio", {}, "auto"), id="trio"),
    ]
)
def anyio_backend(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, dict[str, Any]]:
    """The backend, and the resp transport (``GQM_RESP_TRANSPORT``) its drivers use."""
    backend, options, transport = request.param
    monkeypatch.setenv("GQM_RESP_TRANSPORT", transport)
    return backend, options


UNKNOWN_SHA = "0" * 40
PASSWORD = "s3cret:/@pw"  # characters that need quoting in a URL
QUOTED_PASSWORD = "s3cret%3A%2F%40pw"
ACL_USER, ACL_PASSWORD = "alice", "alice-pw"


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def resp_driver(url: str | None = None, **kwargs: Any) -> AsyncIterator[RespDriver]:
    """A driver from settings (``RedisSettings`` keywords; ``keepalive_interval`` and
    ``protocol`` go to the driver)."""
    driver_kwargs = {k: kwargs.pop(k) for k in ("keepalive_interval", "protocol") if k in kwargs}
    d = RespDriver(RedisSettings(url=url, **kwargs), **driver_kwargs)
    await d.open()
    try:
        yield d
    finally:
        await d.aclose()


@pytest.fixture
async def driver(redis_url: str) -> AsyncIterator[RespDriver]:
    async with resp_driver(redis_url) as d:
        yield d


@pytest.fixture
async def observer(redis_url: str) -> AsyncIterator[RespDriver]:
    """A second driver on the same server, to watch and poke the first one."""
    async with resp_driver(redis_url) as d:
        yield d


def client_field(client_list: bytes, field: str) -> str:
    """One ``field=value`` of a CLIENT LIST / CLIENT INFO line."""
    for item in client_list.decode().split():
        key, _, value = item.partition("=")
        if key == field:
            return value
    raise AssertionError(f"no {field} in {client_list!r}")


async def connection_gone(observer: RespDriver, client_id: int) -> None:
    """Poll (one round trip each) until the server no longer lists ``client_id``."""
    while await observer.execute("CLIENT", "LIST", "ID", client_id):
        pass


async def blocked_in(observer: RespDriver, client_id: int, command: str) -> None:
    """Poll until the server shows ``client_id`` blocked in ``command``: the request
    was written and its reply is outstanding."""
    while True:
        line = await observer.execute("CLIENT", "LIST", "ID", client_id)
        if line and client_field(line, "cmd") == command and "b" in client_field(line, "flags"):
            return


async def publish_until_heard(driver: RespDriver, channel: str, data: bytes) -> None:
    """PUBLISH until Redis reports a subscriber: only that message is delivered."""
    while await driver.execute("PUBLISH", channel, data) == 0:
        pass


# -- a private redis-server: password, ACL user, DEBUG, unix socket, TLS --------------------


@dataclass
class SecureRedis:
    port: int
    unix_path: str
    tls_port: int | None
    ca_file: str | None

    @property
    def host_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"


def _make_certificates(directory: Path) -> bool:
    """A CA and a server certificate for localhost / 127.0.0.1, made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return False
    (directory / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    commands = [
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
         "-out", "ca.crt", "-days", "2", "-subj", "/CN=gqm-test-ca"],
        [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
         "-out", "server.csr", "-subj", "/CN=localhost"],
        [openssl, "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf"],
    ]  # fmt: skip
    for command in commands:
        if subprocess.run(command, cwd=directory, capture_output=True).returncode:
            return False
    return True


def _stop_redis(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _start_redis(args: list[str], timeout: float = 15.0) -> subprocess.Popen[bytes] | None:
    """Start redis-server and wait for its "Ready to accept connections" log line
    (no polling); None if it exits first (e.g. no TLS support built in)."""
    process = subprocess.Popen(
        [find_redis_server(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    stdout = process.stdout
    ready = threading.Event()

    def drain() -> None:
        # Reads the log until the server exits: a full pipe would block redis-server.
        with suppress(ValueError, OSError):  # the pipe closed by _stop_redis
            for line in stdout:
                if b"Ready to accept connections" in line:
                    ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(timeout) or process.poll() is not None:
        _stop_redis(process)
        return None
    return process


@pytest.fixture(scope="module")
def secure_redis() -> Iterator[SecureRedis]:
    workdir = Path(tempfile.mkdtemp(prefix="gqm-resp-"))
    port = free_port()
    base = [
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
        "--requirepass", PASSWORD,
        "--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all",
        "--enable-debug-command", "yes",
        "--unixsocket", str(workdir / "redis.sock"),
        "--unixsocketperm", "700",
    ]  # fmt: skip
    process = None
    tls_port = None
    if _make_certificates(workdir):
        tls_port = free_port()
        process = _start_redis(
            [
                *base,
                "--tls-port", str(tls_port),
                "--tls-cert-file", str(workdir / "server.crt"),
                "--tls-key-file", str(workdir / "server.key"),
                "--tls-ca-cert-file", str(workdir / "ca.crt"),
                "--tls-auth-clients", "no",
            ]
        )  # fmt: skip
    if process is None:  # no openssl, or a redis-server built without TLS
        tls_port = None
        process = _start_redis(base)
    if process is None:
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.fail("could not start the private redis-server")
    try:
        yield SecureRedis(
            port=port,
            unix_path=str(workdir / "redis.sock"),
            tls_port=tls_port,
            ca_file=str(workdir / "ca.crt") if tls_port else None,
        )
    finally:
        _stop_redis(process)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def tls_redis(secure_redis: SecureRedis) -> SecureRedis:
    if secure_redis.tls_port is None:
        pytest.skip("no TLS: openssl or a TLS-enabled redis-server is missing")
    return secure_redis


# -- scripted fake servers ----------------------------------------------------------------


async def read_command(stream: SocketStream, reader: hiredis.Reader) -> list[bytes]:
    """The next command a client sent (a RESP array of bulk strings)."""
    while (command := reader.gets()) is False:
        reader.feed(await stream.receive())
    assert isinstance(command, list)
    return command


@asynccontextmanager
async def fake_redis(
    handler: Callable[[SocketStream, hiredis.Reader], Awaitable[None]],
) -> AsyncIterator[str]:
    """A TCP server running ``handler`` per connection; yields its URL."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)

    async def serve(stream: SocketStream) -> None:
        async with stream:
            with suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await handler(stream, hiredis.Reader())

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        try:
            yield f"redis://127.0.0.1:{port}"
        finally:
            tg.cancel_scope.cancel()


# -- raw replies ---------------------------------------------------------------------------


async def test_execute_strings_integers_and_nil(driver: RespDriver, prefix: str) -> None:
    key = f"{prefix}:k"
    await driver.execute("SET", key, "v")
    assert await driver.execute("GET", key) == b"v"
    assert await driver.execute("GET", f"{prefix}:missing") is None
    assert await driver.execute("INCR", f"{prefix}:n") == 1
    assert await driver.execute("INCR", f"{prefix}:n") == 2
    await driver.execute("SET", key, 0.1)  # floats go out at full precision
    assert await driver.execute("GET", key) == b"0.1"
    await driver.execute("SET", key, 1 / 3)
    assert float(await driver.execute("GET", key)) == 1 / 3
    await driver.execute("SET", key, b"\x00\xff")
    assert await driver.execute("GET", key) == b"\x00\xff"
    await driver.execute("SET", key, "é")
    assert await driver.execute("GET", key) == "é".encode()
    assert await driver.execute("HSET", f"{prefix}:h", "f", "1") == 1
    # RESP2: a flat array (redis-py 8 and coredis, on RESP3, return a dict).
    assert await driver.execute("HGETALL", f"{prefix}:h") == [b"f", b"1"]
    assert await driver.execute("ZADD", f"{prefix}:z", 1.5, "m") == 1
    assert await driver.execute("ZSCORE", f"{prefix}:z", "m") == b"1.5"


async def test_argument_types(driver: RespDriver, prefix: str) -> None:
    class Small(enum.IntEnum):
        TWO = 2

    key = f"{prefix}:args"
    await driver.execute("SET", key, Small.TWO)  # refused by hiredis: slow path
    assert await driver.execute("GET", key) == b"2"
    await driver.execute("SET", key, 2**70)
    assert await driver.execute("GET", key) == str(2**70).encode()
    with pytest.raises(TypeError, match="bool"):
        await driver.execute("SET", key, True)
    with pytest.raises(ValueError, match="empty"):
        await driver.execute()
    # Refused before anything was sent: the driver still works.
    assert await driver.execute("GET", key) == str(2**70).encode()


async def test_execute_error_reply_raises(driver: RespDriver, prefix: str) -> None:
    await driver.execute("LPUSH", f"{prefix}:list", "x")
    with pytest.raises(RedisReplyError, match=r"^WRONGTYPE") as info:
        await driver.execute("INCR", f"{prefix}:list")
    assert not info.value.is_noscript
    assert await driver.execute("LLEN", f"{prefix}:list") == 1  # the connection is fine


async def test_replies_are_raw(driver: RespDriver, prefix: str) -> None:
    key = f"{prefix}:raw"
    assert await driver.execute("SET", key, "v") == b"OK"
    assert await driver.execute("PING") == b"PONG"
    assert await driver.execute("EXPIRE", key, 100) == 1
    await driver.execute("SADD", f"{prefix}:set", "a")
    assert await driver.execute("SMEMBERS", f"{prefix}:set") == [b"a"]


LUA_NESTED = """
redis.call('SET', KEYS[1], ARGV[1])
return {1, 'two', {3, {'four', 5}}, redis.call('GET', KEYS[1]), 7.9, true, false, 'x', nil,
        'dropped'}
"""


async def test_eval_returns_nested_tables(driver: RespDriver, prefix: str) -> None:
    reply = await driver.execute("EVAL", LUA_NESTED, 1, f"{prefix}:lua", "stored")
    assert reply == [1, b"two", [3, [b"four", 5]], b"stored", 7, 1, None, b"x"]
    assert await driver.execute("EVAL", "return nil", 0) is None
    assert await driver.execute("EVAL", "return {}", 0) == []
    assert await driver.execute("EVAL", "return redis.status_reply('FINE')", 0) == b"FINE"
    with pytest.raises(RedisReplyError, match="GQM_TEST boom"):
        await driver.execute("EVAL", "return redis.error_reply('GQM_TEST boom')", 0)
    # An error nested in a table stays in place, as an exception instance.
    nested = await driver.execute("EVAL", "return {1, redis.error_reply('GQM_TEST inner')}", 0)
    assert nested[0] == 1
    assert isinstance(nested[1], RedisReplyError)
    assert str(nested[1]) == "GQM_TEST inner"


# -- pipelines ------------------------------------------------------------------------------


async def test_pipeline_returns_errors_in_place(driver: RespDriver, prefix: str) -> None:
    key = f"{prefix}:p"
    replies = await driver.pipeline(
        [
            ("INCR", key),
            ("LPUSH", key, "x"),  # wrong type: an error reply, in place
            ["INCR", key],  # lists are commands too
            ("GET", key),
            ("EVAL", "return {1, {2, 'three'}}", 0),
        ]
    )
    assert len(replies) == 5
    assert replies[0] == 1
    assert isinstance(replies[1], RedisReplyError)
    assert str(replies[1]).startswith("WRONGTYPE")
    assert replies[2:] == [2, b"2", [1, [2, b"three"]]]
    assert await driver.execute("GET", key) == b"2"


async def test_empty_and_single_pipelines(driver: RespDriver) -> None:
    assert await driver.pipeline([]) == []
    assert await driver.pipeline([("PING",)]) == [b"PONG"]


async def test_large_pipeline_and_large_values(driver: RespDriver, prefix: str) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB, every byte value
    replies = await driver.pipeline(
        [("SET", f"{prefix}:big", big), *[("ECHO", str(i)) for i in range(5000)]]
    )
    assert replies[0] == b"OK"
    assert replies[1:] == [str(i).encode() for i in range(5000)]
    assert await driver.execute("GET", f"{prefix}:big") == big


# -- NOSCRIPT -------------------------------------------------------------------------------


async def test_noscript_in_execute(driver: RespDriver) -> None:
    with pytest.raises(RedisReplyError) as info:
        await driver.execute("EVALSHA", UNKNOWN_SHA, 0)
    assert info.value.is_noscript
    assert str(info.value).startswith("NOSCRIPT")


async def test_noscript_in_pipeline_then_load(driver: RespDriver, prefix: str) -> None:
    script = f"return {{'{prefix}', tonumber(ARGV[1]) + 1}}"
    sha = hashlib.sha1(script.encode()).hexdigest()
    replies = await driver.pipeline(
        [("EVALSHA", sha, 0, 41), ("INCR", f"{prefix}:c"), ("EVALSHA", UNKNOWN_SHA, 0)]
    )
    assert isinstance(replies[0], RedisReplyError)
    assert replies[0].is_noscript
    assert replies[1] == 1
    assert isinstance(replies[2], RedisReplyError)
    assert replies[2].is_noscript
    assert await driver.execute("SCRIPT", "LOAD", script) == sha.encode()
    assert await driver.execute("EVALSHA", sha, 0, 41) == [prefix.encode(), 42]
    replies = await driver.pipeline([("EVALSHA", sha, 0, 1), ("EVALSHA", sha, 0, 2)])
    assert replies == [[prefix.encode(), 2], [prefix.encode(), 3]]


# -- concurrency and the pool ---------------------------------------------------------------


async def test_200_concurrent_commands_get_their_own_replies(
    driver: RespDriver, prefix: str
) -> None:
    replies: dict[int, Any] = {}

    async def one(i: int) -> None:
        if i % 2:
            replies[i] = await driver.execute("ECHO", f"{prefix}:{i}")
        else:
            replies[i] = await driver.pipeline([("ECHO", f"{prefix}:{i}"), ("INCR", prefix)])

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, i)
    for i in range(200):
        mine = f"{prefix}:{i}".encode()
        assert replies[i] == (mine if i % 2 else [mine, replies[i][1]])
    assert sorted(r[1] for i, r in replies.items() if not i % 2) == list(range(1, 101))


async def test_pool_is_bounded_and_calls_wait(redis_url: str, prefix: str) -> None:
    """With 2 connections, 100 concurrent calls queue up and all complete."""
    ids: list[int] = []
    async with resp_driver(redis_url, max_connections=2) as d:

        async def one(i: int) -> None:
            client_id, echoed = await d.pipeline([("CLIENT", "ID"), ("ECHO", i)])
            assert echoed == str(i).encode()
            ids.append(client_id)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(100):
                    tg.start_soon(one, i)
    assert len(ids) == 100
    assert len(set(ids)) <= 2


async def test_blocking_command_does_not_stall_others(driver: RespDriver, prefix: str) -> None:
    source = f"{prefix}:src"
    moved: list[Any] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def wait_for_item() -> None:
                reply = await driver.execute("BLMOVE", source, f"{prefix}:dst", "LEFT", "RIGHT", 5)
                moved.append(reply)

            tg.start_soon(wait_for_item)
            await anyio.wait_all_tasks_blocked()
            with anyio.fail_after(2):
                assert await driver.execute("INCR", f"{prefix}:n") == 1
                await driver.execute("RPUSH", source, "item")
    assert moved == [b"item"]


# -- cancellation and timeouts ---------------------------------------------------------------


async def test_cancelled_command_never_leaves_a_stale_reply(
    redis_url: str, observer: RespDriver, prefix: str
) -> None:
    """A BLPOP cancelled while Redis holds it: its connection is closed, not reused, so
    the next command (on a one-connection pool) reads its own reply."""
    key = f"{prefix}:list"
    async with resp_driver(redis_url, max_connections=1) as d:
        first_id = await d.execute("CLIENT", "ID")
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def blpop() -> None:
                    with scope:
                        await d.execute("BLPOP", key, 5)

                async def cancel_when_blocked() -> None:
                    await blocked_in(observer, first_id, "blpop")
                    scope.cancel()

                tg.start_soon(blpop)
                tg.start_soon(cancel_when_blocked)
            assert scope.cancelled_caught
            # Were the connection reused, its next reply would be BLPOP's [key, b"stale"].
            await observer.execute("RPUSH", key, "stale")
            assert await d.execute("ECHO", "mine") == b"mine"
            assert await d.execute("CLIENT", "ID") != first_id
            await connection_gone(observer, first_id)


async def test_cancelled_pipeline_never_leaves_a_stale_reply(
    redis_url: str, observer: RespDriver, prefix: str
) -> None:
    key = f"{prefix}:list"
    async with resp_driver(redis_url, max_connections=1) as d:
        first_id = await d.execute("CLIENT", "ID")
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def pipeline() -> None:
                    with scope:  # PING's reply is read, BLPOP's and the last PING's not
                        await d.pipeline([("PING",), ("BLPOP", key, 5), ("PING",)])

                async def cancel_when_blocked() -> None:
                    await blocked_in(observer, first_id, "blpop")
                    scope.cancel()

                tg.start_soon(pipeline)
                tg.start_soon(cancel_when_blocked)
            assert scope.cancelled_caught
            await observer.execute("RPUSH", key, "stale")
            assert await d.pipeline([("ECHO", "a"), ("ECHO", "b")]) == [b"a", b"b"]
            assert await d.execute("CLIENT", "ID") != first_id
            await connection_gone(observer, first_id)


async def test_cancelled_while_waiting_for_the_pool(redis_url: str, prefix: str) -> None:
    """A call cancelled while queued for a connection takes no slot with it."""
    async with resp_driver(redis_url, max_connections=1) as d:
        with anyio.fail_after(10):
            blocker, waiter = anyio.CancelScope(), anyio.CancelScope()

            async def hold_the_connection() -> None:
                with blocker:
                    await d.execute("BLPOP", f"{prefix}:never", 5)

            async def queue_for_a_connection() -> None:
                with waiter:
                    await d.execute("PING")

            async with anyio.create_task_group() as tg:
                tg.start_soon(hold_the_connection)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(queue_for_a_connection)
                await anyio.wait_all_tasks_blocked()  # both blocked: BLPOP, pool wait
                waiter.cancel()
                blocker.cancel()
            assert waiter.cancelled_caught
            assert blocker.cancelled_caught
            assert await d.execute("PING") == b"PONG"
            assert await d.execute("PING") == b"PONG"


async def test_socket_timeout_drops_the_connection(
    redis_url: str, observer: RespDriver, prefix: str
) -> None:
    async with resp_driver(redis_url, max_connections=1, socket_timeout=0.2) as d:
        first_id = await d.execute("CLIENT", "ID")
        with anyio.fail_after(10):
            with pytest.raises(RedisConnectionError, match="timed out"):
                await d.execute("BLPOP", f"{prefix}:list", 2)
            await observer.execute("RPUSH", f"{prefix}:list", "stale")
            assert await d.execute("ECHO", "mine") == b"mine"
            assert await d.execute("CLIENT", "ID") != first_id


async def test_socket_timeout_after_quick_requests(
    redis_url: str, observer: RespDriver, prefix: str
) -> None:
    """The timeout of a request still applies after quick ones on the same connection
    (on asyncio one timer per connection serves them all, set again as it fires)."""
    async with resp_driver(redis_url, max_connections=1, socket_timeout=0.3) as d:
        first_id = await d.execute("CLIENT", "ID")
        for _ in range(50):
            assert await d.execute("PING") == b"PONG"
        with anyio.fail_after(10):
            with pytest.raises(RedisConnectionError, match="timed out"):
                await d.execute("BLPOP", f"{prefix}:list", 5)
            assert await d.execute("CLIENT", "ID") != first_id
            await connection_gone(observer, first_id)


async def test_socket_timeout_on_a_busy_server(secure_redis: SecureRedis) -> None:
    """DEBUG SLEEP blocks the whole server: the call times out, and once the server is
    back, the next call on the same driver works."""
    url = secure_redis.host_url
    async with (
        resp_driver(url, password=PASSWORD, socket_timeout=0.2) as d,
        resp_driver(url, password=PASSWORD) as patient,
    ):
        assert await d.execute("PING") == b"PONG"
        with anyio.fail_after(10):
            with pytest.raises(RedisConnectionError, match="timed out"):
                await d.execute("DEBUG", "SLEEP", 1)
            assert await patient.execute("PING") == b"PONG"  # returns once the sleep ends
            assert await d.execute("ECHO", "after") == b"after"


async def test_reply_timeout_from_a_silent_server() -> None:
    hung_up = anyio.Event()

    async def silent(stream: SocketStream, reader: hiredis.Reader) -> None:
        await read_command(stream, reader)
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await stream.receive()  # the client closes the connection after its timeout
        hung_up.set()

    async with fake_redis(silent) as url, resp_driver(url, socket_timeout=0.1) as d:
        with anyio.fail_after(10):
            with pytest.raises(RedisConnectionError, match="timed out"):
                await d.execute("PING")
            await hung_up.wait()


async def test_connect_timeout_covers_the_setup() -> None:
    """A server that accepts but never answers AUTH: connect_timeout applies."""

    async def silent(stream: SocketStream, reader: hiredis.Reader) -> None:
        await read_command(stream, reader)
        await anyio.sleep_forever()

    async with fake_redis(silent) as url, resp_driver(url, password="x", connect_timeout=0.2) as d:
        with anyio.fail_after(10), pytest.raises(RedisConnectionError, match="timed out"):
            await d.execute("PING")


# -- lost connections ------------------------------------------------------------------------


async def test_reconnects_after_client_kill(
    redis_url: str, observer: RespDriver, prefix: str
) -> None:
    """Killed connections fail the one call that finds its connection dead (never
    replayed); that call drops the other idle connections, and the next call works."""
    async with resp_driver(redis_url) as d:
        async with anyio.create_task_group() as tg:  # several pooled connections
            for _ in range(10):
                tg.start_soon(d.execute, "PING")
        old_id = await d.execute("CLIENT", "ID")
        killed = await observer.execute("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert killed >= 2
        with anyio.fail_after(10):
            with pytest.raises(RedisConnectionError):
                await d.execute("INCR", f"{prefix}:n")
            for _ in range(20):
                assert await d.execute("PING") == b"PONG"
            assert await d.execute("CLIENT", "ID") != old_id
            # The failed INCR was not replayed.
            assert await d.execute("GET", f"{prefix}:n") is None


async def test_idle_connections_are_checked_before_reuse(
    redis_url: str, observer: RespDriver, prefix: str
) -> None:
    """With a (tiny) health check interval, a dead idle connection is found by a PING
    and replaced: no call fails."""
    async with resp_driver(redis_url, keepalive_interval=1e-9) as d:
        assert await d.execute("PING") == b"PONG"
        await observer.execute("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        with anyio.fail_after(10):
            assert await d.execute("INCR", f"{prefix}:n") == 1


async def test_server_closing_mid_reply() -> None:
    async def truncated(stream: SocketStream, reader: hiredis.Reader) -> None:
        await read_command(stream, reader)
        await stream.send(b"$10\r\nhel")

    async with fake_redis(truncated) as url, resp_driver(url) as d:
        with anyio.fail_after(10), pytest.raises(RedisConnectionError, match="closed"):
            await d.execute("GET", "k")


async def test_protocol_error_drops_the_connection() -> None:
    connections = 0

    async def garbage_first(stream: SocketStream, reader: hiredis.Reader) -> None:
        nonlocal connections
        connections += 1
        garbage = connections == 1
        while True:
            await read_command(stream, reader)
            await stream.send(b"?what\r\n" if garbage else b"+PONG\r\n")

    async with fake_redis(garbage_first) as url, resp_driver(url) as d:
        with anyio.fail_after(10):
            with pytest.raises(RedisConnectionError, match=r"[Pp]rotocol"):
                await d.execute("PING")
            assert await d.execute("PING") == b"PONG"
    assert connections == 2


async def test_connection_refused(prefix: str) -> None:
    url = f"redis://127.0.0.1:{closed_port()}"
    async with resp_driver(url, connect_timeout=2) as d:
        with anyio.fail_after(20):
            with pytest.raises(RedisConnectionError, match="cannot connect"):
                await d.execute("PING")
            with pytest.raises(RedisConnectionError):
                await d.pipeline([("PING",), ("PING",)])
            with pytest.raises(RedisConnectionError):
                async with d.subscribe(f"{prefix}:nothing"):
                    pass


# -- AUTH, SELECT, unix sockets ------------------------------------------------------------


async def test_auth_with_password(secure_redis: SecureRedis) -> None:
    for kwargs in (
        {"url": secure_redis.host_url, "password": PASSWORD},
        {"url": f"redis://:{QUOTED_PASSWORD}@127.0.0.1:{secure_redis.port}"},
    ):
        async with resp_driver(**kwargs) as d:
            assert await d.execute("ACL", "WHOAMI") == b"default"
            assert await d.pipeline([("PING",), ("ACL", "WHOAMI")]) == [b"PONG", b"default"]


async def test_auth_with_acl_user(secure_redis: SecureRedis) -> None:
    port = secure_redis.port
    for kwargs in (
        {"url": f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{port}"},
        {"host": "127.0.0.1", "port": port, "username": ACL_USER, "password": ACL_PASSWORD},
        # Keywords win over the URL's credentials.
        {
            "url": f"redis://bob:nope@127.0.0.1:{port}",
            "username": ACL_USER,
            "password": ACL_PASSWORD,
        },
    ):
        async with resp_driver(**kwargs) as d:
            assert await d.execute("ACL", "WHOAMI") == ACL_USER.encode()


async def test_auth_failures_are_connection_errors(secure_redis: SecureRedis) -> None:
    url = secure_redis.host_url
    async with resp_driver(url, password="wrong") as d:
        with pytest.raises(RedisConnectionError, match="WRONGPASS"):
            await d.execute("PING")
    async with resp_driver(url, username=ACL_USER, password="wrong") as d:
        with pytest.raises(RedisConnectionError, match="WRONGPASS"):
            await d.pipeline([("PING",)])
    async with resp_driver(url) as d:  # no password at all
        with pytest.raises(RedisConnectionError, match="NOAUTH"):
            await d.execute("PING")
        with pytest.raises(RedisConnectionError, match="NOAUTH"):
            await d.pipeline([("PING",), ("PING",)])


async def test_select_db(secure_redis: SecureRedis, prefix: str) -> None:
    base = f"redis://:{QUOTED_PASSWORD}@127.0.0.1:{secure_redis.port}"
    async with (
        resp_driver(f"{base}/3") as in_3,
        resp_driver(f"{base}?db=4") as in_4,
        resp_driver(f"{base}/3", db=5) as in_5,  # the keyword wins
        resp_driver(base) as in_0,
    ):
        for d, db in ((in_3, 3), (in_4, 4), (in_5, 5), (in_0, 0)):
            assert client_field(await d.execute("CLIENT", "INFO"), "db") == str(db)
            await d.execute("SET", f"{prefix}:db", db)
        for d, db in ((in_3, 3), (in_4, 4), (in_5, 5), (in_0, 0)):
            assert await d.execute("GET", f"{prefix}:db") == str(db).encode()
        # Every new connection selects the database, not only the first one.
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(in_3.execute, "INCR", f"{prefix}:many")
        assert await in_3.execute("GET", f"{prefix}:many") == b"20"
        assert await in_0.execute("GET", f"{prefix}:many") is None


async def test_unix_socket(secure_redis: SecureRedis, prefix: str) -> None:
    url = f"unix://{secure_redis.unix_path}?db=2"
    async with resp_driver(url, password=PASSWORD) as d:
        assert client_field(await d.execute("CLIENT", "INFO"), "db") == "2"
        assert await d.execute("INCR", f"{prefix}:unix") == 1
        async with d.subscribe(f"{prefix}:ch") as sub:
            await publish_until_heard(d, f"{prefix}:ch", b"over unix")
            assert await sub.get_message() == (f"{prefix}:ch".encode(), b"over unix")


# -- TLS ----------------------------------------------------------------------------------


async def test_tls_with_an_ssl_context(
    tls_redis: SecureRedis, prefix: str, anyio_backend: tuple[str, dict[str, Any]]
) -> None:
    assert tls_redis.ca_file is not None
    context = ssl.create_default_context(cafile=tls_redis.ca_file)
    url = f"rediss://127.0.0.1:{tls_redis.tls_port}"
    async with resp_driver(url, password=PASSWORD, ssl_context=context) as d:
        assert await d.execute("PING") == b"PONG"
        # On trio TLS keeps anyio's TLS stream: the bare socket carries ciphertext.
        (conn,) = d._idle
        native = anyio_backend[0] == "asyncio" and os.environ["GQM_RESP_TRANSPORT"] == "auto"
        assert type(conn) is (AsyncioConnection if native else _Connection)
        big = b"x" * 300_000  # several TLS records
        assert await d.pipeline([("SET", f"{prefix}:big", big), ("GET", f"{prefix}:big")]) == [
            b"OK",
            big,
        ]
        async with d.subscribe(f"{prefix}:ch") as sub:
            await publish_until_heard(d, f"{prefix}:ch", b"secret")
            assert await sub.get_message() == (f"{prefix}:ch".encode(), b"secret")


async def test_tls_from_url_parameters(tls_redis: SecureRedis) -> None:
    port = tls_redis.tls_port
    url = f"rediss://localhost:{port}?ssl_ca_certs={tls_redis.ca_file}"
    async with resp_driver(url, password=PASSWORD) as d:
        assert await d.execute("PING") == b"PONG"
    # Host and port keywords with ssl=True and a context.
    context = ssl.create_default_context(cafile=tls_redis.ca_file)
    async with resp_driver(
        host="127.0.0.1", port=port, ssl=True, ssl_context=context, password=PASSWORD
    ) as d:
        assert await d.execute("PING") == b"PONG"
    async with resp_driver(f"rediss://127.0.0.1:{port}?ssl_cert_reqs=none", password=PASSWORD) as d:
        assert await d.execute("PING") == b"PONG"


async def test_tls_verifies_the_server_by_default(tls_redis: SecureRedis) -> None:
    # The system trust store does not know the test CA.
    async with resp_driver(f"rediss://127.0.0.1:{tls_redis.tls_port}", password=PASSWORD) as d:
        with anyio.fail_after(10), pytest.raises(RedisConnectionError, match=r"(?i)certificate"):
            await d.execute("PING")


async def test_tls_cancellation_and_timeout(tls_redis: SecureRedis, prefix: str) -> None:
    context = ssl.create_default_context(cafile=tls_redis.ca_file)
    url = f"rediss://127.0.0.1:{tls_redis.tls_port}"
    async with resp_driver(
        url, password=PASSWORD, ssl_context=context, max_connections=1, socket_timeout=0.3
    ) as d:
        with anyio.fail_after(10):
            with anyio.move_on_after(0.1):
                await d.execute("BLPOP", f"{prefix}:l", 5)
            with pytest.raises(RedisConnectionError, match="timed out"):
                await d.execute("BLPOP", f"{prefix}:l", 5)
            await d.execute("RPUSH", f"{prefix}:l", "stale")
            assert await d.execute("ECHO", "mine") == b"mine"


# -- publish / subscribe ----------------------------------------------------------------------


async def test_subscribe_round_trip(driver: RespDriver, prefix: str) -> None:
    first, second = f"{prefix}:ch1", f"{prefix}:ch2"
    with anyio.fail_after(10):
        async with driver.subscribe(first, second) as sub:
            await publish_until_heard(driver, second, b"hello")
            assert await sub.get_message() == (second.encode(), b"hello")
            await publish_until_heard(driver, first, b"\x00bin")
            assert await sub.get_message() == (first.encode(), b"\x00bin")


async def test_get_message_waits_and_survives_cancellation(driver: RespDriver, prefix: str) -> None:
    channel = f"{prefix}:wait"
    received: list[tuple[bytes, bytes]] = []
    with anyio.fail_after(10):
        async with driver.subscribe(channel) as sub:
            with anyio.CancelScope() as scope:
                scope.cancel()
                await sub.get_message()  # cancelled: nothing consumed, still usable
            async with anyio.create_task_group() as tg:
                done = anyio.Event()

                async def listen() -> None:
                    received.append(await sub.get_message())
                    done.set()

                tg.start_soon(listen)
                await publish_until_heard(driver, channel, b"late")
                await done.wait()
    assert received == [(channel.encode(), b"late")]


async def test_subscription_connection_closed_on_exit(
    driver: RespDriver, observer: RespDriver, prefix: str
) -> None:
    channel = f"{prefix}:closing"
    async with driver.subscribe(channel):
        assert await observer.execute("PUBSUB", "NUMSUB", channel) == [channel.encode(), 1]
    with anyio.fail_after(10):
        while (await observer.execute("PUBSUB", "NUMSUB", channel))[1]:
            pass


async def test_subscriber_connection_loss_raises(driver: RespDriver, prefix: str) -> None:
    channel = f"{prefix}:lost"
    with anyio.fail_after(10):
        async with driver.subscribe(channel) as sub:
            await publish_until_heard(driver, channel, b"before")
            assert await sub.get_message() == (channel.encode(), b"before")
            await driver.execute("CLIENT", "KILL", "TYPE", "pubsub")
            with pytest.raises(RedisConnectionError):
                await sub.get_message()
            with pytest.raises(RedisConnectionError):  # and keeps saying so
                await sub.get_message()
        assert await driver.execute("PING") == b"PONG"


async def test_keepalive_ping_keeps_a_live_subscription(
    redis_url: str, observer: RespDriver, prefix: str
) -> None:
    """An idle subscriber PINGs; Redis' "pong" is consumed, messages still flow."""
    channel = f"{prefix}:keepalive"
    async with resp_driver(redis_url, keepalive_interval=0.05) as d:
        with anyio.fail_after(10):
            async with d.subscribe(channel) as sub, anyio.create_task_group() as tg:
                received = anyio.Event()
                got: list[tuple[bytes, bytes]] = []

                async def listen() -> None:
                    got.append(await sub.get_message())
                    received.set()

                tg.start_soon(listen)
                await pinged(observer)  # round trip by round trip
                await publish_until_heard(observer, channel, b"still here")
                await received.wait()
    assert got == [(channel.encode(), b"still here")]


async def pinged(observer: RespDriver) -> None:
    """Poll until a subscriber's last command was a (keepalive) PING."""
    while True:
        clients = await observer.execute("CLIENT", "LIST", "TYPE", "pubsub")
        if any(client_field(line, "cmd") == "ping" for line in clients.splitlines()):
            return


async def test_keepalive_answer_read_late_is_no_failure() -> None:
    """The PING's answer arrives while nobody listens, and is read after its timeout:
    that is no failure (time away from get_message does not count)."""
    got_ping, answer = anyio.Event(), anyio.Event()

    async def slow(stream: SocketStream, reader: hiredis.Reader) -> None:
        await read_command(stream, reader)
        await stream.send(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n")
        assert await read_command(stream, reader) == [b"PING"]
        got_ping.set()
        await answer.wait()
        await stream.send(
            b"*2\r\n$4\r\npong\r\n$0\r\n\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\nfine\r\n"
        )
        await anyio.sleep_forever()

    async with (
        fake_redis(slow) as url,
        resp_driver(url, keepalive_interval=0.05, socket_timeout=0.1) as d,
        d.subscribe("ch") as sub,
    ):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sub.get_message)
                await got_ping.wait()
                tg.cancel_scope.cancel()  # nobody listens when the answer comes
            answer.set()
            # Not synchronization: let the PING's deadline pass while nobody listens.
            await anyio.sleep(0.3)
            assert await sub.get_message() == (b"ch", b"fine")


async def test_keepalive_detects_a_silent_peer() -> None:
    got_ping = anyio.Event()

    async def deaf(stream: SocketStream, reader: hiredis.Reader) -> None:
        command = await read_command(stream, reader)
        assert command == [b"SUBSCRIBE", b"ch"]
        await stream.send(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n")
        assert await read_command(stream, reader) == [b"PING"]
        got_ping.set()
        await anyio.sleep_forever()  # and never answer

    async with (
        fake_redis(deaf) as url,
        resp_driver(url, keepalive_interval=0.05, socket_timeout=0.1) as d,
        d.subscribe("ch") as sub,
    ):
        with anyio.fail_after(10), pytest.raises(RedisConnectionError, match="PING"):
            await sub.get_message()
        assert got_ping.is_set()


async def test_messages_before_the_last_confirmation_are_kept() -> None:
    async def interleaved(stream: SocketStream, reader: hiredis.Reader) -> None:
        assert await read_command(stream, reader) == [b"SUBSCRIBE", b"a", b"b"]
        await stream.send(
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"
            b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nearly\r\n"
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"
            b"*3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$4\r\nlate\r\n"
        )
        await anyio.sleep_forever()

    async with fake_redis(interleaved) as url, resp_driver(url) as d, d.subscribe("a", "b") as sub:
        with anyio.fail_after(10):
            assert await sub.get_message() == (b"a", b"early")
            assert await sub.get_message() == (b"b", b"late")


async def test_unconfirmed_subscription_times_out() -> None:
    async def mute(stream: SocketStream, reader: hiredis.Reader) -> None:
        await read_command(stream, reader)
        await anyio.sleep_forever()

    async with fake_redis(mute) as url:
        d = RespDriver(RedisSettings(url=url), subscribe_timeout=0.1)
        try:
            with anyio.fail_after(10), pytest.raises(RedisConnectionError, match="confirm"):
                async with d.subscribe("ch"):
                    pass
        finally:
            await d.aclose()


# -- RESP3 (opt-in) --------------------------------------------------------------------------


async def test_resp3_shapes_and_subscriptions(secure_redis: SecureRedis, prefix: str) -> None:
    async with resp_driver(
        secure_redis.host_url, username=ACL_USER, password=ACL_PASSWORD, protocol=3
    ) as d:
        assert await d.execute("ACL", "WHOAMI") == ACL_USER.encode()  # HELLO 3 AUTH ...
        await d.execute("HSET", f"{prefix}:h", "f", "1")
        assert await d.execute("HGETALL", f"{prefix}:h") == {b"f": b"1"}
        await d.execute("ZADD", f"{prefix}:z", 1.5, "m")
        assert await d.execute("ZSCORE", f"{prefix}:z", "m") == 1.5
        replies = await d.pipeline([("INCR", f"{prefix}:h"), ("PING",)])
        assert isinstance(replies[0], RedisReplyError)
        assert replies[1] == b"PONG"
        async with d.subscribe(f"{prefix}:ch") as sub:
            await publish_until_heard(d, f"{prefix}:ch", b"pushed")
            assert await sub.get_message() == (f"{prefix}:ch".encode(), b"pushed")


# -- lifecycle ----------------------------------------------------------------------------------


async def test_aclose_closes_connections_and_refuses_calls(
    redis_url: str, observer: RespDriver
) -> None:
    d = RespDriver.from_settings(RedisSettings(url=redis_url))
    assert d.name == "resp"
    await d.open()
    await d.open()  # idempotent
    client_id = await d.execute("CLIENT", "ID")
    assert await observer.execute("CLIENT", "LIST", "ID", client_id)
    await d.aclose()
    await d.aclose()  # idempotent
    with anyio.fail_after(10):
        await connection_gone(observer, client_id)
    with pytest.raises(RedisConnectionError, match="closed"):
        await d.execute("PING")
    with pytest.raises(RedisConnectionError, match="closed"):
        async with d.subscribe("x"):
            pass


async def test_aclose_while_cancelled_still_closes(redis_url: str, observer: RespDriver) -> None:
    d = RespDriver.from_settings(RedisSettings(url=redis_url))
    client_id = await d.execute("CLIENT", "ID")
    with anyio.CancelScope() as scope:
        scope.cancel()
        await d.aclose()
    with anyio.fail_after(10):
        await connection_gone(observer, client_id)


# -- settings ----------------------------------------------------------------------------------


def test_settings_resolution() -> None:
    t = _target(RedisSettings(url="redis://u:p%40ss@example.com:7000/3"), 2)
    assert (t.host, t.port, t.path, t.ssl_context) == ("example.com", 7000, None, None)
    assert t.setup_count == 2
    assert t.setup == _pack(("AUTH", "u", "p@ss")) + _pack(("SELECT", 3))

    t = _target(RedisSettings(url="redis://:pw@h/1", db=0, password="kw"), 2)
    assert t.setup_count == 1  # AUTH only: db 0 needs no SELECT
    assert t.setup == _pack(("AUTH", "kw"))

    t = _target(RedisSettings(host="10.0.0.1", port=7001), 2)
    assert (t.host, t.port, t.setup_count) == ("10.0.0.1", 7001, 0)

    t = _target(RedisSettings(url="unix:///run/redis.sock?db=2&password=x"), 2)
    assert t.path == "/run/redis.sock"
    assert t.setup_count == 2

    t = _target(RedisSettings(url="rediss://h"), 2)
    assert t.ssl_context is not None
    assert t.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert t.ssl_context.check_hostname

    t = _target(RedisSettings(url="rediss://h?ssl_cert_reqs=none"), 2)
    assert t.ssl_context is not None
    assert t.ssl_context.verify_mode == ssl.CERT_NONE

    context = ssl.create_default_context()
    assert _target(RedisSettings(url="redis://h", ssl_context=context), 2).ssl_context is context
    assert _target(RedisSettings(url="redis://h", ssl=True), 2).ssl_context is not None

    t = _target(RedisSettings(url="redis://u:p@h"), 3)
    assert t.setup == _pack(("HELLO", 3, "AUTH", "u", "p"))


@pytest.mark.parametrize(
    "settings",
    [
        RedisSettings(url="http://h"),
        RedisSettings(url="redis://h?socket_timeout=3"),
        RedisSettings(url="redis://h/x"),
        RedisSettings(url="redis://h:99999"),
        RedisSettings(url="unix://"),
        RedisSettings(url="unix:///tmp/s", ssl=True),
        RedisSettings(url="redis://h?ssl_cert_reqs=none"),
        RedisSettings(url="rediss://h?ssl_cert_reqs=sometimes"),
    ],
)
def test_invalid_settings(settings: RedisSettings) -> None:
    with pytest.raises(ConfigurationError):
        RespDriver.from_settings(settings)


def test_invalid_protocol() -> None:
    with pytest.raises(ConfigurationError):
        RespDriver(RedisSettings(), protocol=4)  # type: ignore[arg-type]


def test_invalid_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="transport"):
        RespDriver(RedisSettings(), transport="sockets")  # type: ignore[arg-type]
    monkeypatch.setenv("GQM_RESP_TRANSPORT", "sockets")
    with pytest.raises(ConfigurationError, match="transport"):
        RespDriver(RedisSettings())


async def test_pooled_connections_use_the_transport_asked_for(
    driver: RespDriver, anyio_backend: tuple[str, dict[str, Any]]
) -> None:
    """An asyncio protocol on asyncio and uvloop, the bare socket on trio, anyio streams
    when asked for (what makes the four runs of this module cover every transport)."""
    assert await driver.execute("PING") == b"PONG"
    (conn,) = driver._idle
    if os.environ["GQM_RESP_TRANSPORT"] == "anyio":
        expected: type = _Connection
    else:
        expected = AsyncioConnection if anyio_backend[0] == "asyncio" else TrioConnection
    assert type(conn) is expected
