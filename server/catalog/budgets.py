"""Budgets, channel capacity and pacing: what each award is checked against, and the counters.

A campaign's counters, its own and its offers', live under its own hash tag, `{b:<campaign>}`,
and a channel's hourly capacity under `{ch:<channel>}`, so that on a Redis Cluster the budgets
spread over the shards with the campaigns instead of all landing on one. Each reservation script
touches one of those slots; server.state.budget_walk splits a ranked walk into such calls
(docs/operations.md, "Budgets on a cluster", argues the design). The hashes:

- `<prefix>{b:<campaign>}:total`: all-time awards (`<scope>:n`) and spend in cents (`<scope>:spend`);
- `<prefix>{b:<campaign>}:day:<YYYY-MM-DD>`: the same per day in the catalog's time zone;
- `<prefix>{ch:<channel>}:hour:<YYYY-MM-DDTHH>`: the channel's awards (`ch:<channel>:n`) that hour.

A scope is `o:<offer id>` or `c:<campaign id>`; an offer's scope lives with its campaign. Spend
is counted in integer cents so that the Lua side never compares floats. Pacing turns a cap into
"allowed so far": the cap times the elapsed fraction of the day or the campaign window, plus a
slack, computed here (not in Lua) so the scripts stay free of clocks and a simulated clock drives
the whole thing in tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from server.domain import Channel

if TYPE_CHECKING:
    from server.catalog.compiled import Catalog, Offer

# key positions in the reservation script's KEYS (1-based, as Lua sees them)
TOTAL, DAY, HOUR = 1, 2, 3
UNLIMITED = -1
DAY_KEY_TTL_SECONDS = 40 * 86_400  # long enough for `nbo budgets` and reconciliation to look back
HOUR_KEY_TTL_SECONDS = 3 * 86_400


class PaceOver(StrEnum):
    DAY = "day"
    WINDOW = "window"


@dataclass(frozen=True, slots=True)
class Pacing:
    """Even delivery: allowed so far = cap x elapsed fraction + slack (a share of the cap, at
    least one award), never more than the cap."""

    over: PaceOver
    slack: float

    def allowed(self, cap: int, elapsed: float) -> int:
        ahead = max(self.slack * cap, 1.0)
        return min(cap, math.floor(cap * min(max(elapsed, 0.0), 1.0) + ahead + 1e-9))


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one offer or campaign, validated by the catalog (all >= 0)."""

    total_awards: int | None = None
    daily_awards: int | None = None
    total_spend_cents: int | None = None
    per_customer: int | None = None
    pacing: Pacing | None = None

    @property
    def shared(self) -> bool:
        """Limits counted in the shared budget slot (per_customer lives with the customer)."""
        return self.total_awards is not None or self.daily_awards is not None or self.total_spend_cents is not None


def cents(amount: float) -> int:
    return round(amount * 100)


@dataclass(frozen=True, slots=True)
class Period:
    """Where `now` falls in the catalog's calendar: the counter keys and the day's elapsed share."""

    day: str
    hour: str
    day_fraction: float

    @classmethod
    def at(cls, now: float, tz: ZoneInfo) -> Period:
        day, hour, start, end = _calendar(now, tz)
        return cls(day=day, hour=hour, day_fraction=(now - start) / (end - start))


