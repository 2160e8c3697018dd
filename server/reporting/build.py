"""`build_report`: the logs of one deployment read once, oldest first, into a Report.

Order of reading, so that memory stays bounded by what must be remembered (one entry per award
with an outcome, one per customer and lift scope) rather than by the log: outcomes are indexed
first, decisions then stream through the KPI and lift aggregators, conversions last (they need
each customer's first decision of the period).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis

from server.catalog.compiled import Catalog
from server.reporting.budget import burn_rows
from server.reporting.kpis import KpiAggregator, bucket_of, index_outcomes
from server.reporting.lift import Conversion, LiftAggregator, Thresholds
from server.reporting.model import Coverage, Report
from server.reporting.period import Period, iso
from server.state.budget_log import CatalogVersions
from server.state.catalog_store import NoCatalog, live_catalog
from server.state.keys import Keys
from server.state.log_reader import LogReader, ReadStats

WEEK = 7 * 86_400.0
TITLE = "NBO campaign report"


@dataclass(slots=True)
class _Costs:
    """Offer costs under the catalog version of each decision (compiled once per version)."""

    versions: CatalogVersions | None
    unknown: set[str] = field(default_factory=set)  # "offer (catalog version)" not found

    def __call__(self, catalog_version: str, offer_id: str) -> float | None:
        if self.versions is None:
            return None
        catalog = self.versions.get(catalog_version)
        index = catalog.offer_index.get(offer_id)
        if index is None:
            self.unknown.add(f"{offer_id} ({catalog_version or 'no version'})")
            return None
        return catalog.offers[index].cost


@dataclass(slots=True)
class _Span:
    first: float | None = None
    last: float | None = None

    def add(self, ts: float) -> None:
        self.first = ts if self.first is None else min(self.first, ts)
        self.last = ts if self.last is None else max(self.last, ts)


class _Scan:
    """One pass over the logs: outcomes indexed, decisions of the period through the KPI and
    lift aggregators, then conversions."""

    def __init__(self, client: redis.Redis, keys: Keys, period: Period, costs: _Costs) -> None:
        self.period = period
        self.reader = LogReader(client, keys)
        self.kpis = KpiAggregator(index_outcomes(self.reader.outcomes(), period.since), costs)
        self.lift = LiftAggregator(period)
        self.whole, self.covered = _Span(), _Span()
        self.in_period = 0
        self.conversions_read = 0

    def read(self, conversions: Iterable[Conversion] | None) -> None:
        for record in self.reader.decisions():
            self.whole.add(record.ts)
            if not self.period.covers(record.ts):
                continue
            self.covered.add(record.ts)
            self.in_period += 1
            self.kpis.add(record)
            self.lift.add_decision(record)
        self.conversions_read = self.lift.add_conversions(
            self.reader.conversions() if conversions is None else conversions
        )

    def coverage(self) -> Coverage:
        decisions, outcomes = self.reader.decision_stats, self.reader.outcome_stats
        return Coverage(
            first_decision=iso(self.covered.first),
            last_decision=iso(self.covered.last),
            log_first=iso(self.whole.first),
            log_last=iso(self.whole.last),
            decisions_read=decisions.entries - decisions.duplicates - decisions.unreadable,
            decisions_in_period=self.in_period,
            outcomes_read=outcomes.entries - outcomes.duplicates - outcomes.unreadable,
            conversions_read=self.conversions_read,
            conversions_counted=self.lift.conversions_counted,
            duplicates=sum(s.duplicates for s in _stats(self.reader)),
            unreadable=sum(s.unreadable for s in _stats(self.reader)),
        )


def build_report(
    client: redis.Redis,
    keys: Keys,
    since: float | None = None,
    until: float | None = None,
    window: float = WEEK,
    *,
    kinds: Iterable[str] = (),
    thresholds: Thresholds | None = None,
    conversions: Iterable[Conversion] | None = None,
    now: float | None = None,
    title: str = TITLE,
) -> Report:
    """The report of decisions with since <= ts < until (epoch seconds; None: unbounded).

    `conversions`: the customers' conversions; None reads the conversion stream (the usual case;
    the simulator or a test may pass records of its own).
    `now`: the time budgets are read at and attribution windows are judged open against.
    Raises PeriodError for an empty period or a window <= 0.
    """
    period = Period(since, until, window, frozenset(kinds))
    now = time.time() if now is None else now
    notes: list[str] = []
    try:
        live: Catalog | None = live_catalog(client, keys)
    except NoCatalog as err:
        live = None
        notes.append(f"no catalog: costs, ROI and budgets are not shown ({err})")
    costs = _Costs(None if live is None else CatalogVersions(client, keys, live))
    scan = _Scan(client, keys, period, costs)
    scan.read(conversions)
    holdouts = [] if live is None else [c.id for c in live.campaigns if c.holdout > 0]
    budget_at, budgets = ("", []) if live is None else burn_rows(client, keys, live, now)
    bucket_name, bucket_seconds = bucket_of(scan.covered.first, scan.covered.last)
    return Report(
        title=title,
        generated_at=iso(now),
        since=iso(since),
        until=iso(until),
        window_seconds=window,
        kinds=tuple(sorted(period.kinds)),
        coverage=scan.coverage(),
        kpis=tuple(scan.kpis.rows()),
        no_offer_reasons=tuple(scan.kpis.reason_counts()),
        timeline_bucket=bucket_name,
        timeline=tuple(scan.kpis.timeline(bucket_seconds)),
        lift=tuple(scan.lift.results(holdouts, thresholds or Thresholds(), now)),
        budget_at=budget_at,
        budgets=tuple(budgets),
        notes=tuple(notes + _reading_notes(scan.reader, costs)),
    )


def _stats(reader: LogReader) -> tuple[ReadStats, ...]:
    return reader.decision_stats, reader.outcome_stats, reader.conversion_stats


def _reading_notes(reader: LogReader, costs: _Costs) -> list[str]:
    notes = []
    for name, stats in zip(("decision", "outcome", "conversion"), _stats(reader), strict=True):
        if stats.unreadable:
            notes.append(f"{stats.unreadable} unreadable {name} log entries skipped; first: {stats.first_unreadable}")
    if costs.versions is not None:
        for version, why in sorted(costs.versions.fallbacks.items()):
            notes.append(f"catalog {version} cannot be loaded ({why}): its costs are the live catalog's")
    if costs.unknown:
        notes.append("offers without a cost in their catalog (cost left blank): " + ", ".join(sorted(costs.unknown)))
    return notes
