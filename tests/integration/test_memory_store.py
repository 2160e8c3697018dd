"""InMemoryStateStore keeps the Lua scripts' semantics: one sequence of operations, run on
RedisStateStore (real redis-server) and on InMemoryStateStore, gives the same answers."""

from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncIterator, Callable

import pytest
import redis
import redis.asyncio as aioredis

from server.catalog.budgets import DAY, TOTAL, UNLIMITED, Check, Period, Reservation
from server.features.schema import encode_vector
from server.state.conversions import ConversionRecord, decode_conversion_record
from server.state.keys import Keys
from server.state.memory_store import InMemoryStateStore
from server.state.redis_store import RedisStateStore
from server.state.store import (
    CONFLICT,
    DUPLICATE,
    FORBIDDEN,
    RECORDED,
    REPLAY,
    TOO_LARGE,
    UNKNOWN_DECISION,
    Committed,
    CustomerState,
    Pick,
    Recorded,
    Reporter,
    StateStore,
)
from tests.unit.catalog_fixtures import SCHEMA

PERIOD = Period(day="2027-01-15", hour="2027-01-15T10", day_fraction=10 / 24)
KEYS = Keys()
NOW = 1_800_000_000.0
DAY_S = 86400.0
OPEN = Reporter("", False, 0.0, math.inf)  # a server without authentication, no value, no bound


def limited(offer_id: str, *, total: int, daily: int) -> Reservation:
    return Reservation(
        offer_id,
        (
            Check(TOTAL, f"o:{offer_id}:n", total, 1, "offer total"),
            Check(TOTAL, "c:shared:n", 3, 1, "campaign total"),
            Check(DAY, f"o:{offer_id}:n", daily, 1, "offer today"),
            Check(TOTAL, f"o:{offer_id}:spend", UNLIMITED, 250, "offer spend"),
        ),
        "shared",
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
        "request_fingerprint": "fp",
    }
    args.update(kw)
    return await store.commit(**args)  # type: ignore[arg-type]


async def outcome(
    store: StateStore, decision_id: str, offer_id: str, what: str, event_id: str, reporter: Reporter = OPEN
) -> object:
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
        fingerprint=f"{decision_id}|{offer_id}|{what}",
        reporter=reporter,
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
    # d5 was made by alice, with a bound of 5 on c; d6 awards nothing, so it keeps no decision key
    out.append(await commit(store, "d5", [Pick("c", "camp", -1, -1, 0.25, 0.5, 5.0)], caller="alice", channel="sms"))
    out.append(await commit(store, "d6", [], caller="alice", channel="sms"))
    for args2 in [
        ("d5", "c", "accepted", "e7", Reporter("bob", False, 1.0, 100.0)),  # another caller's decision
        ("d5", "c", "accepted", "e7", Reporter("alice", False, 5.5, 100.0)),  # above the kept bound
        ("d5", "c", "accepted", "e7", Reporter("alice", False, 5.0, 1.0)),  # the kept bound, not the fallback
        ("d5", "c", "converted", "e8", Reporter("bob", True, 0.0, 100.0)),  # an admin may
        ("d4", "c", "converted", "e9", Reporter("", False, 20.0, 10.0)),  # kept bound: none (inf)
        ("d6", "c", "accepted", "e10", Reporter("alice", False, 1.0, 100.0)),  # unknown: nothing awarded
    ]:
        out.append(await outcome(store, *args2[:4], reporter=args2[4]))
    out.append(await store.read("c1", "web", NOW + 20, DAY_S, ""))
    out.append(await store.replay("c1", "d1"))
    return out


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisStateStore]:
    client = aioredis.Redis.from_url(redis_url)
    store = RedisStateStore(client, KEYS)
    yield store
    await store.aclose()
    await client.aclose()


def comparable(results: list[object]) -> list[object]:
    # CustomerState holds a numpy vector (no ==) and Recorded may hold NaN (!= itself)
    out: list[object] = []
    for r in results:
        if isinstance(r, CustomerState):
            vector = None if r.vector is None else r.vector.tolist()
            out.append((vector, r.vector_schema, r.history, r.replay_decision_id, r.replay_fingerprint))
        elif isinstance(r, Recorded):
            out.append((r.status, r.channel, repr(r.propensity), repr(r.prior_sd), r.fingerprint, repr(r.max_value)))
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
    budget_hashes = [KEYS.budget_total("shared"), KEYS.budget_day("shared", PERIOD.day)]
    budget_hashes.append(KEYS.budget_hour("web", PERIOD.hour))
    in_redis = [{k.decode(): v.decode() for k, v in redis_client.hgetall(key).items()} for key in budget_hashes]
    assert list(memory.budget_counters("shared", "web", PERIOD)) == in_redis
    assert in_redis[0] == {"o:a:n": "1", "o:b:n": "1", "o:c:n": "1", "c:shared:n": "3", "o:a:spend": "250",
                           "o:b:spend": "250", "o:c:spend": "250"}  # fmt: skip
    contacts = {k.decode(): v.decode() for k, v in redis_client.hgetall(KEYS.contacts("c1")).items()}
    assert memory.hashes[KEYS.contacts("c1")] == contacts
    nan = repr(math.nan)
    assert expected[-8:-2] == [
        (FORBIDDEN, "", nan, nan, "", nan),
        (TOO_LARGE, "", nan, nan, "", "5.0"),
        (RECORDED, "sms", "0.25", "0.5", "", nan),
        (RECORDED, "sms", "0.25", "0.5", "", nan),
        (RECORDED, "web", "0.25", "0.5", "", nan),
        (UNKNOWN_DECISION, "", nan, nan, "", nan),
    ]
    assert not redis_client.exists(KEYS.decision("c1", "d6"))
    assert KEYS.decision("c1", "d6") not in memory.hashes


