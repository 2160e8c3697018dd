"""Counts of decisions and outcomes per second over a rolling window, held in memory.

Each second of record time (a decision's or an outcome's own `ts`) that saw traffic has one
`Second` of counts: decisions, awards, no-offer reasons, and per campaign the decisions that
considered it, its awards and its acceptances. Seconds older than the window are dropped
(`prune`), so memory is bounded by the window's length, not by the traffic: a few counters per
second and campaign, and one entry per acceptance (to count an ACCEPTED then CONVERTED once).

The log streams are at least once (the log writer appends a batch again when a write may have
half failed): a decision id or event id already counted in its second is skipped. Those ids are
kept only for the last `repeat_seconds`, since the writer's repeats follow the first write
closely; a repeat arriving later than that is counted again.

An acceptance is a (decision, offer) with an ACCEPTED or CONVERTED outcome, counted once, as in
`nbo export` and `nbo model compare`; the campaign's acceptance rate is its acceptances over its
awards in the same window (an award and its outcome may fall on either side of the window's
edge).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from server.domain import RESPONSES
from server.state.records import DecisionRecord, OutcomeRecord

UNKNOWN_CAMPAIGN = "(unknown offer)"  # an outcome for an offer the live catalog does not have


@dataclass(slots=True)
class Second:
    """What happened in one second of record time."""

    decisions: int = 0
    awards: int = 0
    degraded: int = 0
    control_group: int = 0
    no_offer: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)  # by kind: presented, accepted, ...
    considered: Counter[str] = field(default_factory=Counter)  # campaign -> decisions that considered it
    awarded: Counter[str] = field(default_factory=Counter)  # campaign -> offers awarded
    accepted: Counter[str] = field(default_factory=Counter)  # campaign -> acceptances
    # ids (hashed) of the decisions and outcomes counted here, while repeats are still looked for
    ids: set[int] | None = field(default_factory=set)
    responses: list[int] = field(default_factory=list)  # (decision, offer) hashes accepted here


@dataclass(frozen=True, slots=True)
class CampaignCounts:
    decisions: int  # decisions that considered one of the campaign's offers
    awards: int
    acceptances: int

    @property
    def acceptance_rate(self) -> float | None:
        return self.acceptances / self.awards if self.awards else None


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over the seconds (since, until]."""

    since: int
    until: int
    decisions: int
    awards: int
    acceptances: int
    degraded: int
    control_group: int
    no_offer: dict[str, int]
    outcomes: dict[str, int]
    campaigns: dict[str, CampaignCounts]

    @property
    def acceptance_rate(self) -> float | None:
        return self.acceptances / self.awards if self.awards else None


@dataclass(frozen=True, slots=True)
class Versions:
    """The versions the newest decision was made with."""

    ts: float
    model: str
    catalog: str
    bandit: str


