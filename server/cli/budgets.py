"""`nbo budgets`: the budget counters next to their limits, and their reconciliation with the log.

The counters (server.catalog.budgets) are changed by the reservation script before an award is committed
and given back when the commit refuses it. A write that never lands (a failover, a release that
failed after a timeout) leaves a counter off without a trace, and budgets then under- or
over-spend. Every award is also in the decision log, with the catalog version it was made under,
so the counters can be rebuilt from it: that is the reconciliation. The log is the truth only as
far back as it reaches, so a log that was trimmed or starts after budgeted campaigns started is
reported and not used unless forced.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, cast
from zoneinfo import ZoneInfo

import redis

from server.catalog.budgets import (
    DAY_KEY_TTL_SECONDS,
    HOUR_KEY_TTL_SECONDS,
    UNLIMITED,
    Limits,
    PaceOver,
    Pacing,
    Period,
    Tally,
    Usage,
    cents,
    decode_counts,
    per_customer_caps,
    window_fraction,
)
from server.catalog.spec import Campaign, Catalog, CatalogInvalid, parse_catalog
from server.domain import Channel
from server.features.schema import FeatureSchema
from server.state.catalog_store import current_schema, version_label
from server.state.keys import Keys
from server.state.records import RECORD_VERSION

LOG_CHUNK = 10_000
CUSTOMER_CHUNK = 1_000
AWARD_FIELDS = ("a:o:", "a:c:")  # per-customer award counts in a customer's contacts hash


class NoCatalog(RuntimeError):
    """No catalog is published, or the live one cannot be loaded."""


# -- catalogs ------------------------------------------------------------------------------------
def _schema(client: redis.Redis, keys: Keys, version: object) -> FeatureSchema | None:
    if isinstance(version, int):
        raw = client.get(keys.schema(version))
        if raw is not None:
            return FeatureSchema.from_json(cast(bytes, raw))
    return current_schema(client, keys)


def stored_catalog(client: redis.Redis, keys: Keys, seq: int) -> Catalog:
    """Compile stored catalog version `seq`; LookupError or CatalogInvalid when it cannot be."""
    raw = client.get(keys.catalog(seq))
    if raw is None:
        raise LookupError(f"catalog v{seq} is not stored")
    record: dict[str, Any] = json.loads(cast(bytes, raw))
    text = str(record["text"])
    # the schema it was published against: a later schema may no longer compile its rules
    schema = _schema(client, keys, record.get("schema_version"))
    if schema is None:
        raise LookupError("no feature schema in Redis")
    return parse_catalog(text, schema, version=version_label(seq, text))


def live_catalog(client: redis.Redis, keys: Keys) -> Catalog:
    current = client.get(keys.catalog_current)
    if current is None:
        raise NoCatalog("no catalog published: run `nbo catalog load FILE`")
    try:
        return stored_catalog(client, keys, int(cast(bytes, current)))
    except (LookupError, CatalogInvalid) as err:
        raise NoCatalog(f"the live catalog v{int(cast(bytes, current))} cannot be loaded: {err}") from err


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
        seq, _, _ = label.partition("-")
        try:
            if not seq.isdigit():
                raise LookupError("not a stored catalog version")
            catalog = stored_catalog(self.client, self.keys, int(seq))
            if catalog.version != label:
                raise LookupError(f"v{seq} holds {catalog.version}")
            return catalog
        except (LookupError, CatalogInvalid, ValueError) as err:
            self.fallbacks[label] = str(err).splitlines()[0]
            return self.live

    def used(self) -> list[Catalog]:
        return list({id(c): c for c in self._compiled.values()}.values())


# -- `nbo budgets` ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ScopeRow:
    """One campaign or offer with limits: its caps, what is used and what is left. Counts are
    awards, money is in cents; None means "no such limit" or "not counted"."""

    kind: str  # "campaign" or "offer"
    id: str
    total_awards: int | None
    daily_awards: int | None
    total_spend_cents: int | None
    per_customer: int | None
    pacing: str | None  # "day +2%", "window +5%"
    used_today: int | None  # None: only a per-customer limit, which is counted per customer
    used_total: int | None
    spend_cents: int | None
    paced_awards: int | None  # what pacing allows so far, of the paced award cap
    paced_spend_cents: int | None
    left: int | None  # awards that still fit every award and spend limit
    left_spend_cents: int | None
    left_now: int | None  # with pacing: awards that still fit what pacing allows now


@dataclass(frozen=True, slots=True)
class ChannelRow:
    channel: str
    capacity_per_hour: int
    hour: str
    used: int
    left: int


@dataclass(frozen=True, slots=True)
class BudgetReport:
    at: str
    catalog_version: str
    timezone: str
    day: str
    hour: str
    day_fraction: float
    scopes: tuple[ScopeRow, ...]
    channels: tuple[ChannelRow, ...]


def pacing_label(pacing: Pacing | None) -> str | None:
    return None if pacing is None else f"{pacing.over.value} +{pacing.slack * 100:g}%"


def _room(cap: int | None, used: int, cost: int = 1) -> int | None:
    """Awards of `cost` that fit under `cap`; None when there is no cap (or awards cost nothing)."""
    if cap is None or cost <= 0:
        return None
    return max(0, (cap - used) // cost)


def _least(*rooms: int | None) -> int | None:
    known = [r for r in rooms if r is not None]
    return min(known) if known else None


def scope_row(
    kind: str, scope_id: str, limits: Limits, usage: Usage, cost_cents: int | None, day: float, window: float
) -> ScopeRow:
    """`cost_cents` is the offer's cost per award (None for a campaign, whose offers differ)."""
    counted = limits.shared
    cost = cost_cents or 0
    left = _least(
        _room(limits.total_awards, usage.total),
        _room(limits.daily_awards, usage.today),
        _room(limits.total_spend_cents, usage.spend_cents, cost),
    )
    paced_awards = paced_spend = left_now = None
    if limits.pacing is not None and limits.pacing.over is PaceOver.DAY and limits.daily_awards is not None:
        paced_awards = limits.pacing.allowed(limits.daily_awards, day)
        left_now = _least(left, _room(paced_awards, usage.today))
    elif limits.pacing is not None:
        if limits.total_awards is not None:
            paced_awards = limits.pacing.allowed(limits.total_awards, window)
        if limits.total_spend_cents is not None:
            paced_spend = limits.pacing.allowed(limits.total_spend_cents, window)
        left_now = _least(left, _room(paced_awards, usage.total), _room(paced_spend, usage.spend_cents, cost))
    spend_cap = limits.total_spend_cents
    return ScopeRow(
        kind=kind,
        id=scope_id,
        total_awards=limits.total_awards,
        daily_awards=limits.daily_awards,
        total_spend_cents=spend_cap,
        per_customer=limits.per_customer,
        pacing=pacing_label(limits.pacing),
        used_today=usage.today if counted else None,
        used_total=usage.total if counted else None,
        spend_cents=usage.spend_cents if counted else None,
        paced_awards=paced_awards,
        paced_spend_cents=paced_spend,
        left=left,
        left_spend_cents=None if spend_cap is None else max(0, spend_cap - usage.spend_cents),
        left_now=left_now,
    )


