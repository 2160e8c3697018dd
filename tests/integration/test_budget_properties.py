"""Budget reservation, commit and release as a state machine against a real Redis.

Each example compiles a small catalog with random limits (offer and campaign totals, daily caps
with or without pacing, spend, per-customer caps, hourly channel capacity, a contact cap), then
runs random steps: reserve a random ranked walk in one of three hours (two on one day), commit a reservation for
a random customer (releasing what the commit refuses, as the pipeline does), or release one. A
model predicts every script result exactly and, after every step, the Redis counters must equal
the awards granted and not released, never above a cap, per-customer counts never above theirs.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from server.catalog.budgets import (
    DAY,
    HOUR,
    TOTAL,
    Period,
    Reservation,
    decode_counts,
    per_customer_caps,
    reservation,
)
from server.catalog.compiled import Catalog
from server.catalog.compiler import parse_catalog
from server.domain import Channel
from server.state.keys import Keys
from server.state.redis_store import COMMITTED, REPLAY, RETRY, Pick, RedisStateStore
from tests.unit.catalog_fixtures import SCHEMA

KEYS = Keys()
NOW = 1_800_000_000.0  # only campaign-window pacing reads it, and these campaigns have no window
WINDOW_SECONDS = 86_400.0  # every commit is at NOW, so nothing leaves the contact window
PERIODS = (
    Period(day="2027-01-15", hour="2027-01-15T10", day_fraction=10 / 24),
    Period(day="2027-01-15", hour="2027-01-15T11", day_fraction=11 / 24),
    Period(day="2027-01-16", hour="2027-01-16T10", day_fraction=10 / 24),
)
CAMPAIGNS = ("ca", "cb")
OFFERS = ("o1", "o2", "o3", "o4")
CUSTOMERS = ("c1", "c2")

periods = st.integers(0, len(PERIODS) - 1)
walks = st.lists(st.sampled_from(OFFERS), min_size=1, max_size=len(OFFERS), unique=True)  # ranked candidates
customers = st.sampled_from(CUSTOMERS)
request_ids = st.sampled_from(("", "r1", "r2"))  # a repeated one must replay, not award again


# -- the random world --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    total: int | None
    daily: int | None
    spend_cents: int | None
    per_customer: int | None
    pace_slack: float | None  # pacing over the day (needs `daily`)

    def spec(self) -> dict[str, object]:
        out: dict[str, object] = {
            "total_awards": self.total,
            "daily_awards": self.daily,
            "total_spend": None if self.spend_cents is None else self.spend_cents / 100,
            "per_customer": self.per_customer,
        }
        if self.pace_slack is not None and self.daily is not None:
            out["pacing"] = {"over": "day", "slack": self.pace_slack}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class World:
    campaign_of: dict[str, str]
    cost_cents: dict[str, int]
    budgets: dict[str, Budget]  # by scope: "o:<offer>" or "c:<campaign>"
    capacity: int | None  # web awards per hour
    contact_cap: int | None  # web awards per customer per window

    def catalog_text(self) -> str:
        def budget(scope: str) -> dict[str, object]:
            return {"budget": self.budgets[scope].spec()} if scope in self.budgets else {}

        spec = {
            "name": "props",
            "timezone": "UTC",
            "contact_policy": {"max_per_window": {} if self.contact_cap is None else {"web": self.contact_cap}},
            "channels": {"web": {"capacity_per_hour": self.capacity}} if self.capacity is not None else {},
            "campaigns": [{"id": c, "type": "lifecycle", "channels": ["web"], **budget(f"c:{c}")} for c in CAMPAIGNS],
            "offers": [
                {
                    "id": o,
                    "campaign": self.campaign_of[o],
                    "title": o,
                    "value": 10,
                    "cost": self.cost_cents[o] / 100,
                    "prior_propensity": 0.1,
                    **budget(f"o:{o}"),
                }
                for o in OFFERS
            ],
        }
        return json.dumps(spec)  # JSON is YAML

    def caps(self) -> dict[tuple[int, str], int]:
        """The cap of every limited counter, from the drawn limits (not from the compiled checks)."""
        caps: dict[tuple[int, str], int] = {}
        for scope, b in self.budgets.items():
            for kind, name, cap in ((TOTAL, "n", b.total), (TOTAL, "spend", b.spend_cents), (DAY, "n", b.daily)):
                if cap is not None:
                    caps[(kind, f"{scope}:{name}")] = cap
        if self.capacity is not None:
            caps[(HOUR, "ch:web:n")] = self.capacity
        return caps


small = st.one_of(st.none(), st.integers(0, 8))
budgets = st.builds(
    Budget,
    total=small,
    daily=small,
    spend_cents=st.one_of(st.none(), st.sampled_from([0, 250, 999, 2000])),
    per_customer=st.one_of(st.none(), st.integers(0, 2), st.integers(1, 2)),
    pace_slack=st.one_of(st.none(), st.sampled_from([0.0, 0.1, 0.5])),
)
scopes = [f"o:{o}" for o in OFFERS] + [f"c:{c}" for c in CAMPAIGNS]
worlds = st.builds(
    World,
    campaign_of=st.fixed_dictionaries({o: st.sampled_from(CAMPAIGNS) for o in OFFERS}),
    cost_cents=st.fixed_dictionaries({o: st.sampled_from([0, 100, 250, 999]) for o in OFFERS}),
    budgets=st.fixed_dictionaries({}, optional={s: budgets for s in scopes}),
    capacity=st.one_of(st.none(), st.integers(1, 20)),
    contact_cap=st.one_of(st.none(), st.integers(1, 8)),
)


# -- the model ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Held:
    """Awards one reservation granted and nobody has committed or released yet."""

    period: int
    offers: tuple[str, ...]


@dataclass
class Customer:
    counts: Counter[str] = field(default_factory=Counter)  # the contacts hash's a:o:/a:c: fields
    sent: int = 0  # awards on web inside the window
    decided: dict[str, str] = field(default_factory=dict)  # request id -> decision id


def hash_name(r: Reservation, kind: int, period: Period) -> str:
    if kind == HOUR:
        return KEYS.budget_hour(r.channel, period.hour)
    return KEYS.budget_total(r.campaign) if kind == TOTAL else KEYS.budget_day(r.campaign, period.day)


def predict_walk(
    used: Counter[tuple[str, str]], period: Period, k: int, walk: list[Reservation]
) -> tuple[list[str], list[tuple[str, int, int]]]:
    """The first k candidates that fit every check, counting this call's own awards as it goes."""
    pending: Counter[tuple[str, str]] = Counter()
    awarded: list[str] = []
    refused: list[tuple[str, int, int]] = []
    for r in walk:
        if len(awarded) == k:
            break
        slots = [(hash_name(r, c.key, period), c.field) for c in r.checks]
        failed = next(
            (
                (j, used[s] + pending[s])
                for j, (c, s) in enumerate(zip(r.checks, slots, strict=True), 1)
                if c.limit >= 0 and used[s] + pending[s] + c.incr > c.limit
            ),
            None,
        )
        if failed is None:
            awarded.append(r.offer_id)
            pending.update({s: c.incr for c, s in zip(r.checks, slots, strict=True)})
        else:
            refused.append((r.offer_id, *failed))
    return awarded, refused


