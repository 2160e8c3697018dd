"""Budget counters next to their limits: what `nbo budgets` shows.

The counters (server.catalog.budgets) are changed by the reservation script before an award is
committed and given back when the commit refuses it. This reads the total, day and hour
counters of a moment together and sets each campaign's and offer's caps, use and what is left
(awards that fit every limit, and with pacing, what pacing allows now) beside them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import redis

from server.catalog.budgets import Limits, PaceOver, Pacing, Period, Usage, cents, decode_counts, window_fraction
from server.catalog.compiled import Campaign, Catalog
from server.state.keys import Keys


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


def read_counters(client: redis.Redis, keys: Keys, catalog: Catalog, period: Period) -> tuple[dict[str, int], ...]:
    """(total, day, hour) counters of `period`, every campaign's and channel's hashes merged (their
    fields name their scope or channel, so none collide), read in one pipeline."""
    pipe = client.pipeline(transaction=False)
    names = [(0, keys.budget_total(c.id)) for c in catalog.campaigns]
    names += [(1, keys.budget_day(c.id, period.day)) for c in catalog.campaigns]
    names += [(2, keys.budget_hour(ch.value, period.hour)) for ch in sorted(catalog.channel_capacity)]
    for _, key in names:
        pipe.hgetall(key)
    merged: tuple[dict[str, int], ...] = ({}, {}, {})
    for (kind, _), raw in zip(names, pipe.execute(), strict=True):
        merged[kind].update(decode_counts(raw))
    return merged


def build_report(client: redis.Redis, keys: Keys, catalog: Catalog, now: float) -> BudgetReport:
    period = Period.at(now, catalog.timezone)
    total, today, hour = read_counters(client, keys, catalog, period)
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
