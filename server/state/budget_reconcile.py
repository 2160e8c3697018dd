"""`nbo budgets reconcile`: the budget counters and per-customer award counts against the log.

A write that never lands (a failover, a release that failed after a timeout) leaves a counter
off without a trace, and budgets then under- or over-spend. The counters are rebuilt from the
decision log (server.state.budget_log), compared with what Redis holds, and the differences
written back as increments, so an award landing meanwhile is kept.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast

import redis

from server.catalog.budgets import DAY_KEY_TTL_SECONDS, HOUR_KEY_TTL_SECONDS, Tally, decode_counts
from server.catalog.compiled import Catalog
from server.state.budget_log import CatalogVersions, Coverage, LogScan, coverage, log_gaps, scan_log
from server.state.keys import Keys
from server.state.log_reader import CHUNK

CUSTOMER_CHUNK = 1_000
AWARD_FIELDS = ("a:o:", "a:c:")  # per-customer award counts in a customer's contacts hash


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
    """The budget hashes held in Redis: campaigns with totals, (campaign, day), (channel, hour)."""

    totals: frozenset[str]
    days: frozenset[tuple[str, str]]
    hours: frozenset[tuple[str, str]]

    @classmethod
    def read(cls, client: redis.Redis, keys: Keys) -> StoredPeriods:
        found = cast(Iterable[bytes], client.scan_iter(match=keys.budget_pattern(), count=1000))
        found_hours = cast(Iterable[bytes], client.scan_iter(match=keys.channel_hour_pattern(), count=1000))
        totals, days, hours = set(), set(), set()
        budget = re.compile(re.escape(keys.prefix) + r"\{b:([^}]*)\}:(total|day:(.*))")
        hourly = re.compile(re.escape(keys.prefix) + r"\{ch:([^}]*)\}:hour:(.*)")
        for key in found:
            m = budget.fullmatch(key.decode())
            if m is not None and m[2] == "total":
                totals.add(m[1])
            elif m is not None:
                days.add((m[1], m[3]))
        for key in found_hours:
            if (m := hourly.fullmatch(key.decode())) is not None:
                hours.add((m[1], m[2]))
        return cls(frozenset(totals), frozenset(days), frozenset(hours))

    @property
    def day_names(self) -> list[str]:
        return sorted({day for _, day in self.days})


def budget_keys(keys: Keys, tally: Tally, cover: Coverage, stored: StoredPeriods) -> BudgetKeys:
    ttl: dict[str, int | None] = {}
    rebuilt: dict[str, dict[str, int]] = {}
    skipped: list[str] = []
    for camp in sorted(stored.totals | tally.total.keys()):
        ttl[keys.budget_total(camp)] = None
        rebuilt[keys.budget_total(camp)] = tally.total.get(camp, {})
    for camp, day in sorted(stored.days | tally.days.keys()):
        key = keys.budget_day(camp, day)
        if cover.day(day):
            ttl[key] = DAY_KEY_TTL_SECONDS
            rebuilt[key] = tally.days.get((camp, day), {})
        elif (camp, day) in stored.days:
            skipped.append(key)
    for channel, hour in sorted(stored.hours | tally.hours.keys()):
        key = keys.budget_hour(channel, hour)
        if cover.hour(hour):
            ttl[key] = HOUR_KEY_TTL_SECONDS
            rebuilt[key] = tally.hours.get((channel, hour), {})
        elif (channel, hour) in stored.hours:
            skipped.append(key)
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
    chunk: int = CHUNK,
) -> Reconciliation:
    """Rebuild every counter from the log and compare; nothing is written."""
    catalogs = CatalogVersions(client, keys, live)
    scan = scan_log(client, keys, catalogs, chunk)
    tz = live.timezone
    stored = StoredPeriods.read(client, keys)
    gaps = log_gaps(client, keys, scan, catalogs.used(), maxlen, stored.day_names, tz, bool(stored.totals))
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
        # one MULTI/EXEC per slot: a campaign's hashes share its tag, a channel's hours theirs
        by_slot: dict[str, list[Drift]] = defaultdict(list)
        for d in plan.budget_drifts:
            by_slot[d.key[d.key.index("{") : d.key.index("}") + 1]].append(d)
        for slot_drifts in by_slot.values():
            pipe = client.pipeline(transaction=True)
            for d in slot_drifts:
                pipe.hincrby(d.key, d.field, d.difference)
            for key in sorted({d.key for d in slot_drifts}):
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
