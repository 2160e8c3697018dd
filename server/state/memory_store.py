"""The StateStore protocol in memory, with the Lua scripts' semantics, for unit tests.

Budget counters, per-customer award caps, contact history, the channel's sends in the window,
request-id replay and claims, and outcome idempotency (with fingerprints) behave as read.lua,
reserve.lua, release.lua, commit.lua, outcome.lua and RedisStateStore.claim_request do; keys
never expire (tests control time through `now`). Faults and races are injected with
`before[op]`, a callable run at the start of operation `op` ("read", "reserve", "release",
"commit", "claim", "replay", "outcome") that may raise StateUnavailable or change the state as a
concurrent decision would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from server.catalog.budgets import Period, Reservation
from server.ids import ULID_LENGTH
from server.state import budget_walk
from server.state.budget_walk import Slot, SlotCandidate
from server.state.contacts import ContactHistory
from server.state.conversions import ConversionRecord, event_digest
from server.state.keys import Keys
from server.state.log_writer import Replay
from server.state.records import DecisionRecord, OutcomeRecord
from server.state.store import (
    CAMPAIGN_CAP,
    CHANNEL_CAP,
    COMMITTED,
    CONFLICT,
    DUPLICATE,
    FORBIDDEN,
    NOT_OFFERED,
    OFFER_CAP,
    OLD_EVENT_MARK,
    RECORDED,
    REPLAY,
    RETRY,
    TOO_LARGE,
    UNKNOWN_DECISION,
    Committed,
    CustomerState,
    Pick,
    Recorded,
    Reporter,
    Reserved,
    award_value,
    request_value,
    split_award_value,
    split_request_value,
)

if TYPE_CHECKING:
    from server.state.store import LogSink, StateStore

Hash = dict[str, str]


class InMemoryStateStore:
    def __init__(self, keys: Keys | None = None) -> None:
        self._keys = keys or Keys()
        self.features: dict[str, tuple[int, npt.NDArray[np.float32]]] = {}  # customer -> (schema, vector)
        self.hashes: dict[str, Hash] = {}  # contacts, decisions and budget counters by key
        self.sent: dict[str, dict[str, float]] = {}  # sent-zset key -> member -> time
        self.strings: dict[str, str] = {}  # request ids, outcome and conversion events
        self.conversions: list[ConversionRecord] = []  # the conversion log
        self.before: dict[str, Callable[[], None]] = {}

    @property
    def keys(self) -> Keys:
        return self._keys

    def put_features(self, customer_id: str, vector: Sequence[float], schema_version: int = 1) -> None:
        self.features[customer_id] = (schema_version, np.asarray(vector, dtype=np.float32))

    def budget_counters(self, campaign: str, channel: str, period: Period) -> tuple[Hash, Hash, Hash]:
        """The campaign's totals and day, and the channel's hour hashes, as reserve.lua keeps them."""
        k = self._keys
        names = (k.budget_total(campaign), k.budget_day(campaign, period.day), k.budget_hour(channel, period.hour))
        return tuple(self.hashes.get(name, {}) for name in names)  # type: ignore[return-value]

    def _hook(self, op: str) -> None:
        hook = self.before.get(op)
        if hook is not None:
            hook()

    def _hash(self, key: str) -> Hash:
        return self.hashes.setdefault(key, {})

    async def read(
        self, customer_id: str, channel: str, now: float, window_seconds: float, request_id: str
    ) -> CustomerState:
        self._hook("read")
        k = self._keys
        stored = self.features.get(customer_id)
        contacts = self.hashes.get(k.contacts(customer_id), {})
        sent = self.sent.get(k.channel_contacts(customer_id, channel), {})
        in_window = sum(1 for t in sent.values() if t > now - window_seconds)
        history = ContactHistory.from_hash({a.encode(): b.encode() for a, b in contacts.items()}, in_window)
        value = self.strings.get(k.request(customer_id, request_id)) if request_id else None
        replay, fingerprint = split_request_value(value) if value is not None else (None, "")
        if stored is None:
            return CustomerState(None, None, history, replay, fingerprint)
        return CustomerState(stored[1].copy(), stored[0], history, replay, fingerprint)

    async def reserve(self, period: Period, max_awards: int, walk: Sequence[Reservation]) -> Reserved:
        self._hook("reserve")
        return await budget_walk.reserve(self, self._keys, period, max_awards, walk)

    async def release(self, period: Period, reservations: Sequence[Reservation]) -> None:
        self._hook("release")
        await budget_walk.release(self, self._keys, period, reservations)

    async def reserve_in_slot(self, slot: Slot, k: int, walk: Sequence[SlotCandidate]) -> Reserved:
        """reserve.lua: every check before the first write, pending increments adding up."""
        pending: dict[tuple[str, str], int] = {}
        awarded: list[str] = []
        refused: list[tuple[str, int, int]] = []
        for c in walk:
            if len(awarded) >= k:
                break
            failed = self._first_failed(slot.keys, c, pending)
            if failed is not None:
                refused.append((c.offer_id, *failed))
                continue
            awarded.append(c.offer_id)
            for key_no, fld, _, incr in c.checks:
                at = (slot.keys[key_no - 1], fld)
                pending[at] = pending.get(at, 0) + incr
        for (key, fld), incr in pending.items():
            if incr:
                self._add(key, fld, incr)
        return Reserved(tuple(awarded), tuple(refused))

    def _first_failed(
        self, keys: Sequence[str], c: SlotCandidate, pending: dict[tuple[str, str], int]
    ) -> tuple[int, int] | None:
        """(check number from 1, its count) of the first limit the candidate would exceed."""
        for j, (key_no, fld, limit, incr) in enumerate(c.checks, 1):
            if limit < 0:
                continue
            at = (keys[key_no - 1], fld)
            used = self._count(*at) + pending.get(at, 0)
            if used + incr > limit:
                return j, used
        return None

    def _count(self, key: str, fld: str) -> int:
        return int(self.hashes.get(key, {}).get(fld, "0"))

    def _add(self, key: str, fld: str, incr: int) -> int:
        value = self._count(key, fld) + incr
        self._hash(key)[fld] = str(value)
        return value

    async def release_in_slot(self, slot: Slot, items: Sequence[tuple[int, str, int]]) -> None:
        for key_no, fld, incr in items:
            key = slot.keys[key_no - 1]
            if incr and self._add(key, fld, -incr) == 0:
                del self.hashes[key][fld]
                if not self.hashes[key]:
                    del self.hashes[key]

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
        self._hook("commit")
        k = self._keys
        request_key = k.request(customer_id, request_id)
        if request_id and request_key in self.strings:
            earlier, fingerprint = split_request_value(self.strings[request_key])
            return Committed(REPLAY, earlier, (), (), fingerprint)
        sent = self.sent.setdefault(k.channel_contacts(customer_id, channel), {})
        if channel_cap is not None:
            for member in [m for m, t in sent.items() if t <= now - window_seconds]:
                del sent[member]
        contacts = k.contacts(customer_id)
        awarded, refused = self._check_caps(contacts, len(sent), channel_cap, picks)
        if may_retry and not awarded and picks and any(why != CHANNEL_CAP for _, why in refused):
            return Committed(RETRY, decision_id, (), tuple(refused))
        decision: Hash = {}
        if awarded:  # a decision that awarded nothing keeps no decision key (commit.lua)
            decision = self._hash(k.decision(customer_id, decision_id))
            decision.update(offers=",".join(p.offer_id for p in awarded), channel=channel, ts=repr(now), caller=caller)
        for p in awarded:
            sent[f"{decision_id[:ULID_LENGTH]}:{p.offer_id}"] = now
            decision[f"p:{p.offer_id}"] = award_value(p)
            if p.offer_cap >= 0 or p.campaign_cap >= 0:
                self._add(contacts, f"a:o:{p.offer_id}", 1)
                self._add(contacts, f"a:c:{p.campaign_id}", 1)
        if request_id:
            self.strings[request_key] = request_value(decision_id, request_fingerprint)
        return Committed(COMMITTED, decision_id, tuple(p.offer_id for p in awarded), tuple(refused))

    def _check_caps(
        self, contacts: str, sent: int, channel_cap: int | None, picks: Sequence[Pick]
    ) -> tuple[list[Pick], list[tuple[str, int]]]:
        """commit.lua's checks, before any write: which picks fit the channel and customer caps."""
        room = -1 if channel_cap is None else channel_cap - sent
        counts: dict[str, int] = {}
        awarded: list[Pick] = []
        refused: list[tuple[str, int]] = []
        for p in picks:
            fo, fc = f"a:o:{p.offer_id}", f"a:c:{p.campaign_id}"
            for f in (fo, fc):
                counts.setdefault(f, self._count(contacts, f))
            if channel_cap is not None and len(awarded) >= room:
                refused.append((p.offer_id, CHANNEL_CAP))
            elif p.offer_cap >= 0 and counts[fo] + 1 > p.offer_cap:
                refused.append((p.offer_id, OFFER_CAP))
            elif p.campaign_cap >= 0 and counts[fc] + 1 > p.campaign_cap:
                refused.append((p.offer_id, CAMPAIGN_CAP))
            else:
                awarded.append(p)
                if p.offer_cap >= 0 or p.campaign_cap >= 0:
                    counts[fo] += 1
                    counts[fc] += 1
        return awarded, refused

    async def claim_request(
        self, customer_id: str, request_id: str, decision_id: str, fingerprint: str, ttl: int
    ) -> tuple[str, str] | None:
        self._hook("claim")
        key = self._keys.request(customer_id, request_id)
        if key in self.strings:
            return split_request_value(self.strings[key])
        self.strings[key] = request_value(decision_id, fingerprint)
        return None

    async def replay(self, customer_id: str, decision_id: str) -> bytes | None:
        self._hook("replay")
        raw = self.hashes.get(self._keys.decision(customer_id, decision_id), {}).get("response")
        return None if raw is None else raw.encode("latin-1")

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
        self._hook("outcome")
        k = self._keys
        decision = self.hashes.get(k.decision(customer_id, decision_id))
        if decision is None or "offers" not in decision:
            return Recorded(UNKNOWN_DECISION, "", float("nan"), float("nan"))
        if decision.get("caller", "") not in ("", reporter.caller) and not reporter.admin:
            return Recorded(FORBIDDEN, "", float("nan"), float("nan"))
        if offer_id not in decision["offers"].split(","):
            return Recorded(NOT_OFFERED, "", float("nan"), float("nan"))
        parts = decision.get(f"p:{offer_id}", "").split(",")
        bound = float(parts[2]) if len(parts) > 2 else reporter.fallback_max_value
        if reporter.value > bound:
            return Recorded(TOO_LARGE, "", float("nan"), float("nan"), max_value=bound)
        event_key = k.outcome_event(customer_id, event_id)
        seen = self.strings.get(event_key)
        if seen is not None and seen not in (fingerprint, OLD_EVENT_MARK):
            return Recorded(CONFLICT, "", float("nan"), float("nan"), seen)
        if seen is not None:
            return Recorded(DUPLICATE, "", float("nan"), float("nan"))
        self.strings[event_key] = fingerprint
        self._apply_outcome(k.contacts(customer_id), offer_id, outcome, now, max_presented, suppression_seconds)
        p, sd, inputs = split_award_value(decision.get(f"p:{offer_id}", "nan,nan"))
        return Recorded(RECORDED, decision.get("channel", ""), p, sd, inputs=inputs)

    async def record_conversion(self, record: ConversionRecord, fingerprint: str, window: int) -> tuple[int, str]:
        self._hook("conversion")
        event_key = self._keys.conversion_event(event_digest(record.event_id))
        seen = self.strings.get(event_key)
        if seen is not None:
            return (DUPLICATE, "") if seen == fingerprint else (CONFLICT, seen)
        self.strings[event_key] = fingerprint  # no expiry here: the store lives for one test
        self.conversions.append(record)
        return RECORDED, ""

    def _apply_outcome(
        self, contacts: str, offer_id: str, outcome: str, now: float, max_presented: int, suppression_seconds: float
    ) -> None:
        history = self._hash(contacts)
        if outcome == "presented":
            if self._add(contacts, f"p:{offer_id}", 1) >= max_presented:
                # a number computed in Lua reaches the hash as Lua prints it (%.14g)
                history[f"s:{offer_id}"] = f"{now + suppression_seconds:.14g}"
                history.pop(f"p:{offer_id}", None)
        elif outcome == "declined":
            history[f"d:{offer_id}"] = repr(now)
            history.pop(f"p:{offer_id}", None)
        else:
            history.pop(f"p:{offer_id}", None)  # any response resets the count without one


@dataclass
class InMemoryLog:
    """The LogSink protocol in memory: records kept in order, replay answers written to the store
    at once (the Redis log writer does it within log_flush_seconds)."""

    store: InMemoryStateStore
    decisions: list[DecisionRecord] = field(default_factory=list)
    outcomes: list[OutcomeRecord] = field(default_factory=list)

    def decision(self, record: DecisionRecord, replay: Replay | None) -> None:
        self.decisions.append(record)
        if replay is None:
            return
        self.store.hashes.setdefault(replay.decision_key, {})["response"] = replay.payload.decode("latin-1")
        if replay.request_key is not None:
            self.store.strings.setdefault(replay.request_key, replay.decision_id)

    def outcome(self, record: OutcomeRecord) -> None:
        self.outcomes.append(record)


if TYPE_CHECKING:  # mypy checks that both implement their protocols
    _store: StateStore = InMemoryStateStore()
    _log: LogSink = InMemoryLog(InMemoryStateStore())
