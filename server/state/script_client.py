"""The hot path's Lua script calls, over one pipelined connection (server.state.resp_connection).

`scripts_for(client)` gives RedisStateStore its script runner: a `ScriptClient` to the Redis of
the redis-py `client`, with the address or unix socket, db, user and password, TLS context and
timeouts of its connection pool (so one URL parse, redis-py's, decides both paths); or, for a
connection this client does not make (RESP3, a credential provider, a client name, a connection
class of one's own), `RedisPyScripts`: the same calls through redis-py. Both raise redis-py's
exceptions, so the store turns either's failures into StateUnavailable alike.

A connection that failed is dropped; the next call opens a new one (bounded by the pool's
socket_connect_timeout), so a restarted Redis is used again at once and a dead one costs each
call one failed connect, as with redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.commands.core import AsyncScript
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.state.resp_connection import RespConnection, pack

Arg = str | bytes | int | float


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    source: str
    sha: str

    @classmethod
    def of(cls, name: str, source: str) -> LuaScript:
        return cls(name, source, hashlib.sha1(source.encode()).hexdigest())

    @classmethod
    def load(cls, name: str) -> LuaScript:
        """One of server/state/lua/*.lua."""
        return cls.of(name, resources.files("server.state").joinpath("lua", name).read_text())


class Scripts(Protocol):
    async def run(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """The script's reply (EVALSHA, loading the script first if Redis lacks it)."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Address:
    """Where and how to connect, as redis-py would for the same URL and options."""

    name: str  # for messages: host:port or the socket path
    host: str = ""
    port: int = 6379
    path: str = ""  # a unix socket instead of host and port
    tls: Any = None  # an ssl.SSLContext
    handshake: tuple[tuple[Arg, ...], ...] = ()  # AUTH and SELECT, as needed
    timeout: float | None = None  # no reply for this long while a request waits: drop the connection
    connect_timeout: float | None = None


def address_of(pool: aioredis.ConnectionPool) -> Address | None:
    """The Address of `pool`'s connections, or None if this client does not make them alike."""
    return connection_address(pool.connection_class, pool.connection_kwargs)


def connection_address(kind: type[AbstractConnection], kw: dict[str, Any]) -> Address | None:
    """The Address of redis-py connections of class `kind` made with `kw` (a pool's or a cluster
    node's), or None if ScriptClient does not make them alike."""
    plain = kind in (Connection, SSLConnection, UnixDomainSocketConnection)
    if not plain or kw.get("protocol") not in (None, 2, "2") or kw.get("credential_provider") or kw.get("client_name"):
        return None
    handshake: list[tuple[Arg, ...]] = []
    if kw.get("password"):
        user = kw.get("username")
        handshake.append(("AUTH", user, kw["password"]) if user else ("AUTH", kw["password"]))
    if kw.get("db"):
        handshake.append(("SELECT", int(kw["db"])))
    timeout = kw.get("socket_timeout")
    connect_timeout = kw.get("socket_connect_timeout") or timeout
    if kind is UnixDomainSocketConnection:
        path = str(kw["path"])
        return Address(path, path=path, handshake=tuple(handshake), timeout=timeout, connect_timeout=connect_timeout)
    host, port = str(kw.get("host", "localhost")), int(kw.get("port", 6379))
    # the TLS context redis-py itself would use: CA, client certificate, hostname check, versions
    tls = kind(**kw).ssl_context.get() if kind is SSLConnection else None
    return Address(f"{host}:{port}", host, port, "", tls, tuple(handshake), timeout, connect_timeout)


class ScriptClient:
    """Script calls over one RespConnection, opened on first use and again after a failure."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self._conn: RespConnection | None = None
        self._connecting: asyncio.Task[RespConnection] | None = None

    async def run(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg], *, asking: bool = False) -> Any:
        """The script's reply; `asking`: ASKING first (a cluster slot being imported here)."""
        data = pack(("EVALSHA", script.sha, len(keys), *keys, *args))
        reply = await self._call_asking(data) if asking else await self.call(data)
        if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT"):
            _checked(await self.call(pack(("SCRIPT", "LOAD", script.source))))
            reply = await self._call_asking(data) if asking else await self.call(data)
        return _checked(reply)

    async def _call_asking(self, data: bytes) -> Any:
        """ASKING and the command back to back on one connection, as Redis Cluster requires."""
        conn = await self._open()
        asked, reply = conn.request(pack(("ASKING",))), conn.request(data)
        _checked(await asked)
        return await reply

    async def call(self, data: bytes) -> Any:
        """The reply to one packed command; an error reply is returned as a ResponseError."""
        conn = self._conn  # inline, not _open(): one coroutine less on every hot-path call
        if conn is None or conn.closed or conn.loop is not asyncio.get_running_loop():
            conn = await self._connection()
        return await conn.request(data)

    async def _open(self) -> RespConnection:
        conn = self._conn
        if conn is None or conn.closed or conn.loop is not asyncio.get_running_loop():
            conn = await self._connection()
        return conn

    async def _connection(self) -> RespConnection:
        """The open connection, connecting once for all callers that need it meanwhile."""
        loop = asyncio.get_running_loop()
        task = self._connecting
        if task is None or task.get_loop() is not loop:
            self._drop()
            task = self._connecting = loop.create_task(self._connect(loop))
            task.add_done_callback(self._connected)
        # one caller giving up (its decision's budget ran out) must not cancel the others' connect
        return await asyncio.shield(task)

    def _connected(self, task: asyncio.Task[RespConnection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._conn = task.result()

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> RespConnection:
        a = self.address
        conn: RespConnection | None = None
        try:
            async with asyncio.timeout(a.connect_timeout):
                if a.path:
                    _, conn = await loop.create_unix_connection(lambda: RespConnection(loop, a.name, a.timeout), a.path)
                else:
                    _, conn = await loop.create_connection(
                        lambda: RespConnection(loop, a.name, a.timeout),
                        a.host,
                        a.port,
                        ssl=a.tls,
                        server_hostname=a.host if a.tls else None,
                    )
                replies = await asyncio.gather(*(conn.request(pack(command)) for command in a.handshake))
        except TimeoutError:
            _close(conn)
            raise RedisTimeoutError(f"timeout connecting to Redis at {a.name}") from None
        except OSError as err:
            _close(conn)
            raise RedisConnectionError(f"error connecting to Redis at {a.name}: {err}") from None
        for command, reply in zip(a.handshake, replies, strict=True):
            if isinstance(reply, ResponseError):
                _close(conn)
                raise (AuthenticationError if command[0] == "AUTH" else RedisConnectionError)(str(reply))
        return conn

    def _drop(self) -> None:
        """Forget the connection (and a connect under way), e.g. of an event loop now closed."""
        if self._connecting is not None:
            with contextlib.suppress(RuntimeError):  # its event loop is closed
                self._connecting.cancel()
            self._connecting = None
        _close(self._conn)
        self._conn = None

    async def aclose(self) -> None:
        self._drop()


def _checked(reply: Any) -> Any:
    if isinstance(reply, ResponseError):
        raise reply
    return reply


def _close(conn: RespConnection | None) -> None:
    if conn is not None:
        with contextlib.suppress(RuntimeError):  # its event loop is closed: nothing left to close
            conn.close()


class RedisPyScripts:
    """The same script calls through redis-py, for connections ScriptClient does not make."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._registered: dict[str, AsyncScript] = {}

    async def run(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        registered = self._registered.get(script.name)
        if registered is None:
            registered = self._registered[script.name] = self._client.register_script(script.source)
        return await registered(keys=list(keys), args=list(args))

    async def aclose(self) -> None:
        """Nothing of its own to close: the redis-py client is its owner's."""


def scripts_for(client: aioredis.Redis) -> Scripts:
    address = address_of(client.connection_pool)
    return RedisPyScripts(client) if address is None else ScriptClient(address)
