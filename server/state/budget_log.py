"""The budget counters as the decision log tells them, and how far back the log reaches.

Every award is in the decision log with the catalog version it was made under, so the counters
can be rebuilt from it (server.state.budget_reconcile compares and fixes). The log is the truth
only as far back as it reaches: a log that was trimmed, or that starts after budgeted campaigns
started, may be missing awards, and `log_gaps` says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import redis

from server.catalog.budgets import (
    DAY_KEY_TTL_SECONDS,
    HOUR_KEY_TTL_SECONDS,
    UNLIMITED,
    Period,
    Tally,
    per_customer_caps,
)
from server.catalog.compiled import Campaign, Catalog
from server.catalog.spec import CatalogInvalid
from server.domain import Channel
from server.state.catalog_store import compile_stored, stored_catalog
from server.state.keys import Keys
from server.state.log_reader import CHUNK, LogReader
from server.state.records import DecisionRecord


class CatalogVersions:
    """The catalog each logged decision was made under, compiled once per version, so costs and
    limits are those in force at the award. A version that cannot be loaded falls back to the
    live catalog, and `fallbacks` says which and why."""

    def __init__(self, client: redis.Redis, keys: Keys, live: Catalog) -> None:
        self.client = client
        self.keys = keys
        self.live = live
        self._compiled: dict[str, Catalog] = {live.version: live}
        self.fallbacks: dict[str, str] = {}

    def get(self, label: str) -> Catalog:
        found = self._compiled.get(label)
        if found is None:
            found = self._compiled[label] = self._load(label)
        return found

    def _load(self, label: str) -> Catalog:
        try:
            return compile_stored(self.client, self.keys, stored_catalog(self.client, self.keys, label))
        except (LookupError, CatalogInvalid) as err:
            self.fallbacks[label] = str(err).splitlines()[0]
            return self.live

    def used(self) -> list[Catalog]:
        return list({id(c): c for c in self._compiled.values()}.values())


@dataclass
class LogScan:
    """Counters rebuilt from the log, and what the log covers."""

    tally: Tally = field(default_factory=Tally)
    customers: dict[str, dict[str, int]] = field(default_factory=dict)  # customer -> a:o:/a:c: field -> n
    last_award: dict[str, float] = field(default_factory=dict)  # customer -> time of their last award
    records: int = 0
    duplicates: int = 0  # entries of a decision already counted (the log writer's retries)
    unreadable: int = 0
    degraded: int = 0
    awards: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    unknown_offers: dict[str, int] = field(default_factory=dict)  # "offer (catalog)" -> awards not counted

    def add(self, record: DecisionRecord, catalogs: CatalogVersions) -> None:
        try:
            channel = Channel(record.channel)
        except ValueError:
            self.unreadable += 1
            return
        self.records += 1
        self.first_ts = record.ts if self.first_ts is None else min(self.first_ts, record.ts)
        self.last_ts = record.ts if self.last_ts is None else max(self.last_ts, record.ts)
        if record.degraded:
            self.degraded += 1
            return
        if not record.chosen:
            return
        catalog = catalogs.get(record.catalog_version)
        for offer_id in record.chosen:
            if not self.tally.add(catalog, offer_id, channel, record.ts):
                where = f"{offer_id} (catalog {record.catalog_version})"
                self.unknown_offers[where] = self.unknown_offers.get(where, 0) + 1
                continue
            self.awards += 1
            self._count_customer(catalog, record, offer_id)

    def _count_customer(self, catalog: Catalog, record: DecisionRecord, offer_id: str) -> None:
        self.last_award[record.customer_id] = max(record.ts, self.last_award.get(record.customer_id, record.ts))
        offer = catalog.offers[catalog.offer_index[offer_id]]
        # commit.lua counts both fields together, and only when the offer or its campaign has a cap
        if per_customer_caps(catalog, offer) == (UNLIMITED, UNLIMITED):
            return
        counts = self.customers.setdefault(record.customer_id, {})
        for name in (f"a:o:{offer.id}", f"a:c:{offer.campaign_id}"):
            counts[name] = counts.get(name, 0) + 1


def scan_log(client: redis.Redis, keys: Keys, catalogs: CatalogVersions, chunk: int = CHUNK) -> LogScan:
    """Every decision of the log once (the log is at least once), counted under its own catalog."""
    scan = LogScan()
    reader = LogReader(client, keys, chunk=chunk)
    for record in reader.decisions():
        scan.add(record, catalogs)
    scan.duplicates = reader.decision_stats.duplicates
    scan.unreadable += reader.decision_stats.unreadable
    return scan


# -- what the log cannot tell -------------------------------------------------------------------------
def iso_time(ts: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, tz).isoformat(timespec="seconds")


def _budgeted(catalog: Catalog, camp: Campaign) -> bool:
    return camp.limits is not None or any(o.limits is not None for o in catalog.offers if o.campaign_id == camp.id)


def _trimmed(client: redis.Redis, keys: Keys, maxlen: int) -> str | None:
    try:
        info: dict[str, Any] = client.xinfo_stream(keys.decision_stream)
    except redis.ResponseError:  # no stream yet
        return None
    length = int(info["length"])
    added = info.get("entries-added")  # Redis 7+: every entry ever appended
    if added is not None and int(added) > length:
        return f"the decision log was trimmed: {length} of the {int(added)} decisions ever logged remain"
    if length >= maxlen:
        return (
            f"the decision log holds {length} decisions, its cap (decision_stream_maxlen {maxlen}): "
            "older ones were trimmed"
        )
    return None


def _earliest_start(catalogs: Iterable[Catalog]) -> tuple[float, str] | None:
    """(start, campaign id) of the budgeted campaign that started first, of those with a start."""
    starts = [
        (camp.start, camp.id)
        for catalog in catalogs
        for camp in catalog.campaigns
        if camp.start is not None and _budgeted(catalog, camp)
    ]
    return min(starts) if starts else None


def log_gaps(
    client: redis.Redis,
    keys: Keys,
    scan: LogScan,
    catalogs: Iterable[Catalog],
    maxlen: int,
    stored_days: Sequence[str],
    tz: ZoneInfo,
    totals_stored: bool,
) -> list[str]:
    """Why awards may have been made that the log does not hold (empty: it holds them all)."""
    gaps = [g for g in [_trimmed(client, keys, maxlen)] if g is not None]
    if scan.first_ts is None:
        if stored_days or totals_stored:
            gaps.append("the decision log is empty, but budget counters are stored")
        return gaps
    earliest = _earliest_start(catalogs)
    if earliest is not None and earliest[0] < scan.first_ts:
        gaps.append(
            f"the decision log starts at {iso_time(scan.first_ts, tz)}, after budgeted campaign {earliest[1]} "
            f"started ({iso_time(earliest[0], tz)})"
        )
    first_day = Period.at(scan.first_ts, tz).day
    older = sorted(d for d in stored_days if d < first_day)
    if older:
        gaps.append(f"budget counters are stored for {older[0]}, before the log's first day {first_day}")
    return gaps


@dataclass(frozen=True, slots=True)
class Coverage:
    """Which day and hour counters the log can rebuild. When the log may be missing earlier
    awards (forced), its first day and hour are only partly in it and are left alone."""

    first_day: str | None
    first_hour: str | None
    # counters older than their TTL have expired (and nothing reads them): never recreate them
    oldest_day: str
    oldest_hour: str
    complete: bool

    def day(self, day: str) -> bool:
        if self.first_day is None or day < self.oldest_day:
            return False
        return day > self.first_day or (self.complete and day == self.first_day)

    def hour(self, hour: str) -> bool:
        if self.first_hour is None or hour < self.oldest_hour:
            return False
        return hour > self.first_hour or (self.complete and hour == self.first_hour)


def coverage(scan: LogScan, tz: ZoneInfo, now: float, complete: bool) -> Coverage:
    first = None if scan.first_ts is None else Period.at(scan.first_ts, tz)
    return Coverage(
        first_day=None if first is None else first.day,
        first_hour=None if first is None else first.hour,
        oldest_day=Period.at(now - DAY_KEY_TTL_SECONDS, tz).day,
        oldest_hour=Period.at(now - HOUR_KEY_TTL_SECONDS, tz).hour,
        complete=complete,
    )
