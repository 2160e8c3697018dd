"""Outcomes that cannot be forged, and no-offer calls that leave no long-lived state (issue 11):
real Redis, real worker, real gRPC channel."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import redis

from server.api.status import Code, status_of
from server.domain import Channel, DecideRequest, ForbiddenError, Outcome, OutcomeReport
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.ids import DecisionIds
from server.state.keys import Keys
from tests.integration.conftest import CUSTOMERS
from tests.integration.harness import Clock, Harness, load_customers, publish_text
from tests.integration.test_decide import republish
from tests.unit.catalog_fixtures import BASE

KEYS = Keys()
DAY = 86_400


def contacts(client: redis.Redis, customer: str) -> dict[bytes, bytes]:
    return client.hgetall(KEYS.contacts(customer))  # type: ignore[return-value]


async def test_an_outcome_from_another_caller_is_refused_and_changes_nothing(
    nbo: Harness, redis_client: redis.Redis
) -> None:
    service = nbo.worker.service
    d = await service.decide(DecideRequest("vip", Channel.CALL_CENTRE), caller="alice")
    assert [o.offer_id for o in d.offers] == ["o_adhoc"]
    declined = OutcomeReport(d.decision_id, "o_adhoc", Outcome.DECLINED)
    for who in ("bob", ""):  # another client, or a call without credentials
        with pytest.raises(ForbiddenError) as info:
            await service.report_outcome(declined, caller=who)
        assert status_of(info.value).code is Code.PERMISSION_DENIED
        assert (
            str(info.value) == "decision_id: outcomes of this decision may be reported only by the caller that made it"
        )
    assert contacts(redis_client, "vip") == {}  # no cooldown started
    assert (await service.decide(DecideRequest("vip", Channel.CALL_CENTRE), caller="alice")).offers
    # the caller that made it may; so may an admin
    assert (await service.report_outcome(declined, caller="alice")).recorded
    accepted = OutcomeReport(d.decision_id, "o_adhoc", Outcome.ACCEPTED, value=50.0)
    assert (await service.report_outcome(accepted, caller="bob", admin=True)).recorded
    assert (
        nbo.worker.metrics.registry.get_sample_value(
            "nbo_outcomes_total", {"outcome": "declined", "result": "forbidden"}
        )
        == 2.0
    )


async def test_a_tampered_or_made_up_decision_id_is_unknown(nbo: Harness, redis_client: redis.Redis) -> None:
    d = await nbo.decide("vip", pb.CALL_CENTRE)
    assert "vip" not in d.decision_id.lower()
    last = d.decision_id[-1]
    tampered = d.decision_id[:-1] + ("0" if last != "0" else "1")
    for decision_id in (tampered, nbo.unknown_decision_id("vip2"), nbo.unknown_decision_id("vip")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await nbo.report(decision_id, "o_adhoc", pb.DECLINED)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert f"no decision {decision_id!r} (unknown or expired)" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await nbo.report(d.decision_id.replace(d.decision_id[30], "U"), "o_adhoc", pb.DECLINED)  # not base32
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert contacts(redis_client, "vip") == {} and contacts(redis_client, "vip2") == {}
    assert redis_client.xlen(KEYS.outcome_stream) == 0


async def test_a_value_above_the_offers_bound_is_refused_and_the_bound_is_the_one_at_decision_time(
    nbo: Harness, redis_url: str, redis_client: redis.Redis
) -> None:
    d = await nbo.decide("vip", pb.CALL_CENTRE)
    # o_adhoc is worth 100 and sets no max_value: 10 x 100
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await report(nbo, d.decision_id, "o_adhoc", pb.ACCEPTED, 1e9)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "value: must be at most 1000 for offer 'o_adhoc', got 1e+09"
    assert redis_client.xlen(KEYS.outcome_stream) == 0
    # a catalog published later with a tighter bound does not move this decision's
    await republish(nbo, redis_url, BASE.replace("    value: 100\n", "    value: 100\n    max_value: 150\n"))
    assert (await report(nbo, d.decision_id, "o_adhoc", pb.ACCEPTED, 1000.0)).recorded
    later = await nbo.decide("vip2", pb.CALL_CENTRE)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await report(nbo, later.decision_id, "o_adhoc", pb.CONVERTED, 150.5)
    assert info.value.details() == "value: must be at most 150 for offer 'o_adhoc', got 150.5"
    assert (await report(nbo, later.decision_id, "o_adhoc", pb.CONVERTED, 150.0)).recorded


async def report(nbo: Harness, decision_id: str, offer_id: str, outcome: int, value: float) -> pb.ReportOutcomeResponse:
    request = pb.ReportOutcomeRequest(decision_id=decision_id, offer_id=offer_id, outcome=outcome, value=value)
    response: pb.ReportOutcomeResponse = await nbo.stub.ReportOutcome(request, timeout=5)
    return response


async def test_a_flood_of_no_offer_calls_leaves_nothing_that_lives_past_the_request_id(
    nbo: Harness, redis_client: redis.Redis
) -> None:
    before = set(redis_client.keys("*"))
    calls = [nbo.decide(f"nobody{i}", request_id=f"req-{i}") for i in range(1000)]
    calls += [nbo.decide(f"bare{i}") for i in range(1000)]  # no request id: nothing to replay
    for start in range(0, len(calls), 100):
        answers = await asyncio.gather(*calls[start : start + 100])
        assert {a.no_offer_reason for a in answers} == {pb.UNKNOWN_CUSTOMER}
    await nbo.worker.writer.close()  # the answers kept for replay are written by the log writer
    nbo.worker.writer.start()
    added = [k.decode() for k in set(redis_client.keys("*")) - before]
    kinds: dict[str, int] = {}
    for key in added:
        kind = key.split("}:")[1].split(":")[0] if "{c:" in key else key
        kinds[kind] = kinds.get(kind, 0) + 1
        ttl = redis_client.ttl(key)
        assert key == KEYS.decision_stream or 0 < ttl <= nbo.settings.request_id_ttl_seconds, (key, ttl)
    # per call with a request id: the request key and the answer it replays, both for a day
    assert kinds == {"req": 1000, "dec": 1000, KEYS.decision_stream: 1}
    assert not any("bare" in k for k in added)
    assert redis_client.xlen(KEYS.decision_stream) == 2000  # every answer is logged
    # the answers still replay
    again = await nbo.decide("nobody7", request_id="req-7")
    assert (again.no_offer_reason, again.replayed) == (pb.UNKNOWN_CUSTOMER, True)


async def test_an_awarded_decision_keeps_its_outcome_state_for_the_reward_window(
    nbo: Harness, redis_client: redis.Redis
) -> None:
    d = await nbo.decide("vip", pb.CALL_CENTRE, request_id="r-1")
    nothing = await nbo.decide("regular", pb.CALL_CENTRE, request_id="r-2")  # not in the ad hoc target
    assert d.offers and not nothing.offers
    await nbo.worker.writer.close()
    nbo.worker.writer.start()
    decision_ttl = redis_client.ttl(KEYS.decision("vip", d.decision_id))
    assert nbo.settings.decision_ttl_seconds - 5 <= decision_ttl <= nbo.settings.decision_ttl_seconds
    assert redis_client.hget(KEYS.decision("vip", d.decision_id), "caller") == b""
    kept = redis_client.ttl(KEYS.decision("regular", nothing.decision_id))
    assert 0 < kept <= nbo.settings.request_id_ttl_seconds
    assert redis_client.hkeys(KEYS.decision("regular", nothing.decision_id)) == [b"response"]


async def test_replicas_share_one_secret_and_a_new_one_makes_old_ids_unknown(
    redis_url: str, tmp_path: Path, redis_client: redis.Redis
) -> None:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    publish_text(redis_url, BASE)
    a, b = Harness(redis_url, Clock()), Harness(redis_url, Clock())
    await a.start()
    await b.start()
    try:
        d = await a.decide("vip", pb.CALL_CENTRE)
        assert (await b.report(d.decision_id, "o_adhoc", pb.PRESENTED)).recorded  # made by a, opened by b
        secret = redis_client.get(KEYS.decision_id_secret)
        assert secret is not None and len(secret) == 64
        rotated = "a rotated secret, 16+ characters"
        redis_client.set(KEYS.decision_id_secret, rotated)
        expected = DecisionIds(rotated.encode()).seal("01KAAAAAAAAAAAAAAAAAAAAAAA", "vip")
        for _ in range(50):  # each worker re-reads it every poll (0.1 s here)
            if a.unknown_decision_id() == b.unknown_decision_id() == expected:
                break
            await asyncio.sleep(0.1)
        assert a.unknown_decision_id() == b.unknown_decision_id() == expected
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await b.report(d.decision_id, "o_adhoc", pb.ACCEPTED)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        fresh = await a.decide("vip2", pb.CALL_CENTRE)
        assert (await b.report(fresh.decision_id, "o_adhoc", pb.PRESENTED)).recorded
    finally:
        await a.stop()
        await b.stop()


async def test_a_configured_secret_is_used_instead_of_the_one_in_redis(
    redis_url: str, tmp_path: Path, redis_client: redis.Redis
) -> None:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    publish_text(redis_url, BASE)
    configured = Harness(redis_url, Clock(), decision_id_secret="configured secret for all replicas")
    await configured.start()
    try:
        d = await configured.decide("vip", pb.CALL_CENTRE)
        assert d.offers and not d.degraded
        assert redis_client.get(KEYS.decision_id_secret) is None  # nothing made, nothing read
        assert (await configured.report(d.decision_id, "o_adhoc", pb.PRESENTED)).recorded
    finally:
        await configured.stop()
