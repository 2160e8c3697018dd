"""The reservation, release and commit scripts against a real Redis: all checks before any write."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from server.catalog.budgets import DAY, HOUR, TOTAL, UNLIMITED, Check, Period, Reservation
from server.state.keys import Keys
from server.state.redis_store import (
    CAMPAIGN_CAP,
    CHANNEL_CAP,
    COMMITTED,
    OFFER_CAP,
    REPLAY,
    RETRY,
    Committed,
    Pick,
    RedisStateStore,
)

PERIOD = Period(day="2027-01-15", hour="2027-01-15T10", day_fraction=10 / 24)
KEYS = Keys()


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStateStore]:
    client = aioredis.Redis.from_url(redis_url)
    store = RedisStateStore(client, KEYS)
    yield store
    await store.aclose()
    await client.aclose()


def snapshot(client: redis.Redis) -> dict[bytes, bytes | None]:
    return {key: client.dump(key) for key in sorted(client.keys("*"))}


def offer(offer_id: str, campaign: str, *, total: int, spend: int, daily: int, cost: int = 250) -> Reservation:
    return Reservation(
        offer_id,
        (
            Check(TOTAL, f"o:{offer_id}:n", total, 1, "offer total"),
            Check(TOTAL, f"o:{offer_id}:spend", spend, cost, "offer spend"),
            Check(DAY, f"o:{offer_id}:n", daily, 1, "offer today"),
            Check(TOTAL, f"c:{campaign}:n", UNLIMITED, 1, "campaign total"),
            Check(HOUR, "ch:web:n", 100, 1, "web capacity"),
        ),
        campaign,
        "web",
    )


async def test_a_reservation_failing_its_third_check_changes_nothing(
    store: RedisStateStore, redis_client: redis.Redis
) -> None:
    redis_client.hset(KEYS.budget_day("camp", PERIOD.day), "o:a:n", 3)
    redis_client.hset(KEYS.budget_total("camp"), mapping={"o:a:n": 3, "o:a:spend": 750})
    before = snapshot(redis_client)
    # checks 1 (3 < 10) and 2 (750 + 250 <= 5000) pass, check 3 (3 of 3 today) fails
    result = await store.reserve(PERIOD, 1, [offer("a", "camp", total=10, spend=5000, daily=3)])
    assert result.awarded == ()
    assert result.refused == (("a", 3, 3),)
    assert snapshot(redis_client) == before


async def test_the_walk_awards_the_next_candidate_and_counts_exactly_it(
    store: RedisStateStore, redis_client: redis.Redis
) -> None:
    redis_client.hset(KEYS.budget_total("camp"), "o:a:n", 10)
    walk = [offer("a", "camp", total=10, spend=10**6, daily=100), offer("b", "camp", total=10, spend=10**6, daily=100)]
    result = await store.reserve(PERIOD, 1, walk)
    assert result.awarded == ("b",)
    assert result.refused == (("a", 1, 10),)
    assert redis_client.hgetall(KEYS.budget_total("camp")) == {
        b"o:a:n": b"10",
        b"o:b:n": b"1",
        b"o:b:spend": b"250",
        b"c:camp:n": b"1",
    }
    day, hour = KEYS.budget_day("camp", PERIOD.day), KEYS.budget_hour("web", PERIOD.hour)
    assert redis_client.hgetall(day) == {b"o:b:n": b"1"}
    assert redis_client.hgetall(hour) == {b"ch:web:n": b"1"}
    assert redis_client.ttl(day) > 0 and redis_client.ttl(hour) > 0
    assert redis_client.ttl(KEYS.budget_total("camp")) == -1


async def test_two_offers_of_one_call_add_up_on_a_shared_counter(
    store: RedisStateStore, redis_client: redis.Redis
) -> None:
    shared = Check(TOTAL, "c:camp:n", 1, 1, "campaign total")
    walk = [Reservation("a", (shared,), "camp"), Reservation("b", (shared,), "camp"), Reservation("free", ())]
    result = await store.reserve(PERIOD, 2, walk)
    assert result.awarded == ("a", "free")
    assert result.refused == (("b", 1, 1),)
    assert redis_client.hget(KEYS.budget_total("camp"), "c:camp:n") == b"1"


async def test_release_gives_back_exactly_what_was_reserved(store: RedisStateStore, redis_client: redis.Redis) -> None:
    redis_client.hset(KEYS.budget_total("camp"), "c:camp:n", 4)
    walk = [offer("a", "camp", total=10, spend=10**6, daily=100)]
    await store.reserve(PERIOD, 1, walk)
    await store.release(PERIOD, walk)
    # counters given back to 0 are removed: only what was there before is left
    assert redis_client.hgetall(KEYS.budget_total("camp")) == {b"c:camp:n": b"4"}
    assert redis_client.exists(KEYS.budget_day("camp", PERIOD.day), KEYS.budget_hour("web", PERIOD.hour)) == 0


# -- the walk split over slots (server.state.budget_walk) ---------------------------------------
def capped(offer_id: str, campaign: str, *, total: int, capacity: int = 100) -> Reservation:
    """An offer with a campaign total and the web channel's hourly capacity."""
    checks = (Check(TOTAL, f"c:{campaign}:n", total, 1, f"campaign {campaign} total"),)
    return Reservation(offer_id, (*checks, Check(HOUR, "ch:web:n", capacity, 1, "web capacity")), campaign, "web")