def _usage(scope: str, total: Mapping[str, int], today: Mapping[str, int]) -> Usage:
    return Usage(
        total=total.get(f"{scope}:n", 0),
        spend_cents=total.get(f"{scope}:spend", 0),
        today=today.get(f"{scope}:n", 0),
        spend_today_cents=today.get(f"{scope}:spend", 0),
    )


def _campaign_rows(
    catalog: Catalog, camp: Campaign, total: Mapping[str, int], today: Mapping[str, int], now: float, day: float
) -> list[ScopeRow]:
    window = window_fraction(camp.start, camp.end, now)
    rows = []
    if camp.limits is not None:
        usage = _usage(f"c:{camp.id}", total, today)
        rows.append(scope_row("campaign", camp.id, camp.limits, usage, None, day, window))
    for offer in catalog.offers:
        if offer.campaign_id == camp.id and offer.limits is not None:
            usage = _usage(f"o:{offer.id}", total, today)
            rows.append(scope_row("offer", offer.id, offer.limits, usage, cents(offer.cost), day, window))
    return rows


def read_counters(client: redis.Redis, keys: Keys, period: Period) -> tuple[dict[str, int], ...]:
    """(total, day, hour) counters of `period`, read together."""
    pipe = client.pipeline(transaction=False)
    for key in (keys.budget_total, keys.budget_day(period.day), keys.budget_hour(period.hour)):
        pipe.hgetall(key)
    return tuple(decode_counts(raw) for raw in pipe.execute())


