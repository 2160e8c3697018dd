"""Typed records of decisions and outcomes: the schema of the decision and outcome logs.

The decision log is the training and evaluation data of later stages: its schema is a contract.
Each stream entry has the fields `v` (record schema version) and `r` (the record), and `n` in version 2.
server.state.log_writer appends them; readers (the learner, `nbo export`) turn entries back into records with
`decode_decision_record` / `decode_outcome_record`, which read every version written so far.

Outcome records (version 1) and decision records of version 1 are JSON text. A decision record of
version 2 has a third field, `n`: its numbers (the feature vector, then the candidates'
propensity, expected value, score and selection probability columns) packed as little-endian
float32 (features) or float64 bytes, bit for bit what was logged, NaN included (the logged
selection probabilities are a guarantee), and far cheaper than formatting each number as text.
Its `r` is the JSON object zlib-compressed (level 1, the fastest), with "f4:<count>" or
"f8:<count>" where each packed array goes, and the campaign and status columns, a few texts
repeated, coded as {"values": [...], "codes": [...]}. `record_data` gives either version as the
JSON object of version 1 (number lists), for readers that want a field or two.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from server.domain import CampaignType, Decision, NoOfferReason, RankedOffer, SuppressedOffer

RECORD_VERSION = "1"  # of outcome records, and of the decision records of earlier releases
DECISION_RECORD_VERSION = "2"
DECISION_VERSIONS = ("1", "2")  # the decision record versions `decode_decision_record` reads


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

    def to_dict(self, packed: Packer) -> dict[str, Any]:
        """The columns as written in version 2: the numbers packed (exact, and far cheaper than
        their text), the columns of a few repeated texts coded."""
        return {
            "offer_id": self.offer_id,
            "campaign_id": _coded(self.campaign_id),
            # in the order of _FLOAT_COLUMNS: the order their bytes follow each other in "n"
            "propensity": packed.add(self.propensity),
            "expected_value": packed.add(self.expected_value),
            "score": packed.add(self.score),
            "selection_probability": packed.add(self.selection_probability),
            "status": _coded(self.status),
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
    features: list[float] | None  # NaN: missing
    candidates: Candidates
    chosen: list[str]
    no_offer_reason: str
    model_version: str
    catalog_version: str
    bandit_version: str  # the exploration policy and learned parameters the decision used
    degraded: bool
    control_group: bool  # in the universal control group: nothing was awarded
    would_offer: list[str]  # what a control-group customer would have been offered (for lift)
    # the caller was gone when the answer was ready (deadline passed, call cancelled): its awards
    # were spent, but nobody saw them, so training and the bandit leave it out
    undelivered: bool = False
    # while a challenger model serves a share of customers: "champion" or "challenger", the role
    # of model_version in this decision; "" (and not written) otherwise
    model_role: str = ""

    def to_fields(self) -> dict[Any, Any]:
        packed = Packer()  # the features first, then the candidates' columns
        data: dict[str, Any] = {
            "decision_id": self.decision_id,
            "ts": self.ts,
            "customer_id": self.customer_id,
            "channel": self.channel,
            "placement": self.placement,
            "context": self.context,
            "events": self.events,
            "request_id": self.request_id,
            "schema_version": self.schema_version,
            "features": None if self.features is None else packed.add(self.features, narrow=True),
            "candidates": self.candidates.to_dict(packed),
            "chosen": self.chosen,
            "no_offer_reason": self.no_offer_reason,
            "model_version": self.model_version,
            "catalog_version": self.catalog_version,
            "bandit_version": self.bandit_version,
            "degraded": self.degraded,
            "control_group": self.control_group,
            "would_offer": self.would_offer,
        }
        if self.undelivered:
            data["undelivered"] = True  # only when set: delivered records stay byte-identical
        if self.model_role:
            data["model_role"] = self.model_role  # likewise: records without a split are unchanged
        return {"v": DECISION_RECORD_VERSION, "r": zlib.compress(_dumps(data).encode(), 1), "n": packed.bytes()}


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
    arm_inputs: str = ""  # the arm inputs the offer was drawn with (server.learning.arm_inputs)

    def to_fields(self) -> dict[Any, Any]:
        data = asdict(self)
        for name in ("propensity", "prior_sd"):
            data[name] = None if math.isnan(data[name]) else data[name]
        if not self.arm_inputs:
            del data["arm_inputs"]  # records without inputs stay as they were written before
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
    d = record_data(fields, "decision")
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
            undelivered=bool(d.get("undelivered", False)),
            model_role=str(d.get("model_role") or ""),
        )
    except KeyError as err:
        raise RecordError(f"decision record without {err.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as err:
        raise RecordError(f"malformed decision record {d.get('decision_id')!r}: {err}") from None


def decode_outcome_record(fields: Fields) -> OutcomeRecord:
    """The OutcomeRecord of an outcome-stream entry (the inverse of `to_fields`); fields added
    later (channel, propensity, prior_sd) default to "" and NaN (unknown)."""
    d = record_data(fields, "outcome")
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
            arm_inputs=str(d.get("arm_inputs") or ""),
        )
    except KeyError as err:
        raise RecordError(f"outcome record without {err.args[0]!r}") from None
    except (TypeError, ValueError) as err:
        raise RecordError(f"malformed outcome record {d.get('event_id')!r}: {err}") from None


def record_data(fields: Fields, kind: str = "decision") -> dict[str, Any]:
    """The record of a log entry as a JSON object in the shape of version 1 (number lists), whatever
    its version: for readers that want a field or two without the typed record."""
    raw: bytes | str | None = None
    version: bytes | str | None = None
    numbers: bytes | str = b""
    for name, value in fields.items():
        if name in (b"r", "r"):
            raw = value
        elif name in (b"v", "v"):
            version = value
        elif name in (b"n", "n"):
            numbers = value
    if raw is None:
        raise RecordError(f"{kind} log entry without a record field 'r'")
    if version in (b"2", "2"):  # only decision records have a version 2
        if isinstance(raw, str) or isinstance(numbers, str):  # text cannot hold the binary fields
            raise RecordError(f"{kind} record of version 2 read as text; read the log as bytes")
        try:
            raw = zlib.decompress(raw)
        except zlib.error as err:
            raise RecordError(f"{kind} record of version 2 is not zlib data: {err}") from None
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise RecordError(f"{kind} record is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise RecordError(f"{kind} record is not a JSON object")
    if version in (b"2", "2"):
        _unpack(data, numbers if isinstance(numbers, bytes) else b"")  # bytes: checked above
    return data


def _unpack(data: dict[str, Any], numbers: bytes) -> None:
    """A version 2 record's packed numbers and coded texts as lists, the shape version 1 has."""
    try:
        reader = _Unpacker(numbers)
        if data.get("features") is not None:
            data["features"] = reader.take(data["features"])
        candidates = data.get("candidates")
        if candidates:
            for name in _FLOAT_COLUMNS:
                candidates[name] = reader.take(candidates[name])
            for name in ("campaign_id", "status"):
                texts = candidates[name]["values"]
                candidates[name] = [texts[i] for i in candidates[name]["codes"]]
        reader.done()
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise RecordError(f"malformed decision record {data.get('decision_id')!r}: {err}") from None