async def test_the_walk_moves_on_to_the_next_campaigns_slot_and_counts_only_there(
    store: RedisStateStore, redis_client: redis.Redis
) -> None:
    redis_client.hset(KEYS.budget_total("spent"), "c:spent:n", 2)
    walk = [capped("a", "spent", total=2), capped("b", "spent", total=2), capped("c", "open", total=5)]
    result = await store.reserve(PERIOD, 1, walk)
    assert result.awarded == ("c",)
    assert result.refused == (("a", 1, 2), ("b", 1, 2))
    assert redis_client.hgetall(KEYS.budget_total("spent")) == {b"c:spent:n": b"2"}
    assert redis_client.hgetall(KEYS.budget_total("open")) == {b"c:open:n": b"1"}
    assert redis_client.hgetall(KEYS.budget_hour("web", PERIOD.hour)) == {b"ch:web:n": b"1"}


async def test_awards_beyond_the_channels_room_are_given_back_and_refused_for_the_channel(
    store: RedisStateStore, redis_client: redis.Redis
) -> None:
    redis_client.hset(KEYS.budget_hour("web", PERIOD.hour), "ch:web:n", 8)
    walk = [capped(o, "camp", total=10, capacity=9) for o in ("a", "b", "c")] + [capped("d", "other", total=10)]
    result = await store.reserve(PERIOD, 3, walk)
    # one unit of room: "a" is awarded; "b" and "c" were reserved with it and are given back
    assert result.awarded == ("a",)
    assert sorted(result.refused) == [("b", 2, 9), ("c", 2, 9), ("d", 2, 9)]
    assert redis_client.hgetall(KEYS.budget_total("camp")) == {b"c:camp:n": b"1"}
    assert redis_client.exists(KEYS.budget_total("other")) == 0
    assert redis_client.hgetall(KEYS.budget_hour("web", PERIOD.hour)) == {b"ch:web:n": b"9"}


async def test_a_walk_the_full_channel_refuses_leaves_every_counter_as_it_was(
    store: RedisStateStore, redis_client: redis.Redis
) -> None:
    redis_client.hset(KEYS.budget_hour("web", PERIOD.hour), "ch:web:n", 9)
    redis_client.hset(KEYS.budget_total("camp"), "c:camp:n", 1)
    before = snapshot(redis_client)
    result = await store.reserve(PERIOD, 1, [capped("a", "camp", total=10, capacity=9)])
    assert (result.awarded, result.refused) == ((), (("a", 2, 9),))
    assert snapshot(redis_client) == before