class RollingWindow:
    """Per-second counts of the last `seconds` seconds; `prune(now)` moves the window on."""

    def __init__(self, seconds: int, *, repeat_seconds: int = 120) -> None:
        if seconds < 60:
            raise ValueError(f"the window must be at least 60 seconds, not {seconds}")
        self.seconds = seconds
        self.repeat_seconds = repeat_seconds
        self.horizon = -math.inf  # seconds at or before it are out of the window
        self.repeats = 0  # records skipped because they were counted already
        self.too_old = 0  # records skipped because they fell out of the window
        self.latest: Versions | None = None
        self._seconds: dict[int, Second] = {}
        self._accepted: dict[int, int] = {}  # (decision, offer) hash -> second it was counted in

    def _second(self, ts: float, identity: str) -> Second | None:
        """The counts of the second of `ts`, or None when the record is old or already counted."""
        second = math.floor(ts)
        if second <= self.horizon:
            self.too_old += 1
            return None
        counts = self._seconds.get(second)
        if counts is None:
            counts = self._seconds[second] = Second()
        if counts.ids is not None:
            key = hash(identity)
            if key in counts.ids:
                self.repeats += 1
                return None
            counts.ids.add(key)
        return counts

    def add_decision(self, record: DecisionRecord) -> bool:
        """Count one decision; False when it was skipped (too old, or a repeat)."""
        counts = self._second(record.ts, "d:" + record.decision_id)
        if counts is None:
            return False
        counts.decisions += 1
        counts.degraded += record.degraded
        counts.control_group += record.control_group
        if record.no_offer_reason and record.no_offer_reason != "none":
            counts.no_offer[record.no_offer_reason] += 1
        cands = record.candidates
        counts.considered.update(set(cands.campaign_id))
        campaign_of = dict(zip(cands.offer_id, cands.campaign_id, strict=True))
        for offer in record.chosen:
            counts.awarded[campaign_of.get(offer, UNKNOWN_CAMPAIGN)] += 1
        counts.awards += len(record.chosen)
        if self.latest is None or record.ts >= self.latest.ts:
            self.latest = Versions(record.ts, record.model_version, record.catalog_version, record.bandit_version)
        return True

    def add_outcome(self, record: OutcomeRecord, campaign_of: Callable[[str], str | None]) -> bool:
        """Count one outcome; its campaign is `campaign_of(offer id)` (the live catalog's)."""
        counts = self._second(record.ts, "o:" + record.event_id)
        if counts is None:
            return False
        counts.outcomes[record.outcome] += 1
        if record.outcome in RESPONSES:
            pair = hash((record.decision_id, record.offer_id))
            if pair not in self._accepted:
                self._accepted[pair] = math.floor(record.ts)
                counts.responses.append(pair)
                counts.accepted[campaign_of(record.offer_id) or UNKNOWN_CAMPAIGN] += 1
        return True

    def prune(self, now: float) -> None:
        """Drop the seconds that left the window at `now`, and ids too old to be repeated."""
        self.horizon = max(self.horizon, math.floor(now) - self.seconds)
        forget_ids = math.floor(now) - self.repeat_seconds
        for second in [s for s in self._seconds if s <= max(forget_ids, self.horizon)]:
            counts = self._seconds[second]
            counts.ids = None
            if second <= self.horizon:
                for pair in counts.responses:
                    if self._accepted.get(pair) == second:
                        del self._accepted[pair]
                del self._seconds[second]

    def decisions_per_second(self, until: int, span: int) -> list[int]:
        """Decisions in each of the `span` seconds ending with `until`, oldest first."""
        return [c.decisions if (c := self._seconds.get(s)) else 0 for s in range(until - span + 1, until + 1)]

    def totals(self, until: int, span: int | None = None) -> Totals:
        """Sums over the `span` seconds ending with `until` (default: the whole window)."""
        since = until - (self.seconds if span is None else span)
        seconds = [c for s, c in self._seconds.items() if since < s <= until]
        no_offer: Counter[str] = Counter()
        outcomes: Counter[str] = Counter()
        considered: Counter[str] = Counter()
        awarded: Counter[str] = Counter()
        accepted: Counter[str] = Counter()
        for c in seconds:
            no_offer.update(c.no_offer)
            outcomes.update(c.outcomes)
            considered.update(c.considered)
            awarded.update(c.awarded)
            accepted.update(c.accepted)
        campaigns = {
            cid: CampaignCounts(considered[cid], awarded[cid], accepted[cid])
            for cid in sorted(set(considered) | set(awarded) | set(accepted))
        }
        return Totals(
            since=since,
            until=until,
            decisions=sum(c.decisions for c in seconds),
            awards=sum(c.awards for c in seconds),
            acceptances=sum(accepted.values()),
            degraded=sum(c.degraded for c in seconds),
            control_group=sum(c.control_group for c in seconds),
            no_offer=dict(no_offer.most_common()),
            outcomes=dict(sorted(outcomes.items())),
            campaigns=campaigns,
        )

    @property
    def held_seconds(self) -> int:
        """Seconds with counts held (for tests and the page's footer)."""
        return len(self._seconds)
