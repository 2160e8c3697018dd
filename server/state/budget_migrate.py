"""`nbo budgets migrate`: counters of the one-slot layout moved to the per-campaign slots.

Before issue 15 every budget counter lived under one tag, `<prefix>{b}:total|day:<d>|hour:<h>`.
A server of this version never reads those keys: upgraded as they are, budgets would start again
from zero and could be spent twice. This moves each field to the hash that now holds it (an
offer's and a campaign's scope to the campaign's slot, a channel's hour to the channel's), with
the old key's expiry, then deletes the old field.

The two keys are in different slots, so a field's move is not atomic: a run interrupted between
the increment and the delete counts that field twice when run again, which only makes a budget
under-spend (never over); `nbo budgets reconcile` then sets it from the log. Run it with the old
servers stopped, before the new ones start: an old server still writing `{b}` keys after the
move would be counting into hashes nothing reads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import redis

from server.catalog.compiled import Catalog
from server.state.keys import Keys

log = logging.getLogger(__name__)


@dataclass
class Migration:
    moved: dict[str, int] = field(default_factory=dict)  # new key -> fields moved into it
    unknown: list[str] = field(default_factory=list)  # "key field": no campaign in the live catalog

    @property
    def fields(self) -> int:
        return sum(self.moved.values())


def legacy_pattern(keys: Keys) -> str:
    return f"{keys.prefix}{{b}}:*"


def has_legacy(client: redis.Redis, keys: Keys) -> bool:
    """Whether a one-slot totals hash is there (one EXISTS: a SCAN would walk every customer key)."""
    return bool(client.exists(f"{keys.prefix}{{b}}:total"))


def warn_if_legacy(client: redis.Redis, keys: Keys) -> None:
    """At `nbo serve` start-up: upgraded without `nbo budgets migrate`, budgets start from zero."""
    try:
        found = has_legacy(client, keys)
    except redis.RedisError:
        return  # the server starts without Redis; the check is for the usual upgrade
    if found:
        log.warning(
            "budget counters of the one-slot layout (%s) are not read by this version: budgets count from zero "
            "until `nbo budgets migrate` moves them",
            legacy_pattern(keys),
        )


def legacy_keys(client: redis.Redis, keys: Keys) -> list[str]:
    found = cast(Iterable[bytes], client.scan_iter(match=legacy_pattern(keys), count=1000))
    return sorted(k.decode() for k in found)


def target(keys: Keys, catalog: Catalog, legacy: str, name: str) -> str | None:
    """The hash that now holds field `name` of the old hash `legacy`; None if no campaign owns it."""
    rest = legacy.removeprefix(f"{keys.prefix}{{b}}:")
    if rest.startswith("hour:"):
        channel = name.removeprefix("ch:").removesuffix(":n")
        return keys.budget_hour(channel, rest.removeprefix("hour:"))
    kind, _, ident = name.rsplit(":", 1)[0].partition(":")  # "o:<offer>" or "c:<campaign>"
    if kind == "o":
        index = catalog.offer_index.get(ident)
        campaign = None if index is None else catalog.offers[index].campaign_id
    else:
        campaign = ident if any(c.id == ident for c in catalog.campaigns) else None
    if campaign is None:
        return None
    return keys.budget_total(campaign) if rest == "total" else keys.budget_day(campaign, rest.removeprefix("day:"))


def migrate(client: redis.Redis, keys: Keys, catalog: Catalog, *, dry_run: bool = False) -> Migration:
    out = Migration()
    for legacy in legacy_keys(client, keys):
        ttl = int(client.ttl(legacy))
        raw = cast(dict[bytes, bytes], client.hgetall(legacy))
        for name_b, value in sorted(raw.items()):
            name = name_b.decode()
            to = target(keys, catalog, legacy, name)
            if to is None:
                out.unknown.append(f"{legacy} {name}")
                continue
            out.moved[to] = out.moved.get(to, 0) + 1
            if dry_run:
                continue
            client.hincrby(to, name, int(value))
            if ttl > 0:
                client.expire(to, ttl)
            client.hdel(legacy, name)
    return out