def _local_calendar(now: float, tz: ZoneInfo) -> tuple[str, str, float, float]:
    """(day, hour, start and end of the local day in epoch seconds) at `now`."""
    local = datetime.fromtimestamp(now, tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    # a day is 23 or 25 hours across a DST change: measure it in real seconds
    start = midnight.timestamp()
    end = (midnight + timedelta(days=1)).replace(tzinfo=tz).timestamp()
    return local.strftime("%Y-%m-%d"), local.strftime("%Y-%m-%dT%H"), start, end


# Every award asks for its Period; the calendar part changes at most once a minute (local hours
# and days begin on whole UTC minutes in every zone whose offset is whole minutes), so it is
# computed once per zone and minute: strftime and the zone arithmetic were ~15 us a decision.
_SLOTS: dict[ZoneInfo, tuple[int, tuple[str, str, float, float]]] = {}


def _calendar(now: float, tz: ZoneInfo) -> tuple[str, str, float, float]:
    minute = math.floor(now / 60)
    cached = _SLOTS.get(tz)
    if cached is not None and cached[0] == minute:
        return cached[1]
    first = _local_calendar(minute * 60.0, tz)
    # a zone with an offset in seconds (some before 1972) may change hour inside this minute:
    # such a minute is not cached, so every call computes its own answer
    if _local_calendar(minute * 60.0 + 59.999, tz) != first:
        return _local_calendar(now, tz)
    _SLOTS[tz] = (minute, first)
    return first


@dataclass(frozen=True, slots=True)
class Check:
    """One counter an award must fit: used + incr <= limit (UNLIMITED: only counted)."""

    key: int  # TOTAL, DAY or HOUR
    field: str
    limit: int
    incr: int
    what: str  # for people: "offer o1 total awards", "call_centre capacity per hour", ...

    def args(self) -> tuple[int, str, int, int]:
        return (self.key, self.field, self.limit, self.incr)


@dataclass(frozen=True, slots=True)
class Reservation:
    """The checks of one candidate offer: TOTAL and DAY checks are counted in the slot of
    `campaign`, a HOUR check in the slot of `channel`."""

    offer_id: str
    checks: tuple[Check, ...]
    campaign: str = ""
    channel: str = ""


def window_fraction(start: float | None, end: float | None, now: float) -> float:
    if start is None or end is None or end <= start:
        return 1.0
    return (now - start) / (end - start)


def _scope_checks(
    scope: str, name: str, limits: Limits, cost: int, elapsed_window: float, period: Period
) -> list[Check]:
    pacing = limits.pacing

    def cap(value: int | None, over: PaceOver, elapsed: float, what: str) -> tuple[int, str]:
        if value is None:
            return UNLIMITED, what
        if pacing is not None and pacing.over is over:
            return pacing.allowed(value, elapsed), f"{what} (paced: allowed so far of {value})"
        return value, what

    total, total_what = cap(limits.total_awards, PaceOver.WINDOW, elapsed_window, f"{name} total awards")
    spend, spend_what = cap(limits.total_spend_cents, PaceOver.WINDOW, elapsed_window, f"{name} spend in cents")
    daily, daily_what = cap(limits.daily_awards, PaceOver.DAY, period.day_fraction, f"{name} awards today")
    return [
        Check(TOTAL, f"{scope}:n", total, 1, total_what),
        Check(TOTAL, f"{scope}:spend", spend, cost, spend_what),
        Check(DAY, f"{scope}:n", daily, 1, daily_what),
        Check(DAY, f"{scope}:spend", UNLIMITED, cost, f"{name} spend today in cents"),
    ]


def reservation(catalog: Catalog, offer: Offer, channel: Channel, now: float, period: Period) -> Reservation | None:
    """The checks an award of `offer` on `channel` must pass, or None if nothing limits it."""
    camp = catalog.campaigns[offer.campaign]
    cost = cents(offer.cost)
    elapsed = window_fraction(camp.start, camp.end, now)
    checks: list[Check] = []
    if offer.limits is not None and offer.limits.shared:
        checks += _scope_checks(f"o:{offer.id}", f"offer {offer.id}", offer.limits, cost, elapsed, period)
    if camp.limits is not None and camp.limits.shared:
        checks += _scope_checks(f"c:{camp.id}", f"campaign {camp.id}", camp.limits, cost, elapsed, period)
    capacity = catalog.channel_capacity.get(channel)
    if capacity is not None:
        checks.append(Check(HOUR, f"ch:{channel.value}:n", capacity, 1, f"{channel.value} capacity per hour"))
    return Reservation(offer.id, tuple(checks), camp.id, channel.value) if checks else None


def has_budget(catalog: Catalog, offer: Offer) -> bool:
    """Whether the offer or its campaign has a shared limit that can run out for this offer alone."""
    camp = catalog.campaigns[offer.campaign]
    return bool((offer.limits and offer.limits.shared) or (camp.limits and camp.limits.shared))


def per_customer_caps(catalog: Catalog, offer: Offer) -> tuple[int, int]:
    """(offer cap, campaign cap) on awards per customer; UNLIMITED where none."""
    camp = catalog.campaigns[offer.campaign]
    own = offer.limits.per_customer if offer.limits and offer.limits.per_customer is not None else UNLIMITED
    shared = camp.limits.per_customer if camp.limits and camp.limits.per_customer is not None else UNLIMITED
    return own, shared


def exhausted_reason(check: Check, used: int) -> str:
    if check.key == HOUR:
        return f"{check.what} of {check.limit} reached"
    if check.field.endswith(":spend"):
        return f"{check.what}: {used} of {check.limit} used, this award costs {check.incr}"
    return f"{check.what}: {used} of {check.limit} used"


# -- reading and rebuilding the counters -------------------------------------------------------
@dataclass
class Usage:
    """Counter values of one scope, as read from Redis or rebuilt from the decision log."""

    total: int = 0
    spend_cents: int = 0
    today: int = 0
    spend_today_cents: int = 0


@dataclass
class Tally:
    """Counters rebuilt from logged awards: field -> value, per counter hash, keyed as the hashes
    are: totals by campaign, days by (campaign, day), hours by (channel, hour)."""

    total: dict[str, dict[str, int]] = field(default_factory=dict)
    days: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    hours: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)

    def add(self, catalog: Catalog, offer_id: str, channel: Channel, ts: float) -> bool:
        """Count one logged award of `offer_id`; False if the catalog does not know the offer."""
        index = catalog.offer_index.get(offer_id)
        if index is None:
            return False
        offer = catalog.offers[index]
        camp = catalog.campaigns[offer.campaign]
        period = Period.at(ts, catalog.timezone)
        cost = cents(offer.cost)
        for scope, limits in ((f"o:{offer.id}", offer.limits), (f"c:{camp.id}", camp.limits)):
            if limits is None or not limits.shared:
                continue
            total = self.total.setdefault(camp.id, {})
            day = self.days.setdefault((camp.id, period.day), {})
            for bucket in (total, day):
                bucket[f"{scope}:n"] = bucket.get(f"{scope}:n", 0) + 1
                bucket[f"{scope}:spend"] = bucket.get(f"{scope}:spend", 0) + cost
        if channel in catalog.channel_capacity:
            hour = self.hours.setdefault((channel.value, period.hour), {})
            hour[f"ch:{channel}:n"] = hour.get(f"ch:{channel}:n", 0) + 1
        return True


def decode_counts(raw: Mapping[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in raw.items()}
