"""The report as a tree of dataclasses: what `build_report` returns, every renderer reads, and
`--format json` prints. Rates, ROI and intervals are None where they are undefined (no awards,
no cost, not enough data), never NaN, so the JSON is plain JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from server.reporting.stats import Estimate


@dataclass(frozen=True, slots=True)
class KpiRow:
    """One campaign, offer, channel or model version. Decision counts are decisions in which it
    was a candidate (campaign, offer) or that it served (channel, model version)."""

    dimension: str  # "campaign", "offer", "channel", "model_version"
    key: str
    decisions: int  # delivered, not degraded, outside the universal control group
    control_group: int  # universal control group decisions (nothing awarded)
    degraded: int
    undelivered: int
    awards: int  # in the counted decisions
    undelivered_awards: int  # awarded (and budgeted) but the caller was gone
    presented: int  # awards with a presented outcome
    accepted: int  # awards with an accepted or converted outcome
    declined: int
    converted: int  # awards with a converted outcome
    acceptance_rate: float | None  # accepted / awards
    conversion_rate: float | None  # converted / awards
    revenue: float  # per award, the largest value reported with its accepted/converted outcomes
    cost: float | None  # (awards + undelivered awards) x the offer's cost then; None: no catalog
    roi: float | None  # (revenue - cost) / cost; None when cost is 0 or unknown


@dataclass(frozen=True, slots=True)
class ReasonCount:
    reason: str
    decisions: int


@dataclass(frozen=True, slots=True)
class TimelinePoint:
    """The awards of one campaign decided in one bucket (day or hour) and how they did."""

    start: str  # ISO 8601 start of the bucket
    campaign: str
    awards: int
    accepted: int
    revenue: float
    acceptance_rate: float | None


@dataclass(frozen=True, slots=True)
class GroupResult:
    customers: int
    converted: int
    conversion_rate: float | None
    revenue: float
    revenue_per_customer: float | None


@dataclass(frozen=True, slots=True)
class LiftResult:
    """Treatment against control, customer level, intent to treat."""

    scope: str  # "programme" or "campaign"
    name: str  # "programme" or the campaign id
    treatment: GroupResult
    control: GroupResult
    enough_data: bool
    note: str  # why not enough data, or ""
    rate_difference: Estimate | None  # treatment - control conversion rate (None: not enough data)
    relative_lift: Estimate | None  # treatment rate / control rate - 1
    revenue_difference: Estimate | None  # revenue per customer, treatment - control
    rate_difference_point: float | None  # the point estimate, also when there is no interval
    open_windows: int  # customers whose attribution window had not closed at report time


@dataclass(frozen=True, slots=True)
class BurnRow:
    """One budget limit: what is used against the limit and against what pacing allows now."""

    kind: str  # "campaign" or "offer"
    id: str
    measure: str  # "awards today", "awards total", "spend total"
    used: float
    limit: float
    pace_target: float | None  # what pacing allows by now; None without pacing
    pacing: str | None


@dataclass(frozen=True, slots=True)
class Coverage:
    """What of the logs was read."""

    first_decision: str  # ISO times of the first and last decision in the period
    last_decision: str
    log_first: str  # and of the whole decision log
    log_last: str
    decisions_read: int
    decisions_in_period: int
    outcomes_read: int
    conversions_read: int
    conversions_counted: int  # of the kinds asked for, by customers with a decision in the period
    duplicates: int  # entries read twice (the writers' at-least-once retries), counted once
    unreadable: int


@dataclass(frozen=True, slots=True)
class Report:
    title: str
    generated_at: str
    since: str  # "" = from the start of the log
    until: str  # "" = to its end
    window_seconds: float
    kinds: tuple[str, ...]  # conversion kinds counted; () = all
    coverage: Coverage
    kpis: tuple[KpiRow, ...]
    no_offer_reasons: tuple[ReasonCount, ...]
    timeline_bucket: str  # "day" or "hour"
    timeline: tuple[TimelinePoint, ...]
    lift: tuple[LiftResult, ...]
    budget_at: str  # when the budget counters were read ("" without a catalog)
    budgets: tuple[BurnRow, ...]
    notes: tuple[str, ...]  # what the reader should know: fallbacks, missing catalog, ...

    def kpis_of(self, dimension: str) -> list[KpiRow]:
        return [row for row in self.kpis if row.dimension == dimension]

    def to_dict(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = _clean(dataclasses.asdict(self))
        return cleaned

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)


def _clean(value: Any) -> Any:
    """NaN and infinities as None, so the JSON stays valid everywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None
