"""InMemoryStateStore keeps the Lua scripts' semantics: one sequence of operations, run on
RedisStateStore (real redis-server) and on InMemoryStateStore, gives the same answers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis

from server.catalog.budgets import DAY, TOTAL, UNLIMITED, Check, Period, Reservation
from server.features.schema import encode_vector
from server.state.keys import Keys
from server.state.memory_store import InMemoryStateStore
from server.state.redis_store import RedisStateStore
from server.state.store import CustomerState, Pick, Recorded, StateStore
from tests.unit.catalog_fixtures import SCHEMA

PERIOD = Period(day="2027-01-15", hour="2027-01-15T10", day_fraction=10 / 24)
KEYS = Keys()
NOW = 1_800_000_000.0
DAY_S = 86400.0


def limited(offer_id: str, *, total: int, daily: int) -> Reservation:
    return Reservation(
        offer_id,
        (
            Check(TOTAL, f"o:{offer_id}:n", total, 1, "offer total"),
            Check(TOTAL, "c:shared:n", 3, 1, "campaign total"),
            Check(DAY, f"o:{offer_id}:n", daily, 1, "offer today"),
            Check(TOTAL, f"o:{offer_id}:spend", UNLIMITED, 250, "offer spend"),
        ),
    )


def pick(offer_id: str, *, offer_cap: int = -1, campaign_cap: int = -1) -> Pick:
    return Pick(offer_id, "camp", offer_cap, campaign_cap, 0.25, 0.5)


async def commit(store: StateStore, decision_id: str, picks: list[Pick], **kw: object) -> object:
    args: dict[str, object] = {
        "customer_id": "c1",
        "channel": "web",
        "decision_id": decision_id,
        "request_id": "",
        "now": NOW,
        "window_seconds": DAY_S,
        "channel_cap": 3,
        "picks": picks,
        "may_retry": False,
        "decision_ttl": 3600,
        "request_ttl": 3600,
        "history_ttl": 3600,
    }
    args.update(kw)
    return await store.commit(**args)  # type: ignore[arg-type]


async def outcome(store: StateStore, decision_id: str, offer_id: str, what: str, event_id: str) -> object:
    return await store.record_outcome(
        customer_id="c1",
        decision_id=decision_id,
        offer_id=offer_id,
        outcome=what,
        event_id=event_id,
        now=NOW + 10,
        event_ttl=3600,
        max_presented=2,
        suppression_seconds=DAY_S,
        history_ttl=3600,
    )


async def scenario(store: StateStore) -> list[object]:
    """Every operation of the protocol, including refusals, replays, retries and duplicates."""
    out: list[object] = [await store.read("c1", "web", NOW, DAY_S, "")]
    walk = [limited("a", total=1, daily=5), limited("b", total=5, daily=1), limited("c", total=5, daily=5)]
    out.append(await store.reserve(PERIOD, 2, walk))  # a, b
    out.append(await store.reserve(PERIOD, 2, walk))  # a and b refused; c; the shared cap of 3 reached
    await store.release(PERIOD, walk[:1])
    out.append(await store.reserve(PERIOD, 1, walk))  # a again (released), shared 3 of 3
    out.append(await commit(store, "d1", [pick("a", offer_cap=1), pick("b")], request_id="r1"))
    out.append(await commit(store, "d2", [pick("c")], request_id="r1"))  # replay of d1
    out.append(await commit(store, "d3", [pick("a", offer_cap=1)], may_retry=True))  # retry: cap used
    out.append(await commit(store, "d4", [pick("a", offer_cap=1), pick("c"), pick("e")]))  # cap, then channel
    out.append(await store.read("c1", "web", NOW + 1, DAY_S, "r1"))
    out.append(await store.read("c1", "web", NOW + DAY_S + 1, DAY_S, "r2"))  # the window has passed
    for args in [
        ("d1", "a", "presented", "e1"),
        ("d1", "a", "presented", "e1"),  # duplicate
        ("d1", "a", "presented", "e2"),  # second presentation: suppressed
        ("d1", "b", "declined", "e3"),
        ("d4", "c", "accepted", "e4"),
        ("d1", "c", "accepted", "e5"),  # c is not in d1
        ("nope", "a", "accepted", "e6"),  # unknown decision
    ]:
        out.append(await outcome(store, *args))
    out.append(await store.read("c1", "web", NOW + 20, DAY_S, ""))
    out.append(await store.replay("c1", "d1"))
    return out


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisStateStore]:
    client = aioredis.Redis.from_url(redis_url)
    yield RedisStateStore(client, KEYS)
    await client.aclose()


def comparable(results: list[object]) -> list[object]:
    # CustomerState holds a numpy vector (no ==) and Recorded may hold NaN (!= itself)
    out: list[object] = []
    for r in results:
        if isinstance(r, CustomerState):
            vector = None if r.vector is None else r.vector.tolist()
            out.append((vector, r.vector_schema, r.history, r.replay_decision_id))
        elif isinstance(r, Recorded):
            out.append((r.status, r.channel, repr(r.propensity), repr(r.prior_sd)))
        else:
            out.append(r)
    return out


async def test_the_in_memory_store_answers_as_the_scripts_do(
    redis_store: RedisStateStore, redis_client: redis.Redis
) -> None:
    vector = [0.0, 12.0, 0.5, 1.0, 1.0]
    redis_client.set(KEYS.features("c1"), encode_vector(SCHEMA.version, vector))
    memory = InMemoryStateStore(KEYS)
    memory.put_features("c1", vector, SCHEMA.version)

    expected = comparable(await scenario(redis_store))
    assert comparable(await scenario(memory)) == expected
    budget_hashes = [KEYS.budget_total, KEYS.budget_day(PERIOD.day), KEYS.budget_hour(PERIOD.hour)]
    in_redis = [{k.decode(): v.decode() for k, v in redis_client.hgetall(key).items()} for key in budget_hashes]
    assert list(memory.budget_counters(PERIOD)) == in_redis
    assert in_redis[0] == {"o:a:n": "1", "o:b:n": "1", "o:c:n": "1", "c:shared:n": "3", "o:a:spend": "250",
                           "o:b:spend": "250", "o:c:spend": "250"}  # fmt: skip
    contacts = {k.decode(): v.decode() for k, v in redis_client.hgetall(KEYS.contacts("c1")).items()}
    assert memory.hashes[KEYS.contacts("c1")] == contacts