def same_refusals(
    got: list[tuple[str, int, int]], expected: list[tuple[str, int, int]], walk: list[Reservation]
) -> bool:
    """The walk refuses the same candidates as one script would; once the channel's hourly
    capacity is reached (budget_walk), a candidate not yet checked against its campaign's counters
    is refused for the channel instead, whatever else it would have failed."""
    by_id = {r.offer_id: r for r in walk}
    full = any(by_id[o].checks[no - 1].key == HOUR for o, no, _ in expected)
    if not full:
        return got == expected
    return sorted(o for o, _, _ in got) == sorted(o for o, _, _ in expected) and all(
        (o, no, used) in expected or by_id[o].checks[no - 1].key == HOUR for o, no, used in got
    )


def predict_commit(
    who: Customer, picks: list[Pick], cap: int | None, may_retry: bool
) -> tuple[int, list[str], list[tuple[str, int]], Counter[str]]:
    """(status, awarded, refused with why, counts after) of commit.lua for a fresh request."""
    counts = Counter(who.counts)
    awarded: list[str] = []
    refused: list[tuple[str, int]] = []
    for p in picks:
        fo, fc = f"a:o:{p.offer_id}", f"a:c:{p.campaign_id}"
        if cap is not None and len(awarded) >= cap - who.sent:
            refused.append((p.offer_id, 1))
        elif p.offer_cap >= 0 and counts[fo] + 1 > p.offer_cap:
            refused.append((p.offer_id, 2))
        elif p.campaign_cap >= 0 and counts[fc] + 1 > p.campaign_cap:
            refused.append((p.offer_id, 3))
        else:
            awarded.append(p.offer_id)
            if p.offer_cap >= 0 or p.campaign_cap >= 0:
                counts.update([fo, fc])
    if may_retry and not awarded and any(why != 1 for _, why in refused):
        return RETRY, [], refused, who.counts
    return COMMITTED, awarded, refused, counts