async def repeats(store: StateStore, set_old: Callable[[str, str], None]) -> list[object]:
    """Request and event ids repeated with the same or another fingerprint, and keys in the format
    before fingerprints (`set_old(kind, id)` writes one as the old code did)."""
    out: list[object] = [await commit(store, "d1", [pick("a")], request_id="r1", request_fingerprint="fa")]
    out.append(await commit(store, "d2", [pick("b")], request_id="r1", request_fingerprint="fb"))  # d1's
    out.append(await store.read("c1", "web", NOW, DAY_S, "r1"))
    out.append(await store.claim_request("c1", "r2", "d3", "fc", 3600))  # claimed
    out.append(await store.claim_request("c1", "r2", "d4", "fd", 3600))  # d3's
    out.append(await commit(store, "d5", [pick("b")], request_id="r2", request_fingerprint="fe"))  # d3's
    out.append(await store.claim_request("c1", "r1", "d6", "ff", 3600))  # d1's
    set_old("request", "r3")
    out.append(await store.read("c1", "web", NOW, DAY_S, "r3"))
    out.append(await store.claim_request("c1", "r3", "d7", "fg", 3600))
    for args in [
        ("d1", "a", "presented", "e1"),
        ("d1", "a", "declined", "e1"),  # conflict
        ("d1", "a", "presented", "e1"),  # duplicate
        ("d1", "a", "declined", "e2"),
    ]:
        out.append(await outcome(store, *args))
    set_old("event", "e3")
    out.append(await outcome(store, "d1", "a", "accepted", "e3"))  # the old mark matches any
    return out


async def test_the_in_memory_store_keeps_fingerprints_as_the_scripts_do(
    redis_store: RedisStateStore, redis_client: redis.Redis
) -> None:
    def old_in_redis(kind: str, id_: str) -> None:
        digest = hashlib.blake2b(id_.encode(), digest_size=16).hexdigest()
        key = KEYS.request("c1", id_) if kind == "request" else KEYS.outcome_event("c1", digest)
        redis_client.set(key, "d-old" if kind == "request" else "1")

    memory = InMemoryStateStore(KEYS)

    def old_in_memory(kind: str, id_: str) -> None:
        key = KEYS.request("c1", id_) if kind == "request" else KEYS.outcome_event("c1", id_)
        memory.strings[key] = "d-old" if kind == "request" else "1"

    expected = comparable(await repeats(redis_store, old_in_redis))
    assert comparable(await repeats(memory, old_in_memory)) == expected
    nan = repr(float("nan"))
    assert [expected[i] for i in (1, 3, 4, 5, 6, 8, 10, 11)] == [
        Committed(REPLAY, "d1", (), (), "fa"),
        None,
        ("d3", "fc"),
        Committed(REPLAY, "d3", (), (), "fc"),
        ("d1", "fa"),
        ("d-old", ""),
        (CONFLICT, "", nan, nan, "d1|a|presented", nan),
        (DUPLICATE, "", nan, nan, "", nan),
    ]
    assert expected[2][3:] == ("d1", "fa") and expected[7][3:] == ("d-old", "")  # type: ignore[index]
    assert redis_client.get(KEYS.request("c1", "r1")) == b"d1 fa"


async def test_a_decision_kept_before_bounds_and_callers_takes_the_fallback_bound_from_anyone(
    redis_store: RedisStateStore, redis_client: redis.Redis
) -> None:
    """Decision keys the version before wrote: no caller, "propensity,prior sd" only."""
    old = {"offers": "a", "channel": "web", "ts": "1", "p:a": "0.25,0.5"}
    memory = InMemoryStateStore(KEYS)
    memory.hashes[KEYS.decision("c1", "d-old")] = dict(old)
    redis_client.hset(KEYS.decision("c1", "d-old"), mapping=old)
    for store in (redis_store, memory):
        results = [
            await outcome(store, "d-old", "a", "accepted", "e1", Reporter("anyone", False, 10.5, 10.0)),
            await outcome(store, "d-old", "a", "accepted", "e1", Reporter("anyone", False, 10.0, 10.0)),
        ]
        nan = repr(math.nan)
        assert comparable(results) == [(TOO_LARGE, "", nan, nan, "", "10.0"), (RECORDED, "web", "0.25", "0.5", "", nan)]


async def test_the_in_memory_store_records_conversions_as_the_script_does(
    redis_store: RedisStateStore, redis_client: redis.Redis
) -> None:
    first = ConversionRecord("o-1", "c1", "purchase", 20.0, NOW - 60, NOW, "grpc")
    other = ConversionRecord("o-2", "c1", "signup", 0.0, NOW, NOW, "grpc")

    async def steps(store: StateStore) -> list[object]:
        return [
            await store.record_conversion(first, "fp1", 86_400),
            await store.record_conversion(first, "fp1", 86_400),  # duplicate
            await store.record_conversion(first, "fp9", 86_400),  # conflict: nothing written
            await store.record_conversion(other, "fp2", 86_400),
        ]

    memory = InMemoryStateStore(KEYS)
    expected = await steps(redis_store)
    assert expected == [(RECORDED, ""), (DUPLICATE, ""), (CONFLICT, "fp1"), (RECORDED, "")]
    assert await steps(memory) == expected
    logged = [decode_conversion_record(f) for _, f in redis_client.xrange(KEYS.conversion_stream)]
    assert logged == memory.conversions == [first, other]
