"""Reused ids over real gRPC and a real redis-server: a request_id or event_id reused for a
different call is ALREADY_EXISTS naming the field, changes nothing, and leaves the first call's
answer as it was; a decision that awards nothing is idempotent at once, also under a race."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis

from server.domain import Channel, DecideRequest
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.pipeline.idempotency import request_fingerprint
from server.state.keys import Keys
from server.state.records import record_data
from tests.integration.harness import Harness

KEYS = Keys()


async def logged(redis_url: str, n: int, stream: str = KEYS.decision_stream) -> list[dict[str, object]]:
    """The log's records once `n` are in (the server's writer, on this event loop, flushes every
    10 ms in the harness)."""
    client = redis.Redis.from_url(redis_url)
    try:
        for _ in range(500):
            if client.xlen(stream) >= n:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # and no more arrive
        return [record_data(fields) for _, fields in client.xrange(stream)]
    finally:
        client.close()


async def test_a_request_id_reused_for_another_request_is_already_exists(nbo: Harness, redis_url: str) -> None:
    first = await nbo.decide("vip", pb.WEB, max_offers=1, request_id="r-1")
    assert [o.offer_id for o in first.offers] == ["o_adhoc"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await nbo.decide("vip", pb.CALL_CENTRE, max_offers=3, request_id="r-1")
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert info.value.details() == (
        "request_id: 'r-1' was already used for a different request (channel, max_offers differ); use a new request_id"
    )
    again = await nbo.decide("vip", pb.WEB, max_offers=1, request_id="r-1")
    assert (again.decision_id, again.replayed, list(again.offers)) == (first.decision_id, True, list(first.offers))
    client = redis.Redis.from_url(redis_url)
    fp = request_fingerprint(DecideRequest("vip", Channel.WEB, max_offers=1, request_id="r-1"), 1)
    assert client.get(KEYS.request("vip", "r-1")) == f"{first.decision_id} {fp}".encode()
    assert client.zcard(KEYS.channel_contacts("vip", "web")) == 1
    assert client.zcard(KEYS.channel_contacts("vip", "call_centre")) == 0
    client.close()
    assert [r["decision_id"] for r in await logged(redis_url, 1)] == [first.decision_id]


async def test_an_event_id_reused_for_another_outcome_is_already_exists(nbo: Harness, redis_url: str) -> None:
    d = await nbo.decide("vip", pb.CALL_CENTRE)
    assert (await nbo.report(d.decision_id, "o_adhoc", pb.PRESENTED, event_id="ev-1")).recorded
    client = redis.Redis.from_url(redis_url)
    contacts = client.hgetall(KEYS.contacts("vip"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await nbo.report(d.decision_id, "o_adhoc", pb.DECLINED, event_id="ev-1")
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert info.value.details() == (
        "event_id: 'ev-1' was already used for a different outcome (outcome differs); use a new event_id"
    )
    assert client.hgetall(KEYS.contacts("vip")) == contacts  # no decline recorded: no cooldown
    client.close()
    assert (await nbo.report(d.decision_id, "o_adhoc", pb.PRESENTED, event_id="ev-1")).duplicate
    assert (await nbo.report(d.decision_id, "o_adhoc", pb.DECLINED, event_id="ev-2")).recorded
    outcomes = await logged(redis_url, 2, KEYS.outcome_stream)
    assert [(o["event_id"], o["outcome"]) for o in outcomes] == [("ev-1", "presented"), ("ev-2", "declined")]


async def test_keys_written_before_fingerprints_match_any_repeat(nbo: Harness, redis_url: str) -> None:
    d = await nbo.decide("vip", pb.CALL_CENTRE, request_id="r-old")
    client = redis.Redis.from_url(redis_url)
    client.set(KEYS.request("vip", "r-old"), d.decision_id)  # as stored before this change
    again = await nbo.decide("vip", pb.WEB, max_offers=2, request_id="r-old")
    assert (again.decision_id, again.replayed) == (d.decision_id, True)
    assert (await nbo.report(d.decision_id, "o_adhoc", pb.PRESENTED, event_id="ev-old")).recorded
    [event_key] = client.keys(KEYS.outcome_event("vip", "*"))
    client.set(event_key, "1")
    client.close()
    assert (await nbo.report(d.decision_id, "o_adhoc", pb.DECLINED, event_id="ev-old")).duplicate


@pytest.mark.parametrize(
    ("customer", "reason"),
    [
        pytest.param("nobody", pb.UNKNOWN_CUSTOMER, id="unknown-customer"),
        pytest.param("no_web", pb.OPTED_OUT, id="known-opted-out"),
        pytest.param("vip", pb.CONTACT_POLICY, id="known-capped"),
    ],
)
async def test_concurrent_repeats_of_a_no_offer_decision_get_one_decision(
    nbo: Harness, redis_url: str, customer: str, reason: int
) -> None:
    if reason == pb.CONTACT_POLICY:  # the web cap is 2 per window: use it up first
        for _ in range(2):
            assert (await nbo.decide(customer, pb.WEB)).offers
    before = len(await logged(redis_url, 2 if reason == pb.CONTACT_POLICY else 0))
    answers = await asyncio.gather(*(nbo.decide(customer, pb.WEB, request_id="same") for _ in range(20)))
    assert {(a.decision_id, a.no_offer_reason) for a in answers} == {(answers[0].decision_id, reason)}
    assert sum(not a.replayed for a in answers) == 1
    records = (await logged(redis_url, before + 1))[before:]
    assert [r["decision_id"] for r in records] == [answers[0].decision_id]
    # and the repeat with another request is refused, also for a decision that awarded nothing
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await nbo.decide(customer, pb.CALL_CENTRE, request_id="same")
    assert (info.value.code(), info.value.details().split(":")[0]) == (grpc.StatusCode.ALREADY_EXISTS, "request_id")
