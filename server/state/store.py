"""What the decision pipeline needs from shared state, as a protocol.

`RedisStateStore` (server.state.redis_store) is the production implementation: one Lua script
per step, each in one Cluster slot. `InMemoryStateStore` (server.state.memory_store) keeps the
same semantics in dictionaries, for unit tests of the whole pipeline without a redis-server.

Every method raises `StateUnavailable` when the state cannot be reached; the pipeline then
degrades (send nothing) or answers UNAVAILABLE, never guesses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from server.catalog.budgets import Period, Reservation
from server.state.contacts import ContactHistory
from server.state.conversions import ConversionRecord
from server.state.keys import Keys
from server.state.log_writer import Replay
from server.state.records import DecisionRecord, OutcomeRecord


class StateUnavailable(Exception):
    """Shared state could not be read or written (Redis down, timed out, ...)."""


@dataclass(frozen=True, slots=True)
class CustomerState:
    vector: npt.NDArray[np.float32] | None  # None: unknown customer (or unreadable vector)
    vector_schema: int | None
    history: ContactHistory
    replay_decision_id: str | None  # the request id was decided before, by this decision
    replay_fingerprint: str = ""  # of that earlier request ("" if stored without one)


@dataclass(frozen=True, slots=True)
class Pick:
    """An offer the budget reservation granted, with the per-customer caps to re-check."""

    offer_id: str
    campaign_id: str
    offer_cap: int  # -1: none
    campaign_cap: int
    propensity: float  # the base propensity the offer was ranked with, kept for the learner
    prior_sd: float  # the bandit's prior sd for the offer's offset (wider for offers the model lacks)
    max_value: float = math.inf  # the largest outcome value accepted for it (catalog max_value)
    inputs: str = ""  # the arm inputs it was drawn with (server.learning.arm_inputs), for the learner


@dataclass(frozen=True, slots=True)
class Reserved:
    awarded: tuple[str, ...]
    refused: tuple[tuple[str, int, int], ...]  # (offer, failing check number from 1, its count)


@dataclass(frozen=True, slots=True)
class Committed:
    status: int  # COMMITTED; REPLAY of an earlier decision with the same request id; or RETRY
    decision_id: str
    awarded: tuple[str, ...]
    refused: tuple[tuple[str, int], ...]  # (offer, CHANNEL_CAP | OFFER_CAP | CAMPAIGN_CAP)
    fingerprint: str = ""  # with REPLAY: of the earlier request ("" if stored without one)


@dataclass(frozen=True, slots=True)
class Recorded:
    status: int  # RECORDED, DUPLICATE, UNKNOWN_DECISION, NOT_OFFERED, CONFLICT, FORBIDDEN or TOO_LARGE
    channel: str  # of the decision, when recorded
    propensity: float  # the offer's base propensity at decision time; NaN if not known
    prior_sd: float  # the bandit prior sd of the offer's offset; NaN if not known
    fingerprint: str = ""  # with CONFLICT: of the outcome first recorded under the event id
    max_value: float = math.nan  # with TOO_LARGE: the offer's bound
    inputs: str = ""  # the arm inputs kept with the award ("" if none)


COMMITTED, REPLAY, RETRY = 1, 2, 3  # RETRY: per-customer caps refused every pick, nothing written
CHANNEL_CAP, OFFER_CAP, CAMPAIGN_CAP = 1, 2, 3
RECORDED, DUPLICATE, UNKNOWN_DECISION, NOT_OFFERED, CONFLICT = 1, 0, -1, -2, -3
# FORBIDDEN: another caller made the decision; TOO_LARGE: the value is above the offer's bound
FORBIDDEN, TOO_LARGE = -4, -5
# what an event key held before outcome fingerprints were stored: matches any repeat
OLD_EVENT_MARK = "1"


def request_value(decision_id: str, fingerprint: str) -> str:
    """What a request key holds: the decision that answered the request id, and the fingerprint
    of that request (server.pipeline.idempotency), so a different request under the id is told
    from a repeat."""
    return f"{decision_id} {fingerprint}"


def split_request_value(value: str) -> tuple[str, str]:
    """(decision id, fingerprint); the fingerprint is "" in values written before there was one."""
    decision_id, _, fingerprint = value.partition(" ")
    return decision_id, fingerprint


def award_value(pick: Pick) -> str:
    """What a decision key keeps per awarded offer (`p:<offer>`): "propensity,prior sd,max value",
    then ",inputs" when the arm inputs were declared."""
    text = f"{pick.propensity!r},{pick.prior_sd!r},{pick.max_value!r}"
    return f"{text},{pick.inputs}" if pick.inputs else text


def split_award_value(value: str) -> tuple[float, float, str]:
    """(propensity, prior sd, inputs) of an award value; keys written before the bound have two
    parts, and those without inputs three."""
    p, sd, *rest = value.split(",")
    return float(p), float(sd), rest[1] if len(rest) > 1 else ""


@dataclass(frozen=True, slots=True)
class Reporter:
    """Who reports an outcome, and what it may report: the caller must be the one that made the
    decision unless it is an admin; `value` must not exceed the offer's bound (kept with the
    decision; `fallback_max_value` for decisions kept before bounds were)."""

    caller: str
    admin: bool
    value: float
    fallback_max_value: float


class StateStore(Protocol):
    """The pipeline's state: one read per decision, budget reserve/release, customer commit,
    replay lookup and outcome recording."""

    @property
    def keys(self) -> Keys:
        """Where decisions and request ids live (the log writer stores replay answers there)."""
        ...

    async def read(
        self, customer_id: str, channel: str, now: float, window_seconds: float, request_id: str
    ) -> CustomerState:
        """Feature vector, contact history (sends in the window) and an earlier decision of the
        request id, in one round trip."""
        ...

    async def reserve(self, period: Period, max_awards: int, walk: Sequence[Reservation]) -> Reserved:
        """Walk the ranked candidates; award the first `max_awards` that fit every limit, count
        exactly those."""
        ...

    async def release(self, period: Period, reservations: Sequence[Reservation]) -> None:
        """Give back reservations that were not awarded after all."""
        ...

    async def commit(
        self,
        *,
        customer_id: str,
        channel: str,
        decision_id: str,
        request_id: str,
        now: float,
        window_seconds: float,
        channel_cap: int | None,
        picks: Sequence[Pick],
        may_retry: bool,
        decision_ttl: int,
        request_ttl: int,
        history_ttl: int,
        request_fingerprint: str,
        caller: str = "",
    ) -> Committed:
        """Re-check the channel cap and per-customer caps, record the contacts, the decision (with
        its `caller`, and only when it awarded something: nothing else can report on it) and the
        request id (with `request_fingerprint`), atomically. With `may_retry`, when
        per-customer caps refuse every pick, write nothing and answer RETRY so the caller can try
        the next candidates. A request id already decided is REPLAY, with that decision's id and
        its request's fingerprint, having written nothing."""
        ...

    async def claim_request(
        self, customer_id: str, request_id: str, decision_id: str, fingerprint: str, ttl: int
    ) -> tuple[str, str] | None:
        """Record the request id as decided by `decision_id`, unless it is already: then return
        (that decision id, its fingerprint) and write nothing. For decisions no commit runs for
        (nothing to award), so a repeat racing them is their replay at once."""
        ...

    async def replay(self, customer_id: str, decision_id: str) -> bytes | None:
        """The stored answer of an earlier decision, once the log writer has written it."""
        ...

    async def record_outcome(
        self,
        *,
        customer_id: str,
        decision_id: str,
        offer_id: str,
        outcome: str,
        event_id: str,
        now: float,
        event_ttl: int,
        max_presented: int,
        suppression_seconds: float,
        history_ttl: int,
        fingerprint: str,
        reporter: Reporter,
    ) -> Recorded:
        """Apply one outcome to the contact history, once per event id. The event id keeps the
        outcome's fingerprint: a repeat with the same one is DUPLICATE, another is CONFLICT (with
        the stored fingerprint); neither changes anything. Checked first, in this order, each
        refusal changing nothing: the decision exists (UNKNOWN_DECISION), `reporter` may report
        on it (FORBIDDEN), the offer was awarded in it (NOT_OFFERED), the value is within the
        offer's bound (TOO_LARGE, with the bound)."""
        ...

    async def record_conversion(self, record: ConversionRecord, fingerprint: str, window: int) -> tuple[int, str]:
        """Append `record` to the conversion log once per event id: (RECORDED, ""), (DUPLICATE, "")
        when the event id holds the same fingerprint, or (CONFLICT, the stored fingerprint) and
        nothing written. The event id is remembered until `window` seconds after record.ts."""
        ...


class LogSink(Protocol):
    """Where decision and outcome records go, off the request path (server.state.log_writer)."""

    def decision(self, record: DecisionRecord, replay: Replay | None) -> None: ...

    def outcome(self, record: OutcomeRecord) -> None: ...
