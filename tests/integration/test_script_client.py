"""The hot path's pipelined script connection (server.state.script_client) against real
redis-servers: order, coalescing, callers that give up, NOSCRIPT, a paused, dead or restarted
Redis, AUTH, db numbers, unix sockets and TLS."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import uvloop
from redis.asyncio.connection import Connection
from redis.exceptions import AuthenticationError, DataError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.config import Settings
from server.metrics import Metrics
from server.pipeline.guard import CircuitBreaker, bounded
from server.state.embedded_redis import EmbeddedRedis, find_redis_server, free_port
from server.state.keys import Keys
from server.state.redis_client import async_client
from server.state.redis_store import RedisStateStore
from server.state.resp_connection import pack
from server.state.script_client import Address, LuaScript, RedisPyScripts, ScriptClient, scripts_for
from server.state.store import StateUnavailable
from tests.certs import Certs
from tests.redis_tls import TlsRedis

# returns its own key and argument, and how often it has run for the key
COUNT = LuaScript.of("count", "return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}")
FAIL = LuaScript.of("fail", "return redis.error_reply('boom')")
# answers after ARGV[1] microseconds of Redis time
SLOW = LuaScript.of(
    "slow",
    "local t = redis.call('TIME') repeat local n = redis.call('TIME') "
    "until (n[1] - t[1]) * 1000000 + n[2] - t[2] >= tonumber(ARGV[1]) return 1",
)

# production runs uvloop; the tests' own loop is asyncio's
LOOPS = pytest.mark.parametrize(
    "loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)


def connections(client: redis.Redis) -> int:
    return int(client.info("stats")["total_connections_received"])


def script_client(url: str, **options: Any) -> ScriptClient:
    scripts = scripts_for(aioredis.Redis.from_url(url, **options))
    assert isinstance(scripts, ScriptClient)
    return scripts


@pytest.fixture
async def scripts(redis_url: str) -> AsyncIterator[ScriptClient]:
    client = script_client(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test alone, to pause, kill and restart."""
    server = EmbeddedRedis(tmp_path / "redis", persist=False)
    with server:
        yield server


def pid_of(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return int(client.info("server")["process_id"])


def test_arguments_are_sent_as_redis_py_sends_them() -> None:
    rng = random.Random(7)
    floats = [struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0] for _ in range(2000)]
    floats += [0.1, 1.0, -0.0, 1e22, 5e-324, float("inf"), float("nan"), rng.random() * 1e-9]
    ints = [0, -1, 2**63, -(2**70), *(rng.randrange(-(10**12), 10**12) for _ in range(200))]
    words = ["", "é", "o:offer-1:n", "(1700000000.5", b"\x00\xff"]
    args = ("EVALSHA", *floats, *ints, *words)
    assert pack(args) == b"".join(Connection().pack_command(*args))
    for bad in (True, None, [1]):
        with pytest.raises(DataError):
            pack(("SET", "k", bad))  # type: ignore[arg-type]


