"""One pipelined Redis connection on asyncio.Protocol, parsed by hiredis: the hot path's script
calls without redis-py's per-call costs (pool checkout, retry wrapper, command packing in Python).

Requests leave in FIFO order, and every request made within one event-loop tick leaves in one
write: the decisions waiting in a tick share one pipeline. Replies are matched to the callers'
futures in order. A caller that gave up (its future cancelled: its decision's Redis budget ran
out) is skipped if its request has not left yet; otherwise its reply is still read, and dropped,
so the reply stream stays in step.

Failures end the connection and fail every waiting call with a redis-py exception (so callers
handle both client paths alike): the server closing it (ConnectionError), an unparseable reply,
or no reply for `timeout` seconds while a request waits (TimeoutError; redis-py's socket_timeout).
A closed connection is not reused: the owner (server.state.script_client) opens a new one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, cast

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, InvalidResponse, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_MORE = object()  # what hiredis.Reader.gets answers until a whole reply has arrived
_CONFIRM_SECONDS = 0.002  # a timer due later than now, so the loop polls before it runs it


def pack(args: tuple[str | bytes | int | float, ...]) -> bytes:
    """One command in RESP. hiredis writes int and float arguments as repr() does, the strings
    redis-py's asyncio client sends (tests/unit/test_resp_connection.py checks it); like redis-py
    it refuses other types, bool included."""
    try:
        # the stub types `args` as a 1-tuple; any length is packed
        return cast(bytes, hiredis.pack_command(args))  # type: ignore[arg-type]
    except TypeError as err:
        raise DataError(str(err)) from None


class RespConnection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, address: str, timeout: float | None) -> None:
        self.loop = loop
        self.closed = False
        self._address = address
        self._timeout = timeout
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError, notEnoughData=_MORE)
        self._transport: asyncio.Transport | None = None
        self._outbox: list[tuple[asyncio.Future[Any], bytes]] = []  # made this tick, not yet written
        self._waiting: deque[asyncio.Future[Any]] = deque()  # written, reply not yet read
        self._progress_at = 0.0  # when the oldest waiting request last saw progress
        self._watch: asyncio.TimerHandle | None = None
        self._suspect = False  # the last check found no progress for `timeout`

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        waiting = self._waiting
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not _MORE:
                if not waiting:
                    raise InvalidResponse("a reply nobody asked for")
                future = waiting.popleft()
                if not future.done():  # cancelled: the caller gave up; the reply is dropped
                    future.set_result(reply)
        except RedisError as err:
            self._abort(err)
            return
        if waiting:
            self._progress_at = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        why = f": {exc}" if exc else " (closed by the server)"
        self._fail(RedisConnectionError(f"connection to Redis at {self._address} lost{why}"))

    # -- requests --------------------------------------------------------------------------------
    def request(self, data: bytes) -> asyncio.Future[Any]:
        """The reply to the packed command `data`: its value, or a ResponseError instance for an
        error reply; the future fails with a RedisError if the connection ends first."""
        if self.closed:
            raise RedisConnectionError(f"connection to Redis at {self._address} is closed")
        future = self.loop.create_future()
        if not self._outbox:
            self.loop.call_soon(self._flush)
        self._outbox.append((future, data))
        return future

    def _flush(self) -> None:
        """Write this loop turn's requests at once. (Writing a request on an idle connection
        at once instead was measured: no faster alone, slower with 8 decisions at a time.)"""
        outbox, self._outbox = self._outbox, []
        if self.closed or self._transport is None:
            return  # _fail has failed the outbox's futures already
        # a caller that gave up before its request left: never sent
        live = [(future, data) for future, data in outbox if not future.done()]
        if not live:
            return
        if not self._waiting:
            self._progress_at = self.loop.time()
        self._waiting.extend(future for future, _ in live)
        self._transport.write(b"".join(data for _, data in live))
        if self._watch is None and self._timeout is not None:
            self._watch = self.loop.call_at(self._progress_at + self._timeout, self._check)

    def _check(self) -> None:
        """No reply for `timeout` while a request waits: Redis is stuck or gone, drop it. Unless
        the event loop itself was too busy to read: so the verdict is confirmed once more, by a
        timer not yet due, which the loop runs only after it has polled the socket again."""
        self._watch = None
        if self.closed or not self._waiting or self._timeout is None:
            return
        now = self.loop.time()
        if now - self._progress_at < self._timeout:
            self._suspect = False
            self._watch = self.loop.call_at(self._progress_at + self._timeout, self._check)
        elif not self._suspect:
            self._suspect = True
            self._watch = self.loop.call_at(now + _CONFIRM_SECONDS, self._check)
        else:
            self._abort(RedisTimeoutError(f"Redis at {self._address} did not answer for {self._timeout} s"))

    # -- the end ---------------------------------------------------------------------------------
    def close(self) -> None:
        self._abort(RedisConnectionError(f"connection to Redis at {self._address} closed by the client"), graceful=True)

    def _abort(self, err: RedisError, *, graceful: bool = False) -> None:
        self._fail(err)
        if self._transport is not None:
            if graceful:
                self._transport.close()
            else:
                self._transport.abort()

    def _fail(self, err: RedisError) -> None:
        self.closed = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        pending = [*self._waiting, *(future for future, _ in self._outbox)]
        self._waiting.clear()
        self._outbox.clear()
        for future in pending:
            if not future.done():
                future.set_exception(err)
