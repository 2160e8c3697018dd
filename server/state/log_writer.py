"""The writer that appends decision and outcome records to Redis Streams.

Records are queued in memory and written in pipelined batches off the request path; a decision
waits at most `log_flush_seconds` before it is in Redis. The writer also trims both streams every
`log_trim_seconds`, never past what a consumer group still needs (server.state.streams.safe_trim).

The log is the training data and the evidence for `nbo budgets reconcile`, so an outage must not
cost records: a batch Redis refuses is retried until Redis answers; meanwhile new records wait in
memory up to `spill_at`, and beyond that move to a local spill file (server.state.spill) that is
replayed once Redis is back, by this worker or, if it stops first, by the next one to start.
Only when there is no spill directory and the memory queue is full is a record dropped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from server.metrics import Metrics
from server.state.keys import Keys
from server.state.records import DecisionRecord, OutcomeRecord
from server.state.spill import SpillDir, decode_item, encode_item
from server.state.streams import safe_trim

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Replay:
    """Where a decision's full answer is kept for request_id repeats. The request key itself is
    written before the answer leaves, by the commit script or the service's claim."""

    decision_key: str
    payload: bytes
    # only in spill files written before request ids were claimed at once: the request key to
    # set here (first writer wins); kept so that those files still replay
    request_key: str | None = None
    decision_id: str = ""
    request_ttl: int = 0
    # set when no commit script created the decision key (nothing was awarded): its expiry
    decision_ttl: int = 0


# (stream key, stream fields, replay)
_Item = tuple[str, dict[Any, Any], Replay | None]


