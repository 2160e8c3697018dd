"""Lift at the customer level, intent to treat: did the customers the programme (or a campaign)
was meant to treat convert more, and spend more, than those it held back?

Assignment is read from the log, once per customer, at the customer's first decision of the
period that could assign them:
* programme: the first decision that was not degraded (a degraded decision never looked at
  the universal control group); control = `control_group` of that decision;
* campaign: the first decision outside the universal control group in which the campaign had a
  logged candidate; control = its candidates had the held-out status (the campaign's control
  group), treatment = not held out, whether or not the offer was then awarded.
A customer converted when a conversion of a counted kind happened in [first ts, first ts +
window); its value is the sum of those conversions' values. Customers are held in memory (one
small entry per customer and scope); decisions and conversions stream by.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from server.pipeline.context import STAGE_STATUS, Stage
from server.reporting.model import GroupResult, LiftResult, ratio
from server.reporting.period import Period
from server.reporting.stats import Sample, mean_difference, rate_difference, relative_lift
from server.state.records import DecisionRecord

HELD_OUT_STATUS = STAGE_STATUS[Stage.HELD_OUT]
PROGRAMME = "programme"


class Conversion(Protocol):
    """What the lift needs of a conversion record (server.state.conversions.ConversionRecord)."""

    @property
    def customer_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def value(self) -> float: ...
    @property
    def ts(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Below these, a group gets "not enough data" instead of an interval."""

    min_customers: int = 30
    min_conversions: int = 5

    def __post_init__(self) -> None:
        if self.min_customers < 2:  # a variance (Welch) needs two values per group
            raise ValueError(f"the minimum number of customers per group must be at least 2, not {self.min_customers}")
        if self.min_conversions < 0:
            raise ValueError(f"the minimum number of conversions cannot be negative: {self.min_conversions}")


@dataclass(slots=True)
class Exposure:
    first_ts: float
    control: bool
    converted: bool = False
    value: float = 0.0


class LiftAggregator:
    """Exposures per scope (the programme and each campaign seen with candidates), then conversions."""

    def __init__(self, period: Period) -> None:
        self.period = period
        self.scopes: dict[str, dict[str, Exposure]] = {PROGRAMME: {}}
        self.held_out_campaigns: set[str] = set()
        self.conversions_counted = 0

    def _expose(self, scope: str, customer: str, ts: float, control: bool) -> None:
        customers = self.scopes.setdefault(scope, {})
        found = customers.get(customer)
        if found is None or ts < found.first_ts:  # the log is nearly, not strictly, in time order
            customers[customer] = Exposure(ts, control)

    def add_decision(self, record: DecisionRecord) -> None:
        if record.degraded:
            return
        self._expose(PROGRAMME, record.customer_id, record.ts, record.control_group)
        if record.control_group:
            return
        held: dict[str, bool] = {}
        for campaign, status in zip(record.candidates.campaign_id, record.candidates.status, strict=True):
            held[campaign] = held.get(campaign, False) or status == HELD_OUT_STATUS
        for campaign, control in held.items():
            if control:
                self.held_out_campaigns.add(campaign)
            self._expose("campaign:" + campaign, record.customer_id, record.ts, control)

    def add_conversions(self, conversions: Iterable[Conversion]) -> int:
        """Attribute conversions to the exposures they fall in the window of; returns how many were read."""
        window = self.period.window_seconds
        read = 0
        for conversion in conversions:
            read += 1
            if not self.period.counts_kind(conversion.kind):
                continue
            counted = False
            for customers in self.scopes.values():
                exposure = customers.get(conversion.customer_id)
                if exposure is not None and exposure.first_ts <= conversion.ts < exposure.first_ts + window:
                    exposure.converted = True
                    exposure.value += conversion.value
                    counted = True
            self.conversions_counted += counted
        return read

    def results(self, campaigns_with_holdout: Iterable[str], thresholds: Thresholds, now: float) -> list[LiftResult]:
        """The programme, then each campaign with a holdout (in the catalog, or seen held out)."""
        out = [compare("programme", PROGRAMME, self.scopes[PROGRAMME], thresholds, now, self.period.window_seconds)]
        for campaign in sorted(set(campaigns_with_holdout) | self.held_out_campaigns):
            customers = self.scopes.get("campaign:" + campaign, {})
            out.append(compare("campaign", campaign, customers, thresholds, now, self.period.window_seconds))
        return out


@dataclass(slots=True)
class _Group:
    customers: int = 0
    converted: int = 0
    revenue: float = 0.0
    squares: float = 0.0

    def add(self, e: Exposure) -> None:
        self.customers += 1
        self.converted += e.converted
        self.revenue += e.value
        self.squares += e.value * e.value

    def result(self) -> GroupResult:
        return GroupResult(
            self.customers,
            self.converted,
            ratio(self.converted, self.customers),
            self.revenue,
            ratio(self.revenue, self.customers),
        )


def _shortfall(name: str, g: _Group, thresholds: Thresholds) -> str:
    if g.customers < thresholds.min_customers:
        return f"{name}: {g.customers} customers (< {thresholds.min_customers})"
    if g.converted < thresholds.min_conversions:
        return f"{name}: {g.converted} conversions (< {thresholds.min_conversions})"
    return ""


def compare(
    scope: str, name: str, customers: dict[str, Exposure], thresholds: Thresholds, now: float, window: float
) -> LiftResult:
    treated, held = _Group(), _Group()
    open_windows = 0
    for e in customers.values():
        (held if e.control else treated).add(e)
        open_windows += e.first_ts + window > now
    short = [s for s in (_shortfall("treatment", treated, thresholds), _shortfall("control", held, thresholds)) if s]
    point = None
    if treated.customers and held.customers:
        point = treated.converted / treated.customers - held.converted / held.customers
    enough = not short
    return LiftResult(
        scope=scope,
        name=name,
        treatment=treated.result(),
        control=held.result(),
        enough_data=enough,
        note="" if enough else "not enough data: " + "; ".join(short),
        rate_difference=rate_difference(treated.converted, treated.customers, held.converted, held.customers)
        if enough
        else None,
        relative_lift=relative_lift(treated.converted, treated.customers, held.converted, held.customers)
        if enough
        else None,
        revenue_difference=mean_difference(
            Sample.of(treated.customers, treated.revenue, treated.squares),
            Sample.of(held.customers, held.revenue, held.squares),
        )
        if enough
        else None,
        rate_difference_point=point,
        open_windows=open_windows,
    )
