"""Typed records of decisions and outcomes, and the writer that appends them to Redis Streams.

The decision log is the training and evaluation data of later stages: its schema is a contract.
Each stream entry has two fields: `v` (record schema version) and `r` (the record as JSON).
Records are queued in memory and written in pipelined batches off the request path; a decision
waits at most `log_flush_seconds` before it is in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.domain import CampaignType, Decision, NoOfferReason, RankedOffer, SuppressedOffer
from server.keys import Keys
from server.metrics import Metrics

log = logging.getLogger(__name__)
RECORD_VERSION = "1"


@dataclass(frozen=True, slots=True)
class CandidateRecord:
    offer_id: str
    campaign_id: str
    propensity: float
    expected_value: float
    score: float
    selection_probability: float
    status: str  # "chosen", or why it was not: "contact_policy: ...", "below_threshold", ...


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
    features: list[float] | None
    candidates: list[CandidateRecord]
    chosen: list[str]
    no_offer_reason: str
    model_version: str
    catalog_version: str
    degraded: bool
    control_group: bool


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    event_id: str
    decision_id: str
    customer_id: str
    offer_id: str
    outcome: str
    value: float
    ts: float


def _fields(record: DecisionRecord | OutcomeRecord) -> dict[Any, Any]:
    # NaN (missing feature) is not JSON; None round-trips as missing
    data = asdict(record)
    if isinstance(record, DecisionRecord) and record.features is not None:
        data["features"] = [None if math.isnan(f) else f for f in record.features]
    return {"v": RECORD_VERSION, "r": json.dumps(data, separators=(",", ":"))}


def encode_decision(decision: Decision) -> bytes:
    return json.dumps(asdict(decision), separators=(",", ":")).encode()


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
        max_queue: int = 100_000,
    ) -> None:
        self.client = client
        self.keys = keys
        self.metrics = metrics
        self.flush_seconds = flush_seconds
        self.maxlen = maxlen
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="log-writer")

    def decision(self, record: DecisionRecord, replay_key: str | None, payload: bytes | None) -> None:
        self._put(("decision", (record, replay_key, payload)))

    def outcome(self, record: OutcomeRecord) -> None:
        self._put(("outcome", record))

    def _put(self, item: tuple[str, Any]) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            # losing a log line beats blocking a live decision; the counter makes it visible
            self.metrics.log_dropped.inc()

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            await asyncio.sleep(self.flush_seconds)
            batch = [first]
            while not self._queue.empty() and len(batch) < 2000:
                batch.append(self._queue.get_nowait())
            await self._write(batch)

    async def _write(self, batch: list[tuple[str, Any]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for kind, item in batch:
            if kind == "decision":
                record, replay_key, payload = item
                pipe.xadd(self.keys.decision_stream, _fields(record), maxlen=self.maxlen, approximate=True)
                if replay_key is not None:
                    pipe.hset(replay_key, "response", payload)
            else:
                pipe.xadd(self.keys.outcome_stream, _fields(item), maxlen=self.maxlen, approximate=True)
        for attempt in range(5):
            try:
                await pipe.execute()
                self.metrics.log_written.inc(len(batch))
                return
            except RedisError as err:
                log.warning("decision log write failed (attempt %d): %s", attempt + 1, err)
                await asyncio.sleep(0.1 * 2**attempt)
        self.metrics.log_dropped.inc(len(batch))

    async def close(self) -> None:
        """Write what is queued, then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        batch = []
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        if batch:
            await self._write(batch)