class _Buffer:
    """A bounded FIFO whose items stay in it until taken, so cancelling the writer loses none."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: collections.deque[_Item] = collections.deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: _Item) -> None:
        if len(self._items) >= self.limit:
            raise asyncio.QueueFull
        self._items.append(item)
        self._ready.set()

    def wake(self) -> None:
        self._ready.set()

    async def get_ready(self) -> None:
        await self._ready.wait()

    def take(self, n: int) -> list[_Item]:
        out = [self._items.popleft() for _ in range(min(n, len(self._items)))]
        if not self._items:
            self._ready.clear()
        return out


class LogWriter:
    """Batches stream appends (and replay payloads) into pipelines on a background task."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        metrics: Metrics,
        *,
        flush_seconds: float,
        maxlen: int,
        trim_seconds: float = 10.0,
        max_queue: int = 100_000,
        spill_dir: Path | None = None,
        spill_at: int = 10_000,
    ) -> None:
        self.client = client
        self.keys = keys
        self.metrics = metrics
        self.flush_seconds = flush_seconds
        self.maxlen = maxlen
        self.trim_seconds = trim_seconds
        self._queue = _Buffer(max_queue)
        self._spill = SpillDir(spill_dir) if spill_dir is not None else None
        self.spill_at = spill_at
        self._spilled = False  # this worker's own spill file has records to replay
        self._inflight: list[_Item] = []
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._trimmer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="log-writer")
        self._trimmer = asyncio.create_task(self._trim_loop(), name="log-trimmer")

    def decision(self, record: DecisionRecord, replay: Replay | None) -> None:
        self._put((self.keys.decision_stream, record.to_fields(), replay))

    def outcome(self, record: OutcomeRecord) -> None:
        self._put((self.keys.outcome_stream, record.to_fields(), None))

    def _put(self, item: _Item) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            # losing a log line beats blocking a live decision; the counter makes it visible
            self.metrics.log_dropped.inc()

    async def _run(self) -> None:
        await self._replay()  # what a worker that stopped during an outage left behind
        while not (self._closing and not len(self._queue)):
            await self._queue.get_ready()
            if not self._closing:
                await asyncio.sleep(self.flush_seconds)
            await self._write(self._queue.take(2000))
            if self._spilled:
                await self._replay()

    async def _write(self, batch: list[_Item]) -> None:
        if not batch:
            return
        self._inflight = batch
        attempt = 0
        while True:
            try:
                # a fresh pipeline per attempt: a failed execute() empties the one it ran, and
                # re-running that would "succeed" without writing anything. A retry after a
                # partial write appends some entries twice, which readers de-duplicate.
                await self._pipeline(batch).execute()
                self.metrics.log_written.inc(len(batch))
                self._inflight = []
                return
            except RedisError as err:
                attempt += 1
                if attempt == 1 or attempt % 50 == 0:
                    log.warning("decision log write failed (attempt %d, %d queued): %s", attempt, len(self._queue), err)
                if len(self._queue) > self.spill_at:
                    await self._spill_queue(len(self._queue) - self.spill_at // 2)
                await asyncio.sleep(min(1.0, 0.05 * 2**attempt))

    async def _spill_queue(self, n: int) -> None:
        """Move the oldest n queued records to the spill file, keeping memory bounded."""
        if self._spill is None:
            return  # without a spill directory the queue's own limit decides (records dropped)
        items = self._queue.take(n)
        await asyncio.to_thread(self._spill_sync, items)

    def _spill_sync(self, items: list[_Item]) -> None:
        assert self._spill is not None
        self._spill.append([encode_item(s, f, _replay_tuple(r)) for s, f, r in items])
        self._spilled = True
        self.metrics.log_spilled.inc(len(items))

    async def _replay(self) -> None:
        """Write every spill file nobody holds (this worker's own included) to Redis, then delete it."""
        if self._spill is None:
            return
        self._spill.release()
        self._spilled = False
        for path in await asyncio.to_thread(self._spill.claim):
            f = self._spill.open_claimed(path)
            if f is None:
                continue
            try:
                while lines := await asyncio.to_thread(SpillDir.read_lines, f, 2000):
                    batch = [_from_line(line) for line in lines]
                    await self._write(batch)
                    self.metrics.log_replayed.inc(len(batch))
                path.unlink()
                log.info("replayed spilled log records from %s", path.name)
            finally:
                f.close()

    def _pipeline(self, batch: list[_Item]) -> Pipeline:
        pipe = self.client.pipeline(transaction=False)
        for stream, fields, replay in batch:
            # no MAXLEN here: it would drop entries a consumer group has not acknowledged yet
            pipe.xadd(stream, fields)
            if replay is None:
                continue
            pipe.hset(replay.decision_key, "response", replay.payload)
            if replay.decision_ttl:
                pipe.expire(replay.decision_key, replay.decision_ttl)
            if replay.request_key is not None:
                pipe.set(replay.request_key, replay.decision_id, nx=True, ex=replay.request_ttl)
        return pipe

    async def _trim_loop(self) -> None:
        # a task of its own, so a slow trim never holds up the next batch of records
        while True:
            await asyncio.sleep(self.trim_seconds)
            try:
                await self.trim()
            except Exception:  # a bug here must not stop trimming for the life of the worker
                log.exception("trimming the decision log failed")

    async def trim(self) -> int:
        """Trim the three logs toward `maxlen`, never past what a consumer group still needs.

        Returns the entries removed. Failures are logged and retried on the next round: an
        untrimmed stream is only longer, never wrong.
        """
        removed = 0
        for stream in (self.keys.decision_stream, self.keys.outcome_stream, self.keys.conversion_stream):
            try:
                n = await safe_trim(self.client, stream, self.maxlen)
            except RedisError as err:
                log.warning("trimming %s failed: %s", stream, err)
                continue
            self.metrics.log_trimmed.inc(n)
            removed += n
        return removed

    async def close(self, wait_seconds: float = 10.0) -> None:
        """Write everything queued, then stop. What Redis does not take within `wait_seconds`
        goes to the spill file for the next worker to replay (or, with no spill directory, is lost)."""
        self._closing = True
        if self._trimmer is not None:
            # a cancellation that lands inside redis-py's call can be swallowed there, leaving the
            # loop running: cancel again until the task has really ended (seen in bench_reserve)
            while not self._trimmer.done():
                self._trimmer.cancel()
                await asyncio.wait({self._trimmer}, timeout=0.5)
            self._trimmer = None
        self._queue.wake()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, wait_seconds)
            except TimeoutError:
                self._give_up()
            self._task = None
        if self._spill is not None:
            self._spill.release()

    def _give_up(self) -> None:
        left = self._inflight + self._queue.take(len(self._queue))
        self._inflight = []
        if self._spill is not None and left:
            self._spill_sync(left)
            log.error(
                "decision log: Redis did not take %d records before shutdown; they are in the spill file", len(left)
            )
        elif left:
            self.metrics.log_dropped.inc(len(left))
            log.error("decision log writer did not finish; %d records lost (no spill directory)", len(left))


def _replay_tuple(replay: Replay | None) -> tuple[Any, ...] | None:
    return None if replay is None else astuple(replay)


def _from_line(line: str) -> _Item:
    stream, fields, rp = decode_item(line)
    return stream, dict(fields), None if rp is None else Replay(*rp)