async def test_concurrent_calls_share_one_connection_and_get_their_own_replies(
    scripts: ScriptClient, redis_client: redis.Redis
) -> None:
    before = connections(redis_client)
    replies = await asyncio.gather(*(scripts.run(COUNT, [f"k{i % 7}"], [i]) for i in range(300)))
    assert [(r[0], r[1]) for r in replies] == [(f"k{i % 7}".encode(), str(i).encode()) for i in range(300)]
    # each key's calls ran in the order they were made
    assert [r[2] for r in replies] == [i // 7 + 1 for i in range(300)]
    assert connections(redis_client) - before == 1


async def test_a_script_redis_lacks_is_loaded_and_run(scripts: ScriptClient, redis_client: redis.Redis) -> None:
    assert await scripts.run(COUNT, ["a"], ["x"]) == [b"a", b"x", 1]
    redis_client.script_flush()
    assert await scripts.run(COUNT, ["a"], ["y"]) == [b"a", b"y", 2]
    assert redis_client.script_exists(COUNT.sha) == [True]


async def test_an_error_reply_raises_and_the_connection_stays_in_step(scripts: ScriptClient) -> None:
    with pytest.raises(ResponseError, match="boom"):
        await scripts.run(FAIL, [], [])
    assert await scripts.run(COUNT, ["b"], [1]) == [b"b", b"1", 1]


async def test_a_caller_that_gives_up_after_sending_leaves_the_replies_in_step(
    scripts: ScriptClient, redis_client: redis.Redis
) -> None:
    await scripts.run(COUNT, ["warm"], [0])  # connected and loaded: the next call goes out at once
    gone = asyncio.ensure_future(scripts.run(COUNT, ["c"], ["gone"]))
    await asyncio.sleep(0)  # the call is made ...
    await asyncio.sleep(0)  # ... and written
    gone.cancel()
    assert await scripts.run(COUNT, ["d"], ["next"]) == [b"d", b"next", 1]
    assert await scripts.run(COUNT, ["c"], ["again"]) == [b"c", b"again", 2]
    assert redis_client.get("c") == b"2"  # the abandoned call ran; its reply was dropped


async def test_a_caller_that_gives_up_before_sending_sends_nothing(
    scripts: ScriptClient, redis_client: redis.Redis
) -> None:
    await scripts.run(COUNT, ["warm"], [0])
    gone = asyncio.ensure_future(scripts.run(COUNT, ["e"], ["gone"]))
    await asyncio.sleep(0)  # made, not yet written (that waits for the end of the loop tick)
    gone.cancel()
    assert await scripts.run(COUNT, ["f"], [1]) == [b"f", b"1", 1]
    assert redis_client.get("e") is None


async def test_a_paused_redis_fails_the_waiting_calls_after_the_timeout_then_is_used_again(
    own_redis: EmbeddedRedis,
) -> None:
    scripts = script_client(own_redis.url, socket_timeout=0.3)
    pid = pid_of(own_redis.url)
    try:
        assert (await scripts.run(COUNT, ["g"], [1]))[2] == 1
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        try:
            results = await asyncio.gather(*(scripts.run(COUNT, ["g"], [i]) for i in range(5)), return_exceptions=True)
            waited = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        assert 0.3 <= waited < 3, waited  # bounded by the timeout, not by Redis coming back
        # the dropped connection's calls may still run once Redis resumes; a new one is opened
        with redis.Redis.from_url(own_redis.url) as admin:
            before = connections(admin)
            assert (await scripts.run(COUNT, ["h"], [1]))[2] == 1
            assert connections(admin) - before == 1
    finally:
        await scripts.aclose()


async def test_a_killed_redis_fails_waiting_calls_at_once_and_a_restarted_one_is_used_again(
    tmp_path: Path,
) -> None:
    port = free_port()
    first = EmbeddedRedis(tmp_path / "one", port=port, persist=False).start()
    scripts = script_client(first.url, socket_timeout=10, socket_connect_timeout=1)
    try:
        assert (await scripts.run(COUNT, ["i"], [1]))[2] == 1
        pid = pid_of(first.url)
        os.kill(pid, signal.SIGSTOP)
        waiting = asyncio.ensure_future(scripts.run(COUNT, ["i"], [2]))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(RedisConnectionError):
            await waiting
        assert time.monotonic() - started < 1.0  # not after socket_timeout
        first.stop()
        with pytest.raises(RedisConnectionError, match="error connecting"):
            await scripts.run(COUNT, ["i"], [3])
        with EmbeddedRedis(tmp_path / "two", port=port, persist=False):
            assert await scripts.run(COUNT, ["i"], [4]) == [b"i", b"4", 1]  # loaded again, too
    finally:
        first.stop()
        await scripts.aclose()


async def test_the_store_turns_a_dead_or_paused_redis_into_state_unavailable_within_the_budget(
    own_redis: EmbeddedRedis,
) -> None:
    client = aioredis.Redis.from_url(own_redis.url, socket_timeout=0.2, socket_connect_timeout=0.2)
    store = RedisStateStore(client, Keys())
    breaker = CircuitBreaker(Metrics(), failures=100, probe_seconds=1)
    loop = asyncio.get_running_loop()
    pid = pid_of(own_redis.url)
    try:
        state = await bounded(store.read("c1", "web", 1000.0, 60.0, ""), loop.time() + 1, breaker)
        assert state.vector is None and state.replay_decision_id is None
        os.kill(pid, signal.SIGSTOP)
        try:
            started = loop.time()
            with pytest.raises(StateUnavailable, match="time budget"):
                await bounded(store.read("c1", "web", 1000.0, 60.0, ""), loop.time() + 0.05, breaker)
            with pytest.raises(StateUnavailable, match="did not answer"):
                await bounded(store.read("c1", "web", 1000.0, 60.0, ""), loop.time() + 1, breaker)
            assert loop.time() - started < 0.6
        finally:
            os.kill(pid, signal.SIGCONT)
        assert (await store.read("c1", "web", 1000.0, 60.0, "")).vector is None
        own_redis.stop()
        # the call either meets the closing connection or, once it is seen closed, a failed connect
        with pytest.raises(StateUnavailable, match=r"lost|error connecting"):
            await bounded(store.read("c1", "web", 1000.0, 60.0, ""), loop.time() + 1, breaker)
        with pytest.raises(StateUnavailable, match="error connecting"):
            await bounded(store.read("c1", "web", 1000.0, 60.0, ""), loop.time() + 1, breaker)
    finally:
        await store.aclose()
        await client.aclose()


async def test_user_password_and_db_of_the_url_are_used(own_redis: EmbeddedRedis) -> None:
    with redis.Redis.from_url(own_redis.url) as admin:
        admin.execute_command("ACL", "SETUSER", "u1", "on", ">pw1", "~*", "+@all")
        base = own_redis.url.removeprefix("redis://").removesuffix("/0")
        scripts = script_client(f"redis://u1:pw1@{base}/3")
        wrong = script_client(f"redis://u1:nope@{base}/3")
        try:
            assert await scripts.run(COUNT, ["j"], [1]) == [b"j", b"1", 1]
            with pytest.raises(AuthenticationError):
                await wrong.run(COUNT, ["j"], [1])
        finally:
            await scripts.aclose()
            await wrong.aclose()
        with redis.Redis.from_url(own_redis.url.removesuffix("/0") + "/3") as db3:
            assert db3.get("j") == b"1"
        assert admin.get("j") is None


@pytest.fixture
def unix_redis(tmp_path: Path) -> Iterator[str]:
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        [find_redis_server(), "--port", "0", "--unixsocket", str(sock), "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        yield f"unix://{sock}?db=2"
    finally:
        proc.terminate()
        proc.wait()


async def test_a_unix_socket_url_is_used(unix_redis: str) -> None:
    scripts = script_client(unix_redis)
    try:
        assert await scripts.run(COUNT, ["k"], [1]) == [b"k", b"1", 1]
    finally:
        await scripts.aclose()
    with redis.Redis.from_url(unix_redis) as db2:
        assert db2.get("k") == b"1"


async def test_connections_this_client_does_not_make_go_through_redis_py(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, protocol=3)
    scripts = scripts_for(client)
    assert isinstance(scripts, RedisPyScripts)
    try:
        assert await scripts.run(COUNT, ["l"], [1]) == [b"l", b"1", 1]
    finally:
        await client.aclose()


@LOOPS
def test_rediss_with_the_settings_tls_files_and_the_url_password(
    tls_redis_server: TlsRedis, certs: Certs, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    url = tls_redis_server.url()
    trusted = Settings(redis_url=url, redis_tls_ca_file=certs.ca)
    untrusted = Settings(redis_url=url, redis_tls_ca_file=certs.other_ca)

    async def main() -> None:
        good = scripts_for(async_client(url, trusted))
        bad = scripts_for(async_client(url, untrusted))
        assert isinstance(good, ScriptClient) and good.address.tls is not None
        try:
            assert (await good.run(COUNT, ["m"], [1]))[:2] == [b"m", b"1"]
            with pytest.raises(RedisConnectionError, match="certificate"):
                await bad.run(COUNT, ["m"], [1])
        finally:
            await good.aclose()
            await bad.aclose()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


async def test_nothing_listening_is_a_connection_error() -> None:
    scripts = ScriptClient(Address("127.0.0.1:1", "127.0.0.1", free_port(), connect_timeout=1))
    with pytest.raises(RedisConnectionError, match="error connecting"):
        await scripts.run(COUNT, ["n"], [1])


@LOOPS
def test_a_busy_event_loop_is_not_taken_for_a_stuck_redis(
    redis_url: str, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    async def main() -> None:
        scripts = script_client(redis_url, socket_timeout=0.1)
        loop = asyncio.get_running_loop()
        busy, wake = socket.socketpair()

        def stall() -> None:  # an I/O callback that holds the loop past the timeout
            busy.recv(1)
            time.sleep(0.3)

        loop.add_reader(busy.fileno(), stall)
        try:
            await scripts.run(SLOW, [], [0])
            call = asyncio.ensure_future(scripts.run(SLOW, [], [30_000]))
            await asyncio.sleep(0)  # made
            wake.send(b"x")  # the stall starts in the next turn, and the reply arrives during it
            assert await call == 1
        finally:
            loop.remove_reader(busy.fileno())
            busy.close()
            wake.close()
            await scripts.aclose()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