class Packer:
    """The numbers of a version 2 record, packed one array after another into the entry's `n`
    field as little-endian float64 (bit for bit, NaN included) or float32 where `narrow` and
    every value is one exactly (a feature vector's always are: half the bytes). The record says
    "f8:<count>" or "f4:<count>" where each array was."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def add(self, values: list[float], *, narrow: bool = False) -> str:
        wide = np.asarray(values, dtype="<f8")
        if narrow:
            with np.errstate(over="ignore"):  # a value beyond float32 becomes inf: kept as float64
                narrowed = wide.astype("<f4")
            if narrowed.astype("<f8").tobytes() == wide.tobytes():  # bit for bit, NaN too; and quick
                self._parts.append(narrowed.tobytes())
                return f"f4:{len(values)}"
        self._parts.append(wide.tobytes())
        return f"f8:{len(values)}"

    def bytes(self) -> bytes:
        return b"".join(self._parts)


class _Unpacker:
    """Reads a Packer's arrays back, in the order they were added."""

    def __init__(self, numbers: bytes) -> None:
        self.numbers = numbers
        self.offset = 0

    def take(self, where: str) -> list[float]:
        kind, _, count = where.partition(":")
        if kind not in ("f4", "f8"):
            raise ValueError(f"packed numbers of unknown kind {kind!r}")
        n = int(count)
        values: list[float] = np.frombuffer(self.numbers, dtype="<" + kind, count=n, offset=self.offset).tolist()
        self.offset += n * int(kind[1])
        return values

    def done(self) -> None:
        if self.offset != len(self.numbers):
            raise ValueError(f"{len(self.numbers)} bytes of packed numbers, {self.offset} described")


def _coded(values: list[str]) -> dict[str, list[Any]]:
    """A column of a few distinct texts (statuses, campaigns) as those texts and an index each."""
    texts = list(dict.fromkeys(values))  # in order of first appearance
    index = {v: i for i, v in enumerate(texts)}
    return {"values": texts, "codes": list(map(index.__getitem__, values))}


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


_FLOAT_COLUMNS = ("propensity", "expected_value", "score", "selection_probability")
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