def build_report(client: redis.Redis, keys: Keys, catalog: Catalog, now: float) -> BudgetReport:
    period = Period.at(now, catalog.timezone)
    total, today, hour = read_counters(client, keys, period)
    scopes = [
        row
        for camp in catalog.campaigns
        for row in _campaign_rows(catalog, camp, total, today, now, period.day_fraction)
    ]
    channels = []
    for ch, cap in sorted(catalog.channel_capacity.items()):
        used = hour.get(f"ch:{ch.value}:n", 0)
        channels.append(ChannelRow(ch.value, cap, period.hour, used, max(0, cap - used)))
    return BudgetReport(
        at=datetime.fromtimestamp(now, catalog.timezone).isoformat(timespec="seconds"),
        catalog_version=catalog.version,
        timezone=str(catalog.timezone),
        day=period.day,
        hour=period.hour,
        day_fraction=period.day_fraction,
        scopes=tuple(scopes),
        channels=tuple(channels),
    )


def money(amount_cents: int | None) -> str:
    if amount_cents is None:
        return "-"
    sign = "-" if amount_cents < 0 else ""
    units, rest = divmod(abs(amount_cents), 100)
    return f"{sign}{units}.{rest:02d}"


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[str]], left_aligned: set[int]) -> list[str]:
    """Aligned plain-text columns (numbers right-aligned), so scripts can split on whitespace."""
    body = [list(r) for r in rows]
    widths = [max(len(r[i]) for r in [list(header), *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.ljust(w) if i in left_aligned else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return [line(header), *(line(r) for r in body)]


SCOPE_HEADER = (
    "kind",
    "id",
    "total",
    "daily",
    "spend",
    "per customer",
    "pacing",
    "used today",
    "used total",
    "spend used",
    "paced now",
    "left",
    "spend left",
    "left now",
)


def _scope_cells(r: ScopeRow) -> list[str]:
    # window pacing may pace awards, spend or both: "awards/spend" when both
    paced = "/".join(p for p in (_n(r.paced_awards), money(r.paced_spend_cents)) if p != "-") or "-"
    return [
        r.kind,
        r.id,
        _n(r.total_awards),
        _n(r.daily_awards),
        money(r.total_spend_cents),
        _n(r.per_customer),
        r.pacing or "-",
        _n(r.used_today),
        _n(r.used_total),
        money(r.spend_cents),
        paced,
        _n(r.left),
        money(r.left_spend_cents),
        _n(r.left_now),
    ]


def format_report(report: BudgetReport) -> list[str]:
    lines = [
        f"budgets at {report.at}, catalog {report.catalog_version} (time zone {report.timezone}): "
        f"day {report.day} ({report.day_fraction:.0%} elapsed), hour {report.hour}",
        "",
    ]
    if report.scopes:
        lines += table(SCOPE_HEADER, map(_scope_cells, report.scopes), {0, 1, 6})
        lines.append("caps: total/daily in awards, spend in currency units; left: awards that fit every limit; -: none")
    else:
        lines.append("no campaign or offer has a budget")
    if report.channels:
        rows = ([c.channel, str(c.capacity_per_hour), c.hour, str(c.used), str(c.left)] for c in report.channels)
        lines += ["", *table(("channel", "capacity/hour", "hour", "used", "left"), rows, {0, 2})]
    return lines


# -- reading the decision log --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """The fields of a decision-log record that budgets depend on."""

    decision_id: str
    ts: float
    customer_id: str
    channel: Channel
    chosen: tuple[str, ...]
    catalog_version: str
    degraded: bool

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> LoggedDecision | None:
        """None for a record of another record version, or one that cannot be read."""
        if fields.get(b"v") != RECORD_VERSION.encode():
            return None
        try:
            r: dict[str, Any] = json.loads(fields[b"r"])
            return cls(
                decision_id=str(r["decision_id"]),
                ts=float(r["ts"]),
                customer_id=str(r["customer_id"]),
                channel=Channel(r["channel"]),
                chosen=tuple(str(o) for o in r.get("chosen") or ()),
                catalog_version=str(r.get("catalog_version", "")),
                degraded=bool(r.get("degraded", False)),
            )
        except (KeyError, TypeError, ValueError):
            return None


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
    _seen: set[str] = field(default_factory=set, repr=False)

    def add(self, record: LoggedDecision, catalogs: CatalogVersions) -> None:
        # the log is at least once: a batch retried after a partial write holds some decisions twice
        if record.decision_id in self._seen:
            self.duplicates += 1
            return
        self._seen.add(record.decision_id)
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
            if not self.tally.add(catalog, offer_id, record.channel, record.ts):
                where = f"{offer_id} (catalog {record.catalog_version})"
                self.unknown_offers[where] = self.unknown_offers.get(where, 0) + 1
                continue
            self.awards += 1
            self._count_customer(catalog, record, offer_id)

    def _count_customer(self, catalog: Catalog, record: LoggedDecision, offer_id: str) -> None:
        self.last_award[record.customer_id] = max(record.ts, self.last_award.get(record.customer_id, record.ts))
        offer = catalog.offers[catalog.offer_index[offer_id]]
        # commit.lua counts both fields together, and only when the offer or its campaign has a cap
        if per_customer_caps(catalog, offer) == (UNLIMITED, UNLIMITED):
            return
        counts = self.customers.setdefault(record.customer_id, {})
        for name in (f"a:o:{offer.id}", f"a:c:{offer.campaign_id}"):
            counts[name] = counts.get(name, 0) + 1


def scan_log(client: redis.Redis, keys: Keys, catalogs: CatalogVersions, chunk: int = LOG_CHUNK) -> LogScan:
    scan = LogScan()
    start = "-"
    while True:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(keys.decision_stream, start, "+", chunk))
        for _entry_id, fields in entries:
            record = LoggedDecision.from_fields(fields)
            if record is None:
                scan.unreadable += 1
            else:
                scan.add(record, catalogs)
        if len(entries) < chunk:
            return scan
        start = "(" + entries[-1][0].decode()


# -- what the log cannot tell -------------------------------------------------------------------------
def _iso(ts: float, tz: ZoneInfo) -> str:
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
) -> list[str]:
    """Why awards may have been made that the log does not hold (empty: it holds them all)."""
    gaps = [g for g in [_trimmed(client, keys, maxlen)] if g is not None]
    if scan.first_ts is None:
        if stored_days or client.exists(keys.budget_total):
            gaps.append("the decision log is empty, but budget counters are stored")
        return gaps
    earliest = _earliest_start(catalogs)
    if earliest is not None and earliest[0] < scan.first_ts:
        gaps.append(
            f"the decision log starts at {_iso(scan.first_ts, tz)}, after budgeted campaign {earliest[1]} "
            f"started ({_iso(earliest[0], tz)})"
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


# -- drift ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Drift:
    """One counter that differs from what the log says."""

    key: str
    field: str
    stored: int
    logged: int

    @property
    def difference(self) -> int:
        return self.logged - self.stored


def drifts(key: str, stored: Mapping[str, int], logged: Mapping[str, int]) -> list[Drift]:
    # a missing field is 0: the scripts never write an increment of 0 (a free offer's spend)
    return [
        Drift(key, name, stored.get(name, 0), logged.get(name, 0))
        for name in sorted(stored.keys() | logged.keys())
        if stored.get(name, 0) != logged.get(name, 0)
    ]


@dataclass(frozen=True, slots=True)
class BudgetKeys:
    """The budget hashes the log can rebuild, each with the TTL to set when it is written (None:
    the total, which never expires), and the stored ones it cannot."""

    ttl: dict[str, int | None]
    rebuilt: dict[str, dict[str, int]]
    skipped: list[str]  # stored keys the log cannot rebuild


@dataclass(frozen=True, slots=True)
class StoredPeriods:
    """The days and hours that have budget counters in Redis."""

    days: frozenset[str]
    hours: frozenset[str]

    @classmethod
    def read(cls, client: redis.Redis, keys: Keys) -> StoredPeriods:
        def suffixes(pattern: str) -> frozenset[str]:
            marker = pattern.removesuffix("*")
            found = cast(Iterable[bytes], client.scan_iter(match=pattern, count=1000))
            return frozenset(k.decode().removeprefix(marker) for k in found)

        return cls(suffixes(keys.budget_day("*")), suffixes(keys.budget_hour("*")))


def budget_keys(keys: Keys, tally: Tally, cover: Coverage, stored: StoredPeriods) -> BudgetKeys:
    ttl: dict[str, int | None] = {keys.budget_total: None}
    rebuilt: dict[str, dict[str, int]] = {keys.budget_total: tally.total}
    skipped: list[str] = []
    stored_days, stored_hours = stored.days, stored.hours
    for day in sorted(stored_days | tally.days.keys()):
        if cover.day(day):
            ttl[keys.budget_day(day)] = DAY_KEY_TTL_SECONDS
            rebuilt[keys.budget_day(day)] = tally.days.get(day, {})
        elif day in stored_days:
            skipped.append(keys.budget_day(day))
    for hour in sorted(stored_hours | tally.hours.keys()):
        if cover.hour(hour):
            ttl[keys.budget_hour(hour)] = HOUR_KEY_TTL_SECONDS
            rebuilt[keys.budget_hour(hour)] = tally.hours.get(hour, {})
        elif hour in stored_hours:
            skipped.append(keys.budget_hour(hour))
    return BudgetKeys(ttl, rebuilt, skipped)


def budget_drifts(client: redis.Redis, plan: BudgetKeys) -> list[Drift]:
    pipe = client.pipeline(transaction=False)
    names = list(plan.rebuilt)
    for key in names:
        pipe.hgetall(key)
    stored = [decode_counts(raw) for raw in pipe.execute()]
    return [d for key, held in zip(names, stored, strict=True) for d in drifts(key, held, plan.rebuilt[key])]


@dataclass
class CustomerDrifts:
    drifts: list[Drift] = field(default_factory=list)
    new_keys: set[str] = field(default_factory=set)  # contacts hashes that do not exist yet
    expired: int = 0  # customers whose contact history expired (idle): not recreated


def _award_counts(raw: Mapping[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in raw.items() if k.decode().startswith(AWARD_FIELDS)}


def customer_drifts(
    client: redis.Redis, keys: Keys, scan: LogScan, now: float, history_ttl: int, chunk: int = CUSTOMER_CHUNK
) -> CustomerDrifts:
    """Per-customer award counts of every customer awarded in the log, against the log."""
    out = CustomerDrifts()
    customers = sorted(scan.last_award)
    for i in range(0, len(customers), chunk):
        batch = customers[i : i + chunk]
        pipe = client.pipeline(transaction=False)
        for cid in batch:
            pipe.hgetall(keys.contacts(cid))
        for cid, raw in zip(batch, pipe.execute(), strict=True):
            key = keys.contacts(cid)
            if not raw and now - scan.last_award[cid] > history_ttl:
                # the history expired after the customer went idle: the server forgot them too
                out.expired += 1
                continue
            found = drifts(key, _award_counts(raw), scan.customers.get(cid, {}))
            if found and not raw:
                out.new_keys.add(key)
            out.drifts += found
    return out


# -- the reconciliation -------------------------------------------------------------------------------
@dataclass
class Reconciliation:
    scan: LogScan
    fallbacks: dict[str, str]  # catalog version -> why the live catalog stood in for it
    gaps: list[str]
    coverage: Coverage
    budget: BudgetKeys
    budget_drifts: list[Drift]
    customers: CustomerDrifts

    @property
    def all_drifts(self) -> list[Drift]:
        return self.budget_drifts + self.customers.drifts


def plan_reconcile(
    client: redis.Redis,
    keys: Keys,
    live: Catalog,
    *,
    maxlen: int,
    history_ttl: int,
    now: float,
    chunk: int = LOG_CHUNK,
) -> Reconciliation:
    """Rebuild every counter from the log and compare; nothing is written."""
    catalogs = CatalogVersions(client, keys, live)
    scan = scan_log(client, keys, catalogs, chunk)
    tz = live.timezone
    stored = StoredPeriods.read(client, keys)
    gaps = log_gaps(client, keys, scan, catalogs.used(), maxlen, sorted(stored.days), tz)
    cover = coverage(scan, tz, now, complete=not gaps)
    budget = budget_keys(keys, scan.tally, cover, stored)
    return Reconciliation(
        scan=scan,
        fallbacks=dict(catalogs.fallbacks),
        gaps=gaps,
        coverage=cover,
        budget=budget,
        budget_drifts=budget_drifts(client, budget),
        customers=customer_drifts(client, keys, scan, now, history_ttl),
    )


def apply_reconcile(client: redis.Redis, plan: Reconciliation, history_ttl: int) -> None:
    """Write the log's values. Each fix is an increment by the difference, not a set, so an
    award that lands while we run is kept rather than overwritten."""
    if plan.budget_drifts:
        # every budget key carries the {b} tag: one slot, so one MULTI/EXEC even on a cluster
        pipe = client.pipeline(transaction=True)
        for d in plan.budget_drifts:
            pipe.hincrby(d.key, d.field, d.difference)
        for key in sorted({d.key for d in plan.budget_drifts}):
            ttl = plan.budget.ttl[key]
            if ttl is not None:
                pipe.expire(key, ttl)
        pipe.execute()
    by_customer: dict[str, list[Drift]] = defaultdict(list)
    for d in plan.customers.drifts:
        by_customer[d.key].append(d)
    keys_in_order = sorted(by_customer)
    for i in range(0, len(keys_in_order), CUSTOMER_CHUNK):
        pipe = client.pipeline(transaction=False)
        for key in keys_in_order[i : i + CUSTOMER_CHUNK]:
            for d in by_customer[key]:
                pipe.hincrby(key, d.field, d.difference)
            if key in plan.customers.new_keys:
                pipe.expire(key, history_ttl)  # as commit.lua: contact history expires when idle
        pipe.execute()


def format_drifts(found: Sequence[Drift]) -> list[str]:
    rows = ([d.key, d.field, str(d.stored), str(d.logged), f"{d.difference:+d}"] for d in found)
    return table(("hash", "field", "stored", "from log", "difference"), rows, {0, 1})


def describe_scan(plan: Reconciliation, tz: ZoneInfo) -> list[str]:
    scan = plan.scan
    lines = ["decision log: empty"]
    if scan.first_ts is not None and scan.last_ts is not None:
        lines = [
            f"decision log: {scan.records} decisions from {_iso(scan.first_ts, tz)} to {_iso(scan.last_ts, tz)}; "
            f"{scan.awards} awards counted, {scan.degraded} degraded decisions skipped"
        ]
    if scan.unreadable:
        lines.append(f"note: {scan.unreadable} records of another record version, or unreadable, skipped")
    if scan.duplicates:
        lines.append(f"note: {scan.duplicates} repeated log entries of decisions already counted, skipped")
    for where, n in sorted(scan.unknown_offers.items()):
        lines.append(f"note: {n} awards of offer {where} not counted: the catalog does not know the offer")
    for version, why in sorted(plan.fallbacks.items()):
        lines.append(f"note: catalog {version} cannot be loaded ({why}); its awards are counted with the live catalog")
    if plan.customers.expired:
        lines.append(f"note: {plan.customers.expired} customers' contact history expired; their counts stay expired")
    for key in plan.budget.skipped:
        lines.append(f"note: {key} is not (fully) covered by the log; left as it is")
    return lines


def report_json(report: BudgetReport) -> str:
    return json.dumps(asdict(report), indent=2)
