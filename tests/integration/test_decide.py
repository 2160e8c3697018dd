"""Decide and ReportOutcome end to end: real Redis, real gRPC server and channel."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.pipeline.control_groups import in_holdout
from server.state.keys import Keys
from server.state.records import record_data
from tests.integration.harness import Harness, publish_text
from tests.redis_cluster import redis_url_on_both, sync_redis
from tests.unit.catalog_fixtures import BASE

# every test here runs on a single Redis and on the 3-master cluster
redis_url = redis_url_on_both

DAY = 86400.0


async def wait_for_catalog(nbo: Harness, version: str) -> None:
    for _ in range(50):
        if nbo.worker.service.live is not None and nbo.worker.service.live.catalog.version == version:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"catalog {version} not live after 5 s")


async def republish(nbo: Harness, redis_url: str, text: str) -> str:
    version = publish_text(redis_url, text)
    await wait_for_catalog(nbo, version)
    return version


async def test_ranked_offers_with_tiers_and_reasons(nbo: Harness) -> None:
    r = await nbo.decide("vip", max_offers=3, events=["cart_abandoned"], context={"cart_value": 50})
    assert r.no_offer_reason == pb.NO_OFFER_REASON_UNSPECIFIED
    assert [o.offer_id for o in r.offers] == ["o_adhoc", "o_trig"]  # web cap of 2 per window
    assert [o.rank for o in r.offers] == [1, 2]
    top = r.offers[0]
    assert top.campaign_id == "adhoc" and top.campaign_type == "ad_hoc"
    assert top.propensity == pytest.approx(0.1)
    assert top.expected_value == pytest.approx(0.1 * 100 - 1)
    assert top.score == pytest.approx(0.1 * 1 * 100 * 1)
    assert top.selection_probability == 1.0
    assert "Target groups: VIP" in top.reasons
    assert "Triggered by: cart_abandoned" in r.offers[1].reasons
    assert r.catalog_version.startswith("1-")
    assert r.model_version == "prior"
    assert nbo.worker.service.ids is not None and nbo.worker.service.ids.open(r.decision_id) == "vip"
    assert "vip" not in r.decision_id.lower()  # opaque: the customer id is sealed in, not shown


async def test_trigger_fires_only_on_its_event_and_eligibility_reads_context(nbo: Harness) -> None:
    r = await nbo.decide("regular", max_offers=2, explain=True)
    assert [o.offer_id for o in r.offers] == ["o_life"]
    why = {s.offer_id: s.reason for s in r.suppressed}
    assert why["o_adhoc"] == "customer not in a target group of the campaign"
    assert why["o_trig"] == "trigger event not present"
    r = await nbo.decide("regular", max_offers=2, events=["cart_abandoned"], context={"cart_value": 10}, explain=True)
    assert {s.offer_id: s.reason for s in r.suppressed}["o_trig"] == "offer eligibility rule not met"


async def test_unknown_customer(nbo: Harness) -> None:
    r = await nbo.decide("nobody")
    assert (list(r.offers), r.no_offer_reason) == ([], pb.UNKNOWN_CUSTOMER)


async def test_opted_out_and_missing_consent_is_denied(nbo: Harness) -> None:
    assert (await nbo.decide("no_web")).no_offer_reason == pb.OPTED_OUT
    assert (await nbo.decide("no_consent_flag")).no_offer_reason == pb.OPTED_OUT
    assert (await nbo.decide("no_web", pb.CALL_CENTRE)).offers[0].offer_id == "o_adhoc"


async def test_no_eligible_offer(nbo: Harness) -> None:
    # the only call-centre offer targets VIPs
    assert (await nbo.decide("regular", pb.CALL_CENTRE)).no_offer_reason == pb.NO_ELIGIBLE_OFFER


async def test_universal_control_group(nbo: Harness, redis_url: str) -> None:
    ids = [f"c{i}" for i in range(200)]
    inside = next(c for c in ids if in_holdout("ctl", c, 0.3))
    outside = next(c for c in ids if not in_holdout("ctl", c, 0.3))
    import tempfile
    from pathlib import Path

    from tests.integration.conftest import CUSTOMERS
    from tests.integration.harness import load_customers

    with tempfile.TemporaryDirectory() as tmp:
        load_customers(redis_url, {inside: CUSTOMERS["vip"], outside: CUSTOMERS["vip"]}, Path(tmp))
    await republish(
        nbo,
        redis_url,
        BASE.replace("min_expected_value: 0.5", "min_expected_value: 0.5\ncontrol_group: {fraction: 0.3, salt: ctl}"),
    )
    assert (await nbo.decide(inside)).no_offer_reason == pb.CONTROL_GROUP
    assert (await nbo.decide(outside)).offers


async def test_campaign_holdout_gives_control_group_when_it_removes_everything(nbo: Harness, redis_url: str) -> None:
    text = BASE.replace("    target: [vip]\n", "    target: [vip]\n    holdout: 0.999999\n")
    await republish(nbo, redis_url, text)
    r = await nbo.decide("vip", pb.CALL_CENTRE, explain=True)
    assert r.no_offer_reason == pb.CONTROL_GROUP
    assert [(s.offer_id, s.reason) for s in r.suppressed] == [("o_adhoc", "customer in the campaign's control group")]


async def test_channel_cap_gives_contact_policy_and_the_window_slides(nbo: Harness) -> None:
    first = await nbo.decide("vip", max_offers=2)
    assert len(first.offers) == 2
    r = await nbo.decide("vip", explain=True)
    assert r.no_offer_reason == pb.CONTACT_POLICY
    assert all("channel limit of 2 offers reached" in s.reason for s in r.suppressed if s.offer_id != "o_trig")
    nbo.clock.now += DAY + 1
    assert (await nbo.decide("vip")).offers


async def test_below_threshold(nbo: Harness, redis_url: str) -> None:
    await republish(nbo, redis_url, BASE.replace("min_expected_value: 0.5", "min_expected_value: 50"))
    r = await nbo.decide("vip", explain=True)
    assert r.no_offer_reason == pb.BELOW_THRESHOLD
    assert {s.offer_id: s.reason for s in r.suppressed}["o_adhoc"] == "expected value below the catalog minimum"


async def test_budget_exhausted_falls_to_the_next_offer_then_to_nothing(nbo: Harness, redis_url: str) -> None:
    text = BASE.replace("    cost: 1\n", "    cost: 1\n    budget: {total_awards: 1}\n")
    await republish(nbo, redis_url, text)
    assert (await nbo.decide("vip", pb.CALL_CENTRE)).offers[0].offer_id == "o_adhoc"
    r = await nbo.decide("vip2", pb.CALL_CENTRE, explain=True)
    assert r.no_offer_reason == pb.BUDGET_EXHAUSTED
    assert [(s.offer_id, s.reason) for s in r.suppressed] == [
        ("o_adhoc", "budget exhausted: offer o_adhoc total awards: 1 of 1 used")
    ]
    # on the web the next offer takes its place in the same call
    r = await nbo.decide("vip2", pb.WEB)
    assert [o.offer_id for o in r.offers] == ["o_life"]


async def test_request_id_replays_the_decision_and_consumes_nothing_twice(nbo: Harness, redis_url: str) -> None:
    a = await nbo.decide("vip", request_id="req-1")
    b = await nbo.decide("vip", request_id="req-1")
    assert b.decision_id == a.decision_id
    assert [o.offer_id for o in b.offers] == [o.offer_id for o in a.offers]
    assert (a.replayed, b.replayed) == (False, True)
    client = sync_redis(redis_url)
    assert client.zcard(Keys().channel_contacts("vip", "web")) == 1
    client.close()
    # the cap is 2: one more real decision still fits
    assert (await nbo.decide("vip", request_id="req-2")).offers
    assert (await nbo.decide("vip", request_id="req-3")).no_offer_reason == pb.CONTACT_POLICY
    # a replay of a no-offer decision also returns the same decision
    again = await nbo.decide("vip", request_id="req-3")
    assert (again.no_offer_reason, again.replayed) == (pb.CONTACT_POLICY, True)


async def test_request_id_replays_decisions_that_never_reached_the_award(nbo: Harness) -> None:
    first = await nbo.decide("nobody", request_id="r-unknown")
    await asyncio.sleep(0.1)  # past the log writer's flush, which stores the answer
    again = await nbo.decide("nobody", request_id="r-unknown")
    assert (again.decision_id, again.no_offer_reason, again.replayed) == (first.decision_id, pb.UNKNOWN_CUSTOMER, True)


async def test_concurrent_repeats_of_one_request_id_award_once(nbo: Harness, redis_url: str) -> None:
    results = await asyncio.gather(*(nbo.decide("vip", request_id="same") for _ in range(20)))
    assert len({r.decision_id for r in results}) == 1
    client = sync_redis(redis_url)
    assert client.zcard(Keys().channel_contacts("vip", "web")) == 1
    client.close()


async def test_outcomes_are_idempotent_and_decline_starts_a_cooldown(nbo: Harness) -> None:
    d = await nbo.decide("vip", pb.CALL_CENTRE)
    first = await nbo.report(d.decision_id, "o_adhoc", pb.DECLINED)
    second = await nbo.report(d.decision_id, "o_adhoc", pb.DECLINED)
    assert (first.recorded, first.duplicate) == (True, False)
    assert (second.recorded, second.duplicate) == (False, True)
    r = await nbo.decide("vip", pb.CALL_CENTRE, explain=True)
    assert r.no_offer_reason == pb.CONTACT_POLICY
    assert r.suppressed[0].reason == "contact policy: declined recently; cooldown ends in 30.0 days"
    nbo.clock.now += 30 * DAY + 1
    assert (await nbo.decide("vip", pb.CALL_CENTRE)).offers[0].offer_id == "o_adhoc"


async def test_presented_without_response_suppresses(nbo: Harness) -> None:
    for i in range(3):
        d = await nbo.decide("vip", pb.CALL_CENTRE)
        assert d.offers, f"decision {i} had no offer"
        await nbo.report(d.decision_id, "o_adhoc", pb.PRESENTED)
    r = await nbo.decide("vip", pb.CALL_CENTRE, explain=True)
    assert r.no_offer_reason == pb.CONTACT_POLICY
    assert "presented 3 times without a response" in r.suppressed[0].reason


async def test_an_answer_resets_the_presented_count(nbo: Harness) -> None:
    for outcome in (pb.PRESENTED, pb.PRESENTED, pb.ACCEPTED, pb.PRESENTED, pb.PRESENTED):
        d = await nbo.decide("vip", pb.CALL_CENTRE)
        await nbo.report(d.decision_id, "o_adhoc", outcome)
    assert (await nbo.decide("vip", pb.CALL_CENTRE)).offers


async def test_outcome_errors(nbo: Harness) -> None:
    d = await nbo.decide("vip", pb.CALL_CENTRE)
    cases = [
        (nbo.unknown_decision_id(), "o_adhoc", pb.ACCEPTED, grpc.StatusCode.NOT_FOUND, "decision_id: no decision"),
        ("garbage", "o_adhoc", pb.ACCEPTED, grpc.StatusCode.INVALID_ARGUMENT, "decision_id: not a decision id"),
        (  # the format before ids were sealed
            "01KAAAAAAAAAAAAAAAAAAAAAAA.vip",
            "o_adhoc",
            pb.ACCEPTED,
            grpc.StatusCode.INVALID_ARGUMENT,
            "decision_id: not a decision id",
        ),
        (d.decision_id, "o_life", pb.ACCEPTED, grpc.StatusCode.INVALID_ARGUMENT, "offer_id: offer 'o_life' was not"),
        (d.decision_id, "o_adhoc", pb.OUTCOME_UNSPECIFIED, grpc.StatusCode.INVALID_ARGUMENT, "outcome: must be set"),
        ("", "o_adhoc", pb.ACCEPTED, grpc.StatusCode.INVALID_ARGUMENT, "decision_id: must not be empty"),
    ]
    for decision_id, offer_id, outcome, code, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await nbo.report(decision_id, offer_id, outcome)
        assert info.value.code() == code, decision_id
        assert message in (info.value.details() or ""), info.value.details()


async def test_decisions_and_outcomes_are_logged_as_typed_records(nbo: Harness, redis_url: str) -> None:
    d = await nbo.decide("vip", pb.CALL_CENTRE, context={"cart_value": 3})
    await nbo.report(d.decision_id, "o_adhoc", pb.CONVERTED)
    await nbo.worker.writer.close()
    nbo.worker.writer.start()
    client = sync_redis(redis_url)
    entries = client.xrange(Keys().decision_stream)
    outcomes = client.xrange(Keys().outcome_stream)
    client.close()
    assert len(entries) == 1 and len(outcomes) == 1
    record = record_data(entries[0][1])
    assert record["decision_id"] == d.decision_id
    assert record["chosen"] == ["o_adhoc"]
    assert record["context"] == {"cart_value": 3.0}
    assert record["features"] == [0.0, 40.0, pytest.approx(0.1), 1.0, 1.0]
    assert record["candidates"]["offer_id"] == ["o_adhoc"]
    assert record["candidates"]["selection_probability"] == [1.0]
    assert record["candidates"]["status"] == ["chosen"]
    assert record["candidates"]["propensity"] == [pytest.approx(0.1)]
    assert record["catalog_version"] == d.catalog_version
    outcome = json.loads(outcomes[0][1][b"r"])
    assert (outcome["decision_id"], outcome["outcome"]) == (d.decision_id, "converted")