# -- the machine -------------------------------------------------------------------------------------
class BudgetMachine(RuleBasedStateMachine):
    held = Bundle("held")

    def __init__(self, redis_url: str) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.sync = redis.Redis.from_url(redis_url)
        self.sync.flushall()  # every example starts from an empty database
        self.aio = aioredis.Redis.from_url(redis_url)
        self.store = RedisStateStore(self.aio, KEYS)
        self.awards: Counter[tuple[int, str]] = Counter()  # (period, offer) granted and not released
        self.customers = {c: Customer() for c in CUSTOMERS}
        self.decisions = 0

    def teardown(self) -> None:
        self.loop.run_until_complete(self.store.aclose())
        self.loop.run_until_complete(self.aio.aclose())
        self.loop.close()
        self.sync.close()

    @initialize(world=worlds)
    def publish(self, world: World) -> None:
        self.world = world
        self.catalog: Catalog = parse_catalog(world.catalog_text(), SCHEMA)
        self.walks = [
            {
                o.id: reservation(self.catalog, o, Channel.WEB, NOW, p) or Reservation(o.id, ())
                for o in self.catalog.offers
            }
            for p in PERIODS
        ]

    def expected_counters(self) -> Counter[tuple[str, str]]:
        out: Counter[tuple[str, str]] = Counter()
        for (p, offer), n in self.awards.items():
            for c in self.walks[p][offer].checks:
                out[(hash_name(self.walks[p][offer], c.key, PERIODS[p]), c.field)] += n * c.incr
        return out

    def redis_counters(self) -> Counter[tuple[str, str]]:
        keys = self.sync.keys(KEYS.budget_pattern()) + self.sync.keys(KEYS.channel_hour_pattern())
        pipe = self.sync.pipeline(transaction=False)  # one round trip: shrinking replays many steps
        for key in keys:
            pipe.hgetall(key)
        out: Counter[tuple[str, str]] = Counter()
        for key, raw in zip(keys, pipe.execute(), strict=True):
            out.update({(key.decode(), name): value for name, value in decode_counts(raw).items()})
        return out

    def snapshot(self, pattern: str) -> dict[bytes, bytes | None]:
        keys = sorted(self.sync.keys(pattern))
        pipe = self.sync.pipeline(transaction=False)
        for key in keys:
            pipe.dump(key)
        return dict(zip(keys, pipe.execute(), strict=True))

    @rule(target=held, period=periods, walk=walks, k=st.integers(1, 3))
    def reserve(self, period: int, walk: list[str], k: int) -> object:
        """Reserve and hold the awards, so other steps run while this decision is in flight."""
        held = self.reserve_walk(period, walk, k)
        return multiple() if held is None else held

    @rule(
        period=periods,
        walk=walks,
        k=st.integers(1, 3),
        customer=customers,
        request_id=request_ids,
        may_retry=st.booleans(),
    )
    def decide(self, period: int, walk: list[str], k: int, customer: str, request_id: str, may_retry: bool) -> None:
        """Reserve, then commit at once: what a decision does when nothing runs in between."""
        held = self.reserve_walk(period, walk, k)
        if held is not None:
            self.commit_held(held, customer, request_id, may_retry)

    def reserve_walk(self, period: int, walk: list[str], k: int) -> Held | None:
        ranked = [self.walks[period][o] for o in walk]
        expected = predict_walk(self.expected_counters(), PERIODS[period], k, ranked)
        before = self.snapshot("*") if not expected[0] else {}
        result = self.loop.run_until_complete(self.store.reserve(PERIODS[period], k, ranked))
        assert list(result.awarded) == expected[0]
        assert same_refusals(list(result.refused), expected[1], ranked)
        if not result.awarded:  # a refused reservation changes nothing
            assert self.snapshot("*") == before
            return None
        self.awards.update((period, o) for o in result.awarded)
        return Held(period, result.awarded)

    def release_awards(self, period: int, offers: list[str]) -> None:
        self.loop.run_until_complete(self.store.release(PERIODS[period], [self.walks[period][o] for o in offers]))
        self.awards.subtract((period, o) for o in offers)
        assert min(self.awards.values(), default=0) >= 0

    @rule(held=consumes(held))
    def release(self, held: Held) -> None:
        self.release_awards(held.period, list(held.offers))

    @rule(held=consumes(held), customer=customers, request_id=request_ids, may_retry=st.booleans())
    def commit(self, held: Held, customer: str, request_id: str, may_retry: bool) -> None:
        self.commit_held(held, customer, request_id, may_retry)

    def commit_held(self, held: Held, customer: str, request_id: str, may_retry: bool) -> None:
        """Commit for the customer and release what the commit refuses (all of it on a replay)."""
        who = self.customers[customer]
        offers = {o.id: o for o in self.catalog.offers}
        picks = [
            Pick(o, offers[o].campaign_id, *per_customer_caps(self.catalog, offers[o]), 0.1, 0.5) for o in held.offers
        ]
        cap = self.catalog.contact_policy.max_per_window.get(Channel.WEB)
        self.decisions += 1
        decision_id = f"d{self.decisions}"
        before = self.snapshot(f"{KEYS.prefix}{{c:{customer}}}:*")
        result = self.loop.run_until_complete(
            self.store.commit(
                customer_id=customer,
                channel="web",
                decision_id=decision_id,
                request_id=request_id,
                now=NOW,
                window_seconds=WINDOW_SECONDS,
                channel_cap=cap,
                picks=picks,
                may_retry=may_retry,
                decision_ttl=600,
                request_ttl=600,
                history_ttl=600,
                request_fingerprint="fp" if request_id else "",
            )
        )
        if request_id in who.decided:  # the request was decided: replay it, give every award back
            assert (result.status, result.decision_id) == (REPLAY, who.decided[request_id])
            self.release_awards(held.period, list(held.offers))
            return
        status, awarded, refused, counts = predict_commit(who, picks, cap, may_retry)
        assert (result.status, result.decision_id) == (status, decision_id)
        assert (list(result.awarded), list(result.refused)) == (awarded, refused)
        if status == RETRY:  # the caller tries the next candidates; this attempt wrote nothing
            assert self.snapshot(f"{KEYS.prefix}{{c:{customer}}}:*") == before
        else:
            who.counts, who.sent = counts, who.sent + len(awarded)
            if request_id:
                who.decided[request_id] = decision_id
        self.release_awards(held.period, [o for o, _ in result.refused])

    @invariant()
    def counters_are_the_awards_held_and_never_above_a_cap(self) -> None:
        actual = self.redis_counters()
        assert +actual == +self.expected_counters()  # `+` drops the zeros a release leaves behind
        kind_of = {
            hash_name(r, kind, p): kind
            for i, p in enumerate(PERIODS)
            for r in self.walks[i].values()
            for kind in (TOTAL, DAY, HOUR)
            if r.campaign or kind == HOUR
        }
        caps = self.world.caps()
        for (key, name), value in actual.items():
            cap = caps.get((kind_of[key], name))
            assert cap is None or value <= cap, (key, name, value, cap)

    @invariant()
    def per_customer_counts_match_and_stay_within_their_caps(self) -> None:
        caps = {f"a:{scope}": b.per_customer for scope, b in self.world.budgets.items() if b.per_customer is not None}
        pipe = self.sync.pipeline(transaction=False)
        for customer in CUSTOMERS:
            pipe.hgetall(KEYS.contacts(customer))
            pipe.zcard(KEYS.channel_contacts(customer, "web"))
        stored = pipe.execute()
        for i, who in enumerate(self.customers[c] for c in CUSTOMERS):
            assert decode_counts(stored[2 * i]) == dict(+who.counts)
            assert stored[2 * i + 1] == who.sent
            assert all(who.counts[name] <= cap for name, cap in caps.items()), (who.counts, caps)
            cap = self.world.contact_cap
            assert cap is None or who.sent <= cap


# passing takes seconds; a failure then shrinks to a minimal sequence of steps, which can take a
# few minutes (Hypothesis stops at five), so the suite's 120 s timeout would hide the reproducer
@pytest.mark.timeout(420)
def test_budget_counters_always_equal_the_awards_held(redis_url: str) -> None:
    run_state_machine_as_test(
        lambda: BudgetMachine(redis_url),
        settings=settings(
            max_examples=100,
            stateful_step_count=30,
            derandomize=True,  # the same examples every run
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