async def commit(
    store: RedisStateStore, picks: list[Pick], *, cap: int | None = None, request_id: str = "", may_retry: bool = False
) -> Committed:
    return await store.commit(
        customer_id="c1",
        channel="web",
        decision_id=f"d{len(picks)}{request_id}",
        request_id=request_id,
        now=1000.0,
        window_seconds=100.0,
        channel_cap=cap,
        picks=picks,
        may_retry=may_retry,
        decision_ttl=60,
        request_ttl=60,
        history_ttl=60,
        request_fingerprint="fp" if request_id else "",
    )


async def test_commit_refusing_on_its_third_check_records_no_contact(
    store: RedisStateStore, redis_client: redis.Redis
) -> None:
    redis_client.hset(KEYS.contacts("c1"), mapping={"a:o:x": 0, "a:c:camp": 2})
    before = {k: redis_client.dump(k) for k in (KEYS.contacts("c1"), KEYS.channel_contacts("c1", "web"))}
    # channel cap (check 1) has room, the offer cap (2) too, the campaign cap of 2 (3) is used up
    result = await commit(store, [Pick("x", "camp", 1, 2, 0.1, 0.5)], cap=5)
    assert (result.status, result.awarded, result.refused) == (COMMITTED, (), (("x", CAMPAIGN_CAP),))
    assert {k: redis_client.dump(k) for k in before} == before


async def test_commit_counts_per_customer_caps_and_the_channel_cap(
    store: RedisStateStore, redis_client: redis.Redis
) -> None:
    result = await commit(
        store,
        [Pick("x", "camp", 1, -1, 0.1, 0.5), Pick("y", "camp", -1, -1, 0.1, 0.5), Pick("z", "other", -1, -1, 0.1, 0.5)],
        cap=2,
    )
    assert result.awarded == ("x", "y")
    assert result.refused == (("z", CHANNEL_CAP),)
    assert redis_client.hgetall(KEYS.contacts("c1")) == {b"a:o:x": b"1", b"a:c:camp": b"1"}
    again = await commit(store, [Pick("x", "camp", 1, -1, 0.1, 0.5)], request_id="r1")
    assert again.refused == (("x", OFFER_CAP),)
    repeat = await commit(store, [Pick("y", "camp", -1, -1, 0.1, 0.5)], request_id="r1")
    assert (repeat.status, repeat.decision_id) == (REPLAY, "d1r1")


async def test_commit_refused_by_a_customer_cap_writes_nothing_when_a_retry_may_follow(
    store: RedisStateStore, redis_client: redis.Redis
) -> None:
    redis_client.hset(KEYS.contacts("c1"), "a:o:x", 1)
    before = snapshot(redis_client)
    result = await commit(store, [Pick("x", "camp", 1, -1, 0.1, 0.5)], request_id="r9", may_retry=True)
    assert (result.status, result.awarded, result.refused) == (RETRY, (), (("x", OFFER_CAP),))
    assert snapshot(redis_client) == before  # no decision key, no request key: the retry owns them
    result = await commit(store, [Pick("y", "camp", -1, -1, 0.1, 0.5)], request_id="r9", may_retry=False)
    assert (result.status, result.awarded) == (COMMITTED, ("y",))


def test_every_script_call_stays_in_one_cluster_slot() -> None:
    budget = {key_slot(k.encode()) for k in (KEYS.budget_total("camp"), KEYS.budget_day("camp", "2027-01-01"))}
    hours = {key_slot(KEYS.budget_hour("web", h).encode()) for h in ("2027-01-01T00", "2027-01-01T01")}
    # campaigns spread over the slots: 20 campaigns land on 20 different slots
    spread = {key_slot(KEYS.budget_total(f"c{i}").encode()) for i in range(20)}
    assert len(hours) == 1 and len(spread) == 20
    customer = {
        key_slot(k.encode())
        for k in (
            KEYS.features("c1"),
            KEYS.contacts("c1"),
            KEYS.channel_contacts("c1", "web"),
            KEYS.request("c1", "r"),
            KEYS.decision("c1", "d"),
            KEYS.outcome_event("c1", "e"),
        )
    }
    published = {key_slot(k.encode()) for k in (KEYS.catalog_current, KEYS.catalog(3), KEYS.catalog_seq)}
    assert len(budget) == len(customer) == len(published) == 1
