"""Typed records of decisions and outcomes, and the writer that appends them to Redis Streams.

The decision log is the training and evaluation data of later stages: its schema is a contract.
Each stream entry has two fields: `v` (record schema version) and `r` (the record as JSON).
Records are queued in memory and written in pipelined batches off the request path; a decision
waits at most `log_flush_seconds` before it is in Redis.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.domain import CampaignType, Decision, NoOfferReason, RankedOffer, SuppressedOffer
from server.keys import Keys
from server.metrics import Metrics
from server.streams import safe_trim

log = logging.getLogger(__name__)
RECORD_VERSION = "1"


@dataclass(frozen=True, slots=True)
class Candidates:
    """The candidates a decision considered, as columns (one entry per offer on the channel that
    reached scoring or was stopped by contact policy, budget or rank)."""

    offer_id: list[str]
    campaign_id: list[str]
    propensity: list[float]
    expected_value: list[float]
    score: list[float]
    selection_probability: list[float]
    status: list[str]  # "chosen", or why not: "contact policy: ...", "budget exhausted", ...

    def to_dict(self) -> dict[str, list[Any]]:
        return {
            "offer_id": self.offer_id,
            "campaign_id": self.campaign_id,
            "propensity": self.propensity,
            "expected_value": self.expected_value,
            "score": self.score,
            "selection_probability": self.selection_probability,
            "status": self.status,
        }


NO_CANDIDATES = Candidates([], [], [], [], [], [], [])


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    decision_id: str
    ts: float
    customer_id: str
    channel: str
    placement: str
    context: dict[str, float]
    events: list[str]
    request_id: str
    schema_version: int | None
    features: list[float] | None  # NaN (missing) is written as null
    candidates: Candidates
    chosen: list[str]
    no_offer_reason: str
    model_version: str
    catalog_version: str
    bandit_version: str  # the exploration policy and learned parameters the decision used
    degraded: bool
    control_group: bool  # in the universal control group: nothing was awarded
    would_offer: list[str]  # what a control-group customer would have been offered (for lift)

    def to_fields(self) -> dict[Any, Any]:
        data = {
            "decision_id": self.decision_id,
            "ts": self.ts,
            "customer_id": self.customer_id,
            "channel": self.channel,
            "placement": self.placement,
            "context": self.context,
            "events": self.events,
            "request_id": self.request_id,
            "schema_version": self.schema_version,
            "features": None if self.features is None else [None if math.isnan(f) else f for f in self.features],
            "candidates": self.candidates.to_dict(),
            "chosen": self.chosen,
            "no_offer_reason": self.no_offer_reason,
            "model_version": self.model_version,
            "catalog_version": self.catalog_version,
            "bandit_version": self.bandit_version,
            "degraded": self.degraded,
            "control_group": self.control_group,
            "would_offer": self.would_offer,
        }
        return {"v": RECORD_VERSION, "r": _dumps(data)}


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    event_id: str
    decision_id: str
    customer_id: str
    offer_id: str
    outcome: str
    value: float
    ts: float
    channel: str  # of the decision
    propensity: float  # the offer's base propensity when it was decided (NaN: unknown)
    prior_sd: float  # the bandit's prior sd for the offer's offset (NaN: unknown)

    def to_fields(self) -> dict[Any, Any]:
        data = asdict(self)
        for name in ("propensity", "prior_sd"):
            data[name] = None if math.isnan(data[name]) else data[name]
        return {"v": RECORD_VERSION, "r": _dumps(data)}


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def encode_decision(decision: Decision) -> bytes:
    return _dumps(asdict(decision)).encode()


def decode_decision(raw: bytes) -> Decision:
    d: dict[str, Any] = json.loads(raw)
    return Decision(
        decision_id=d["decision_id"],
        offers=tuple(
            RankedOffer(**{**o, "campaign_type": CampaignType(o["campaign_type"]), "reasons": tuple(o["reasons"])})
            for o in d["offers"]
        ),
        no_offer_reason=NoOfferReason(d["no_offer_reason"]),
        model_version=d["model_version"],
        catalog_version=d["catalog_version"],
        degraded=d["degraded"],
        suppressed=tuple(SuppressedOffer(**s) for s in d["suppressed"]),
        replayed=True,
    )


@dataclass(frozen=True, slots=True)
class Replay:
    """Where a decision's full answer is kept for request_id repeats."""

    decision_key: str
    payload: bytes
    # set when no commit script ran, so the request key must be written here (first writer wins)
    request_key: str | None = None
    decision_id: str = ""
    request_ttl: int = 0
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
    ) -> None:
        self.client = client
        self.keys = keys
        self.metrics = metrics
        self.flush_seconds = flush_seconds
        self.maxlen = maxlen
        self.trim_seconds = trim_seconds
        self._next_trim = 0.0
        self._queue = _Buffer(max_queue)
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="log-writer")

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
        while not (self._closing and not len(self._queue)):
            await self._queue.get_ready()
            if not self._closing:
                await asyncio.sleep(self.flush_seconds)
            await self._write(self._queue.take(2000))

    async def _write(self, batch: list[_Item]) -> None:
        if not batch:
            return
        pipe = self.client.pipeline(transaction=False)
        for stream, fields, replay in batch:
            # no MAXLEN here: it would drop entries a consumer group has not acknowledged yet
            pipe.xadd(stream, fields)
            if replay is None:
                continue
            pipe.hset(replay.decision_key, "response", replay.payload)
            if replay.request_key is not None:
                pipe.expire(replay.decision_key, replay.decision_ttl)
                pipe.set(replay.request_key, replay.decision_id, nx=True, ex=replay.request_ttl)
        for attempt in range(5):
            try:
                await pipe.execute()
                self.metrics.log_written.inc(len(batch))
                await self._trim()
                return
            except RedisError as err:
                log.warning("decision log write failed (attempt %d): %s", attempt + 1, err)
                await asyncio.sleep(0.1 * 2**attempt)
        self.metrics.log_dropped.inc(len(batch))

    async def _trim(self) -> None:
        """Keep the streams near `maxlen`, never past what a consumer group still needs."""
        now = time.monotonic()
        if now < self._next_trim:
            return
        self._next_trim = now + self.trim_seconds
        for stream in (self.keys.decision_stream, self.keys.outcome_stream):
            try:
                self.metrics.log_trimmed.inc(await safe_trim(self.client, stream, self.maxlen))
            except RedisError as err:
                log.warning("trimming %s failed: %s", stream, err)

    async def close(self, wait_seconds: float = 10.0) -> None:
        """Write everything queued, then stop (a batch being written is never abandoned)."""
        self._closing = True
        self._queue.wake()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, wait_seconds)
            except TimeoutError:
                log.error(
                    "decision log writer did not finish within %.0fs; %d records lost", wait_seconds, len(self._queue)
                )
            self._task = None
