"""Campaign KPIs from the decision log joined with its outcomes, aggregated as the log streams by.

The outcomes are indexed first (one small entry per award that got any outcome: far fewer than
decisions), then each decision of the period adds itself to the tallies of its campaigns, offers,
channel and model version, and is forgotten. Awards of control-group, degraded and undelivered
decisions are counted apart and left out of the rates.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from server.reporting.model import KpiRow, ReasonCount, TimelinePoint, ratio
from server.reporting.period import iso
from server.state.records import DecisionRecord, OutcomeRecord

PRESENTED, ACCEPTED, DECLINED, CONVERTED = 1, 2, 4, 8
_FLAGS = {"presented": PRESENTED, "accepted": ACCEPTED, "declined": DECLINED, "converted": CONVERTED}
DIMENSIONS = ("campaign", "offer", "channel", "model_version")
HOUR, DAY = 3600.0, 86_400.0

# an offer's cost per award under the catalog version a decision names; None: no catalog known
CostOf = Callable[[str, str], float | None]


@dataclass(slots=True)
class AwardOutcome:
    flags: int = 0
    value: float = 0.0  # the largest value reported with an accepted or converted outcome


def index_outcomes(outcomes: Iterable[OutcomeRecord], since: float | None) -> dict[tuple[str, str], AwardOutcome]:
    """(decision id, offer id) -> what was reported for that award. An outcome comes after its
    decision, so outcomes before the period cannot belong to its decisions and are skipped."""
    index: dict[tuple[str, str], AwardOutcome] = {}
    for o in outcomes:
        flag = _FLAGS.get(o.outcome)
        if flag is None or (since is not None and o.ts < since):
            continue
        entry = index.setdefault((o.decision_id, o.offer_id), AwardOutcome())
        entry.flags |= flag
        if flag in (ACCEPTED, CONVERTED) and math.isfinite(o.value):
            entry.value = max(entry.value, o.value)
    return index


@dataclass(slots=True)
class Tally:
    decisions: int = 0
    control_group: int = 0
    degraded: int = 0
    undelivered: int = 0
    awards: int = 0
    undelivered_awards: int = 0
    presented: int = 0
    accepted: int = 0
    declined: int = 0
    converted: int = 0
    revenue: float = 0.0
    cost: float = 0.0
    cost_known: bool = True

    def count_decision(self, kind: str) -> None:
        if kind == "counted":
            self.decisions += 1
        else:
            setattr(self, kind, getattr(self, kind) + 1)

    def count_award(self, outcome: AwardOutcome | None) -> None:
        self.awards += 1
        if outcome is None:
            return
        self.presented += bool(outcome.flags & PRESENTED)
        self.accepted += bool(outcome.flags & (ACCEPTED | CONVERTED))
        self.declined += bool(outcome.flags & DECLINED)
        self.converted += bool(outcome.flags & CONVERTED)
        self.revenue += outcome.value

    def add_cost(self, cost: float | None) -> None:
        if cost is None:
            self.cost_known = False
        else:
            self.cost += cost

    def row(self, dimension: str, key: str) -> KpiRow:
        cost = self.cost if self.cost_known else None
        return KpiRow(
            dimension=dimension,
            key=key,
            decisions=self.decisions,
            control_group=self.control_group,
            degraded=self.degraded,
            undelivered=self.undelivered,
            awards=self.awards,
            undelivered_awards=self.undelivered_awards,
            presented=self.presented,
            accepted=self.accepted,
            declined=self.declined,
            converted=self.converted,
            acceptance_rate=ratio(self.accepted, self.awards),
            conversion_rate=ratio(self.converted, self.awards),
            revenue=self.revenue,
            cost=cost,
            roi=None if not cost else (self.revenue - cost) / cost,
        )


def decision_kind(record: DecisionRecord) -> str:
    """Which count a decision goes to: the universal control group first (nothing was awarded),
    then degraded, then undelivered; "counted" for the rest."""
    if record.control_group:
        return "control_group"
    if record.degraded:
        return "degraded"
    if record.undelivered:
        return "undelivered"
    return "counted"


@dataclass(slots=True)
class Bucket:
    awards: int = 0
    accepted: int = 0
    revenue: float = 0.0


class KpiAggregator:
    """Tallies per dimension, no-offer reasons and the per-bucket timeline, one decision at a time."""

    def __init__(self, outcomes: dict[tuple[str, str], AwardOutcome], cost_of: CostOf) -> None:
        self.outcomes = outcomes
        self.cost_of = cost_of
        self.tallies: dict[tuple[str, str], Tally] = {}
        self.reasons: Counter[str] = Counter()
        self.buckets: dict[tuple[float, str], Bucket] = {}

    def _tally(self, dimension: str, key: str) -> Tally:
        found = self.tallies.get((dimension, key))
        if found is None:
            found = self.tallies[(dimension, key)] = Tally()
        return found

    def add(self, record: DecisionRecord) -> None:
        kind = decision_kind(record)
        campaign_of = dict(zip(record.candidates.offer_id, record.candidates.campaign_id, strict=True))
        offers = set(record.candidates.offer_id) | set(record.would_offer)
        campaigns = {campaign_of[o] for o in offers if o in campaign_of}
        model = record.model_version or "(none)"
        decision_keys = [("campaign", c) for c in campaigns] + [("offer", o) for o in offers]
        for dimension, key in [*decision_keys, ("channel", record.channel), ("model_version", model)]:
            self._tally(dimension, key).count_decision(kind)
        if record.chosen == [] and record.no_offer_reason:
            self.reasons[record.no_offer_reason] += 1
        if kind not in ("counted", "undelivered"):
            return  # control-group decisions award nothing; degraded ones neither
        for offer in record.chosen:
            campaign = campaign_of.get(offer, "(unknown)")
            cost = self.cost_of(record.catalog_version, offer)
            outcome = self.outcomes.get((record.decision_id, offer))
            for dimension, key in (
                ("campaign", campaign),
                ("offer", offer),
                ("channel", record.channel),
                ("model_version", model),
            ):
                tally = self._tally(dimension, key)
                tally.add_cost(cost)
                if kind == "undelivered":
                    tally.undelivered_awards += 1
                else:
                    tally.count_award(outcome)
            if kind == "counted":
                self._count_bucket(record.ts, campaign, outcome)

    def _count_bucket(self, ts: float, campaign: str, outcome: AwardOutcome | None) -> None:
        # hours while streaming (the span is known only at the end); `timeline` may roll them up
        start = math.floor(ts / HOUR) * HOUR
        bucket = self.buckets.setdefault((start, campaign), Bucket())
        bucket.awards += 1
        if outcome is not None:
            bucket.accepted += bool(outcome.flags & (ACCEPTED | CONVERTED))
            bucket.revenue += outcome.value

    def rows(self) -> list[KpiRow]:
        order = {d: i for i, d in enumerate(DIMENSIONS)}
        keys = sorted(self.tallies, key=lambda k: (order[k[0]], k[1]))
        return [self.tallies[k].row(*k) for k in keys]

    def reason_counts(self) -> list[ReasonCount]:
        return [ReasonCount(r, n) for r, n in sorted(self.reasons.items(), key=lambda item: (-item[1], item[0]))]

    def timeline(self, seconds: float) -> list[TimelinePoint]:
        """Per campaign and bucket of `seconds` (HOUR or DAY, both whole hours in UTC)."""
        merged: dict[tuple[float, str], Bucket] = {}
        for (start, campaign), b in self.buckets.items():
            into = merged.setdefault((math.floor(start / seconds) * seconds, campaign), Bucket())
            into.awards += b.awards
            into.accepted += b.accepted
            into.revenue += b.revenue
        return [
            TimelinePoint(iso(start), campaign, b.awards, b.accepted, b.revenue, ratio(b.accepted, b.awards))
            for (start, campaign), b in sorted(merged.items())
        ]


def bucket_of(first: float | None, last: float | None) -> tuple[str, float]:
    """Hours when the decisions span two days or less, else days (UTC)."""
    if first is None or last is None or last - first <= 2 * DAY:
        return "hour", HOUR
    return "day", DAY
