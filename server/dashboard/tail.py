"""Following the decision and outcome streams from the dashboard process.

At start the window is read back with XRANGE from a time-based entry id (the stream ids are the
Redis time of each append, so `<ms>-0` is the first entry at or after that millisecond), in
chunks; after that one blocking XREAD over both streams waits for what follows the last id seen (on a
Redis Cluster, one XREAD per stream at once: the two are in different slots).
The dashboard holds no consumer group and acknowledges nothing: it never changes what the
learner or a trim sees. Its cost on Redis is one connection blocked in XREAD and one read per
batch of new entries, whatever the traffic; the servers do nothing for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.dashboard.window import RollingWindow
from server.state.keys import Keys
from server.state.records import RecordError, decode_decision_record, decode_outcome_record
from server.state.redis_client import is_cluster

log = logging.getLogger(__name__)
Entry = tuple[bytes, dict[bytes, bytes]]


@dataclass(slots=True)
class TailStats:
    decisions: int = 0  # decision entries read
    outcomes: int = 0
    unreadable: int = 0  # entries of another record version, or malformed
    first_unreadable: str = ""  # "<stream> <entry id>: <why>"
    caught_up: bool = False  # the read back of the window is done
    errors: int = 0  # failed reads (Redis away), retried


class LogTail:
    """Feeds `window` from the streams of `keys`; outcomes' campaigns come from `campaign_of`."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        window: RollingWindow,
        campaign_of: Callable[[str], str | None],
        *,
        batch: int = 1000,
        block_ms: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.keys = keys
        self.window = window
        self.campaign_of = campaign_of
        self.batch = batch
        self.block_ms = block_ms
        self.clock = clock
        self.stats = TailStats()
        self._last: dict[str, str] = {}

    async def backfill(self) -> None:
        """Read the window back from both streams, oldest first, `batch` entries at a time; a
        read back cut short by an error resumes after the last entry counted."""
        start = f"{max(0, int((self.clock() - self.window.seconds) * 1000))}-0"
        for stream in (self.keys.decision_stream, self.keys.outcome_stream):
            while True:
                last = self._last.get(stream)
                low = start if last is None else "(" + last
                entries: Any = await self.client.xrange(stream, min=low, max="+", count=self.batch)
                self._apply(stream, entries)
                if len(entries) < self.batch:
                    break
            self._last.setdefault(stream, start)  # XREAD: what follows (exclusive)
        self.window.prune(self.clock())
        self.stats.caught_up = True

    async def step(self) -> int:
        """Wait up to block_ms for new entries of either stream and count them; how many came."""
        streams: dict[Any, Any] = dict(self._last)
        if is_cluster(self.client):
            # the streams are in different slots, so one XREAD cannot name both: a blocking read
            # of each at once (what arrives on one waits at most block_ms for the other's read)
            reads = [self.client.xread({s: i}, count=self.batch, block=self.block_ms) for s, i in streams.items()]
            reply: Any = [found for each in await asyncio.gather(*reads) for found in each or ()]
        else:
            reply = await self.client.xread(streams, count=self.batch, block=self.block_ms)
        read = 0
        for stream, entries in reply or ():
            name = stream.decode() if isinstance(stream, bytes) else str(stream)
            self._apply(name, entries)
            read += len(entries)
        self.window.prune(self.clock())
        return read

    def _apply(self, stream: str, entries: list[Entry]) -> None:
        decisions = stream == self.keys.decision_stream
        for entry_id, fields in entries:
            try:
                if decisions:
                    self.stats.decisions += 1
                    self.window.add_decision(decode_decision_record(fields))
                else:
                    self.stats.outcomes += 1
                    self.window.add_outcome(decode_outcome_record(fields), self.campaign_of)
            except RecordError as err:
                self.stats.unreadable += 1
                if not self.stats.first_unreadable:
                    self.stats.first_unreadable = f"{stream} {entry_id.decode()}: {err}"
        if entries:
            self._last[stream] = entries[-1][0].decode()

    async def run(self, stop: asyncio.Event) -> None:
        """Read back the window, then follow the streams until `stop`; Redis errors are retried."""
        while not stop.is_set():
            try:
                if not self.stats.caught_up:
                    await self.backfill()
                await self.step()
            except (RedisError, OSError) as err:
                self.stats.errors += 1
                log.warning("reading the log streams failed, retrying in 1 s: %s", err)
                await asyncio.sleep(1.0)
