"""Typed records of decisions and outcomes, and the writer that appends them to Redis Streams.

The decision log is the training and evaluation data of later stages: its schema is a contract.
Each stream entry has two fields: `v` (record schema version) and `r` (the record as JSON).
Records are queued in memory and written in pipelined batches off the request path; a decision
waits at most `log_flush_seconds` before it is in Redis. The writer also trims both streams every
`log_trim_seconds`, never past what a consumer group still needs (server.streams.safe_trim).
Readers (the learner, `nbo export`) turn entries back into records with
`decode_decision_record` / `decode_outcome_record`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
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


class RecordError(ValueError):
    """A log entry that is not a record this code can read; the message says what is wrong."""


# a stream entry as redis-py returns it (bytes), or decoded (decode_responses=True)
Fields = Mapping[bytes, bytes] | Mapping[str, str]


def decode_decision_record(fields: Fields) -> DecisionRecord:
    """The DecisionRecord of a decision-stream entry (the inverse of `to_fields`).

    Records written before a field existed read with a neutral default (empty text or list,
    false, NaN for a number), so every reader of an old log sees the current type.
    """
    d = _payload(fields, "decision")
    try:
        features = d.get("features")
        schema_version = d.get("schema_version")
        return DecisionRecord(
            decision_id=str(d["decision_id"]),
            ts=float(d["ts"]),
            customer_id=str(d.get("customer_id") or ""),
            channel=str(d.get("channel") or ""),
            placement=str(d.get("placement") or ""),
            context={str(k): _number(v) for k, v in (d.get("context") or {}).items()},
            events=[str(e) for e in d.get("events") or ()],
            request_id=str(d.get("request_id") or ""),
            schema_version=None if schema_version is None else int(schema_version),
            features=None if features is None else [_number(f) for f in features],
            candidates=_candidates(d.get("candidates")),
            chosen=[str(o) for o in d.get("chosen") or ()],
            no_offer_reason=str(d.get("no_offer_reason") or ""),
            model_version=str(d.get("model_version") or ""),
            catalog_version=str(d.get("catalog_version") or ""),
            bandit_version=str(d.get("bandit_version") or ""),
            degraded=bool(d.get("degraded", False)),
            control_group=bool(d.get("control_group", False)),
            would_offer=[str(o) for o in d.get("would_offer") or ()],
        )
    except KeyError as err:
        raise RecordError(f"decision record without {err.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as err:
        raise RecordError(f"malformed decision record {d.get('decision_id')!r}: {err}") from None


def decode_outcome_record(fields: Fields) -> OutcomeRecord:
    """The OutcomeRecord of an outcome-stream entry (the inverse of `to_fields`); fields added
    later (channel, propensity, prior_sd) default to "" and NaN (unknown)."""
    d = _payload(fields, "outcome")
    try:
        decision_id, offer_id, outcome = str(d["decision_id"]), str(d["offer_id"]), str(d["outcome"])
        return OutcomeRecord(
            # the id ReportOutcome gives a report without one
            event_id=str(d.get("event_id") or f"{decision_id}:{offer_id}:{outcome}"),
            decision_id=decision_id,
            customer_id=str(d.get("customer_id") or ""),
            offer_id=offer_id,
            outcome=outcome,
            value=_number(d.get("value", 0.0)),
            ts=float(d["ts"]),
            channel=str(d.get("channel") or ""),
            propensity=_number(d.get("propensity")),
            prior_sd=_number(d.get("prior_sd")),
        )
    except KeyError as err:
        raise RecordError(f"outcome record without {err.args[0]!r}") from None
    except (TypeError, ValueError) as err:
        raise RecordError(f"malformed outcome record {d.get('event_id')!r}: {err}") from None


def _payload(fields: Fields, kind: str) -> dict[str, Any]:
    raw: bytes | str | None = None
    for name, value in fields.items():
        if name in (b"r", "r"):
            raw = value
    if raw is None:
        raise RecordError(f"{kind} log entry without a record field 'r'")
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise RecordError(f"{kind} record is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise RecordError(f"{kind} record is not a JSON object")
    return data


def _number(value: Any) -> float:
    """null (how NaN is written) and absent both read as NaN."""
    return math.nan if value is None else float(value)


def _candidates(data: Any) -> Candidates:
    if not data:
        return NO_CANDIDATES
    if isinstance(data, list):  # the first layout: one object per candidate
        data = {name: [row.get(name) for row in data] for name in _CANDIDATE_COLUMNS}
    offers = [str(o) for o in data.get("offer_id") or ()]

    def text(name: str) -> list[str]:
        values = data.get(name)
        return [str(v or "") for v in values] if values is not None else [""] * len(offers)

    def numbers(name: str) -> list[float]:
        values = data.get(name)
        return [_number(v) for v in values] if values is not None else [math.nan] * len(offers)

    columns = Candidates(
        offer_id=offers,
        campaign_id=text("campaign_id"),
        propensity=numbers("propensity"),
        expected_value=numbers("expected_value"),
        score=numbers("score"),
        selection_probability=numbers("selection_probability"),
        status=text("status"),
    )
    lengths = {len(getattr(columns, name)) for name in _CANDIDATE_COLUMNS}
    if len(lengths) > 1:
        raise ValueError(f"candidate columns of different lengths {sorted(lengths)}")
    return columns


_CANDIDATE_COLUMNS = (
    "offer_id",
    "campaign_id",
    "propensity",
    "expected_value",
    "score",
    "selection_probability",
    "status",
)


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
        self._queue = _Buffer(max_queue)
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
        while not (self._closing and not len(self._queue)):
            await self._queue.get_ready()
            if not self._closing:
                await asyncio.sleep(self.flush_seconds)
            await self._write(self._queue.take(2000))

    async def _write(self, batch: list[_Item]) -> None:
        if not batch:
            return
        for attempt in range(5):
            try:
                # a fresh pipeline per attempt: a failed execute() empties the one it ran, and
                # re-running that would "succeed" without writing anything. A retry after a
                # partial write appends some entries twice, which readers de-duplicate.
                await self._pipeline(batch).execute()
                self.metrics.log_written.inc(len(batch))
                return
            except RedisError as err:
                log.warning("decision log write failed (attempt %d): %s", attempt + 1, err)
                await asyncio.sleep(0.1 * 2**attempt)
        self.metrics.log_dropped.inc(len(batch))

    def _pipeline(self, batch: list[_Item]) -> Pipeline:
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
        """Trim both streams toward `maxlen`, never past what a consumer group still needs.

        Returns the entries removed. Failures are logged and retried on the next round: an
        untrimmed stream is only longer, never wrong.
        """
        removed = 0
        for stream in (self.keys.decision_stream, self.keys.outcome_stream):
            try:
                n = await safe_trim(self.client, stream, self.maxlen)
            except RedisError as err:
                log.warning("trimming %s failed: %s", stream, err)
                continue
            self.metrics.log_trimmed.inc(n)
            removed += n
        return removed

    async def close(self, wait_seconds: float = 10.0) -> None:
        """Write everything queued, then stop (a batch being written is never abandoned)."""
        self._closing = True
        if self._trimmer is not None:
            self._trimmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._trimmer
            self._trimmer = None
        self._queue.wake()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, wait_seconds)
            except TimeoutError:
                log.error(
                    "decision log writer did not finish within %.0fs; %d records lost", wait_seconds, len(self._queue)
                )
            self._task = None
