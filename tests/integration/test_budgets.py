"""Budgets, capacity, pacing and control groups through the real server (gRPC, Redis, scripts)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from server.domain import Channel, DecideRequest
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.pipeline.control_groups import in_holdout
from server.pipeline.delivery import Delivery
from server.state.keys import Keys
from server.state.records import record_data
from tests.integration.harness import Clock, Harness, load_customers, publish_text
from tests.integration.test_decide import republish
from tests.redis_cluster import sync_redis
from tests.unit.catalog_fixtures import BASE

KEYS = Keys()
# 2027-01-15 00:00 UTC: pacing tests walk through this day
MIDNIGHT = datetime(2027, 1, 15, tzinfo=UTC).timestamp()
CUSTOMERS = {
    f"c{i:03d}": {"tier": "A", "tenure_months": 10, "churn_risk": 0.2, "consent_web": 1, "consent_call": 1}
    for i in range(200)
}


def budgeted(budget: str, *, campaign_budget: str = "", extra: str = "") -> str:
    """BASE with a budget on o_adhoc (and optionally on its campaign) and no web cap."""
    text = BASE.replace("  max_per_window: {web: 2}\n", "")
    text = text.replace("    cost: 1\n", f"    cost: 1\n    budget: {budget}\n")
    if campaign_budget:
        text = text.replace("    target: [vip]\n", f"    target: [vip]\n    budget: {campaign_budget}\n")
    return text.replace("campaigns:\n", f"{extra}campaigns:\n")


@pytest.fixture
async def many(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[Harness, Clock]]:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    publish_text(redis_url, BASE)
    clock = Clock(MIDNIGHT)
    harness = Harness(redis_url, clock)
    await harness.start()
    yield harness, clock
    await harness.stop()


async def stream_records(client: redis.Redis, n: int) -> list[dict[str, object]]:
    for _ in range(200):
        if client.xlen(KEYS.decision_stream) >= n:
            break
        await asyncio.sleep(0.02)
    return [record_data(fields) for _, fields in client.xrange(KEYS.decision_stream)]


async def test_paced_daily_budget_tracks_the_even_line_hour_by_hour(
    many: tuple[Harness, Clock], redis_url: str
) -> None:
    nbo, clock = many
    cap, slack = 240, 0.02
    await republish(nbo, redis_url, budgeted(f"{{daily_awards: {cap}, pacing: {{over: day, slack: {slack}}}}}"))
    awarded_by_hour = [0] * 24
    customers = sorted(CUSTOMERS)
    # demand (3 calls every 5 minutes, 36 an hour) is well above the pace (10 an hour)
    for step in range(24 * 12):
        clock.now = MIDNIGHT + step * 300 + 1
        for j in range(3):
            r = await nbo.decide(customers[(3 * step + j) % len(customers)], pb.CALL_CENTRE)
            if r.offers:
                awarded_by_hour[step // 12] += 1
    cumulative = 0
    for hour, n in enumerate(awarded_by_hour):
        cumulative += n
        even = cap * (hour + 1) / 24
        # at the hour's last call the line stood at even - 5/60 h; allowed = floor(line + slack)
        assert even - cap / 24 / 12 - 1 <= cumulative <= even + max(slack * cap, 1), (hour, cumulative)
    assert cumulative == cap  # the whole day's budget is used, and not before the evening
    assert sum(awarded_by_hour[:12]) <= cap / 2 + slack * cap
    client = redis.Redis.from_url(redis_url)
    assert client.hget(KEYS.budget_day("adhoc", "2027-01-15"), "o:o_adhoc:n") == str(cap).encode()
    client.close()


async def test_daily_budget_resets_at_midnight_of_the_catalog_time_zone(
    many: tuple[Harness, Clock], redis_url: str
) -> None:
    nbo, clock = many
    text = budgeted("{daily_awards: 2}").replace("timezone: UTC", "timezone: America/New_York")
    await republish(nbo, redis_url, text)
    clock.now = MIDNIGHT + 4 * 3600  # 23:00 the day before in New York
    got = [bool((await nbo.decide(c, pb.CALL_CENTRE)).offers) for c in ("c000", "c001", "c002")]
    assert got == [True, True, False]
    clock.now = MIDNIGHT + 5 * 3600 + 1  # just past midnight in New York
    assert (await nbo.decide("c003", pb.CALL_CENTRE)).offers
    client = redis.Redis.from_url(redis_url)
    assert client.hget(KEYS.budget_day("adhoc", "2027-01-14"), "o:o_adhoc:n") == b"2"
    assert client.hget(KEYS.budget_day("adhoc", "2027-01-15"), "o:o_adhoc:n") == b"1"
    client.close()


async def test_spend_campaign_and_per_customer_limits(many: tuple[Harness, Clock], redis_url: str) -> None:
    nbo, clock = many
    clock.now = MIDNIGHT + 3600
    # cost 1 = 100 cents: a spend cap of 3.50 allows 3 awards; the campaign allows 1 per customer
    await republish(nbo, redis_url, budgeted("{total_spend: 3.5}", campaign_budget="{per_customer: 1}"))
    first = await nbo.decide("c000", pb.CALL_CENTRE)
    assert [o.offer_id for o in first.offers] == ["o_adhoc"]
    again = await nbo.decide("c000", pb.CALL_CENTRE, explain=True)
    assert again.no_offer_reason == pb.CONTACT_POLICY
    assert {s.offer_id: s.reason for s in again.suppressed}["o_adhoc"] == (
        "contact policy: campaign adhoc awarded 1 times; at most 1 per customer"
    )
    assert [bool((await nbo.decide(c, pb.CALL_CENTRE)).offers) for c in ("c001", "c002", "c003")] == [
        True,
        True,
        False,
    ]
    r = await nbo.decide("c004", pb.CALL_CENTRE, explain=True)
    assert {s.offer_id: s.reason for s in r.suppressed}["o_adhoc"] == (
        "budget exhausted: offer o_adhoc spend in cents: 300 of 350 used, this award costs 100"
    )
    client = redis.Redis.from_url(redis_url)
    assert client.hget(KEYS.budget_total("adhoc"), "o:o_adhoc:spend") == b"300"
    assert client.hget(KEYS.contacts("c000"), "a:c:adhoc") == b"1"
    client.close()


async def test_channel_capacity_per_hour(many: tuple[Harness, Clock], redis_url: str) -> None:
    nbo, clock = many
    clock.now = MIDNIGHT + 3600
    await republish(nbo, redis_url, budgeted("{}", extra="channels: {call_centre: {capacity_per_hour: 2}}\n"))
    got = [bool((await nbo.decide(c, pb.CALL_CENTRE)).offers) for c in ("c000", "c001", "c002")]
    assert got == [True, True, False]
    r = await nbo.decide("c003", pb.CALL_CENTRE, explain=True)
    assert r.no_offer_reason == pb.BUDGET_EXHAUSTED
    assert {s.offer_id: s.reason for s in r.suppressed}["o_adhoc"] == (
        "budget exhausted: call_centre capacity per hour of 2 reached"
    )
    assert (await nbo.decide("c004", pb.WEB)).offers  # the web has no capacity limit
    clock.now += 3600  # the next hour has its own capacity
    assert (await nbo.decide("c005", pb.CALL_CENTRE)).offers


async def test_budgeted_offers_fail_closed_when_redis_fails(many: tuple[Harness, Clock], redis_url: str) -> None:
    nbo, clock = many
    clock.now = MIDNIGHT + 3600
    await republish(nbo, redis_url, budgeted("{total_awards: 100}"))
    assert (await nbo.decide("c000", pb.CALL_CENTRE)).offers
    client = redis.Redis.from_url(redis_url)
    # the budget counters cannot be read (the reservation script errors): nothing is awarded
    counters = client.hgetall(KEYS.budget_total("adhoc"))
    client.delete(KEYS.budget_total("adhoc"))
    client.set(KEYS.budget_total("adhoc"), "not a hash")
    r = await nbo.decide("c001", pb.CALL_CENTRE)
    assert (r.no_offer_reason, r.degraded, list(r.offers)) == (pb.DEGRADED, True, [])
    assert client.zcard(KEYS.channel_contacts("c001", "call_centre")) == 0
    client.delete(KEYS.budget_total("adhoc"))
    client.hset(KEYS.budget_total("adhoc"), mapping=counters)
    # Redis stops answering altogether: the read times out (0.25 s) and nothing is awarded
    client.client_pause(1000, all=True)
    r = await nbo.decide("c002", pb.CALL_CENTRE)
    assert (r.no_offer_reason, r.degraded, list(r.offers)) == (pb.DEGRADED, True, [])
    await asyncio.sleep(1.1)
    assert client.hget(KEYS.budget_total("adhoc"), "o:o_adhoc:n") == b"1"
    assert (await nbo.decide("c003", pb.CALL_CENTRE)).offers  # and it recovers
    assert client.hget(KEYS.budget_total("adhoc"), "o:o_adhoc:n") == b"2"
    client.close()


async def test_control_groups_are_logged_with_what_they_would_have_been_offered(
    many: tuple[Harness, Clock], redis_url: str
) -> None:
    nbo, clock = many
    clock.now = MIDNIGHT + 3600
    text = BASE.replace("control_group: {fraction: 0.0}", "").replace(
        "campaigns:\n", "control_group: {fraction: 0.3, salt: s1}\ncampaigns:\n"
    )
    text = text.replace("    target: [vip]\n", "    target: [vip]\n    holdout: 0.5\n    holdout_salt: h1\n")
    await republish(nbo, redis_url, text)
    customers = sorted(CUSTOMERS)[:40]
    responses = {c: await nbo.decide(c, pb.WEB) for c in customers}
    client = redis.Redis.from_url(redis_url)
    records = {str(r["customer_id"]): r for r in await stream_records(client, len(customers))}
    client.close()
    for c in customers:
        rec, resp = records[c], responses[c]
        universal = in_holdout("s1", c, 0.3)
        assert rec["control_group"] is universal
        if universal:
            assert resp.no_offer_reason == pb.CONTROL_GROUP and not resp.offers
            assert rec["would_offer"] == (["o_life"] if in_holdout("h1", c, 0.5) else ["o_adhoc"])
            continue
        candidates = rec["candidates"]
        assert isinstance(candidates, dict)
        status = dict(zip(candidates["offer_id"], candidates["status"], strict=True))
        if in_holdout("h1", c, 0.5):
            assert status["o_adhoc"] == "customer in the campaign's control group"
            assert [o.offer_id for o in resp.offers] == ["o_life"]
            # held-out candidates are scored, so lift can be estimated against their propensity
            assert candidates["propensity"][candidates["offer_id"].index("o_adhoc")] == pytest.approx(0.1)
        else:
            assert [o.offer_id for o in resp.offers] == ["o_adhoc"]
    assert 0 < sum(in_holdout("s1", c, 0.3) for c in customers) < len(customers)


def test_holdout_assignment_is_stable_per_salt_and_a_new_salt_redraws_it() -> None:
    ids = [f"c{i:05d}" for i in range(20_000)]
    first = [in_holdout("winter-1", c, 0.1) for c in ids]
    assert first == [in_holdout("winter-1", c, 0.1) for c in ids]
    rotated = [in_holdout("winter-2", c, 0.1) for c in ids]
    share = sum(first) / len(ids)
    overlap = sum(a and b for a, b in zip(first, rotated, strict=True)) / max(sum(first), 1)
    assert abs(share - 0.1) < 0.01
    assert abs(overlap - 0.1) < 0.03  # independent draws: about a tenth of the old group stays in


# -- Redis Cluster: every script and transaction must stay in one slot ---------------------------
async def test_decisions_budgets_and_outcomes_run_on_redis_cluster(cluster_url: str, tmp_path: Path) -> None:
    """On the 3-master test cluster (tests/redis_cluster.py), which refuses any multi-key call
    across slots and redirects any call sent to the wrong master."""
    with redis.Redis.from_url(cluster_url) as plain, pytest.raises(redis.ResponseError, match="hash to the same slot"):
        plain.eval("return 1", 2, "a", "b")  # the guard this test relies on
    node = sync_redis(cluster_url)
    load_customers(cluster_url, CUSTOMERS, tmp_path)
    text = budgeted(
        "{total_awards: 2, daily_awards: 5, total_spend: 10, per_customer: 1}",
        campaign_budget="{total_awards: 10, pacing: {over: window, slack: 0.5}}",
        extra="channels: {call_centre: {capacity_per_hour: 50}}\n",
    ).replace("  - id: adhoc\n", "  - id: adhoc\n    start: 2027-01-01\n    end: 2027-02-01\n")
    publish_text(cluster_url, text)
    clock = Clock(MIDNIGHT)
    nbo = Harness(cluster_url, clock)
    await nbo.start()
    try:
        got = [await nbo.decide(c, pb.CALL_CENTRE, request_id=f"r-{c}") for c in ("c000", "c001", "c002")]
        assert [[o.offer_id for o in r.offers] for r in got] == [["o_adhoc"], ["o_adhoc"], []]
        assert got[2].no_offer_reason == pb.BUDGET_EXHAUSTED
        repeat = await nbo.decide("c000", pb.CALL_CENTRE, request_id="r-c000")
        assert repeat.replayed and repeat.decision_id == got[0].decision_id
        outcome = await nbo.report(got[0].decision_id, "o_adhoc", pb.ACCEPTED)
        assert outcome.recorded
    finally:
        await nbo.stop()
    assert node.hget(KEYS.budget_total("adhoc"), "o:o_adhoc:n") == b"2"
    assert node.hget(KEYS.budget_total("adhoc"), "c:adhoc:n") == b"2"
    assert math.isclose(float(node.hget(KEYS.budget_total("adhoc"), "o:o_adhoc:spend") or 0), 200)
    node.close()


async def test_decisions_cancelled_mid_award_leave_counters_equal_to_the_logged_awards(
    many: tuple[Harness, Clock], redis_url: str
) -> None:
    """A caller that goes away cancels its decision's task at any point, the award included
    (gRPC cancels the handler). Every counted award must still be a logged award, none leaked,
    and exactly the awards of cancelled calls are logged undelivered (as the gRPC servicer
    settles each call's delivery)."""
    nbo, clock = many
    clock.now = MIDNIGHT + 3600
    await republish(nbo, redis_url, budgeted("{total_awards: 1000}"))
    client = redis.Redis.from_url(redis_url)
    client.delete(KEYS.decision_stream)
    service = nbo.worker.service
    answered: set[str] = set()
    for i in range(150):
        delivery = Delivery()
        task = asyncio.create_task(service.decide(DecideRequest(f"c{i:03d}", Channel.CALL_CENTRE), delivery=delivery))
        await asyncio.sleep(0.0001 * (i % 30))  # lands before, inside and after the award
        task.cancel()
        try:
            answered.add((await task).decision_id)
            delivery.settle(True)
        except asyncio.CancelledError:
            delivery.settle(False)
    assert 0 < len(answered) < 150
    await asyncio.sleep(1.0)  # shielded awards finish; the log writer flushes
    awarded = [rec for rec in await stream_records(client, 1) if rec["chosen"] == ["o_adhoc"]]
    counted = int(client.hget(KEYS.budget_total("adhoc"), "o:o_adhoc:n") or 0)
    client.close()
    assert counted > 0
    assert counted == len(awarded)
    undelivered = {rec["decision_id"] for rec in awarded if rec.get("undelivered")}
    assert undelivered, "some awards must have been cancelled mid-way"
    assert {rec["decision_id"] for rec in awarded} - undelivered <= answered
    assert not undelivered & answered
