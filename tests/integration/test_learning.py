"""The learning loop through the real server: logged probabilities, the learner, replicas."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.learning.learner import Learner
from server.learning.posterior import decode_arm
from server.metrics import Metrics
from server.state.keys import Keys
from server.state.records import record_data
from tests.integration.harness import Clock, Harness, load_customers, publish_text
from tests.redis_cluster import async_redis, redis_url_on_both, sync_redis
from tests.unit.catalog_fixtures import BASE

# every test here runs on a single Redis and on the 3-master cluster
redis_url = redis_url_on_both

KEYS = Keys()
CUSTOMERS = {
    f"c{i:03d}": {"tier": "A", "tenure_months": 10, "churn_risk": 0.2, "consent_web": 1, "consent_call": 1}
    for i in range(200)
}
# no web cap, so every call is a fresh draw; o_adhoc and o_life (an ad-hoc and a lifecycle offer)
# compete on the web, which takes exploration across tiers
EXPLORING = BASE.replace("  max_per_window: {web: 2}\n", "").replace(
    "campaigns:\n", "bandit:\n  seed: 5\n  samples: 512\n  epsilon: 0.2\n  cross_tier: true\ncampaigns:\n"
)


@pytest.fixture
async def nbo(redis_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    publish_text(redis_url, EXPLORING)
    harness = Harness(redis_url, Clock(), learner_claim_idle_seconds=0.05)
    await harness.start()
    yield harness
    await harness.stop()


@pytest.fixture
async def learner(redis_url: str, nbo: Harness) -> AsyncIterator[Learner]:
    client = async_redis(redis_url)
    learner = Learner(client, KEYS, Metrics(), nbo.settings)
    await learner.start()
    yield learner
    await learner.stop()
    await client.aclose()


async def records(client: redis.Redis, stream: str, n: int) -> list[dict[str, object]]:
    for _ in range(300):
        if client.xlen(stream) >= n:
            break
        await asyncio.sleep(0.01)
    return [record_data(f) for _, f in client.xrange(stream)]


async def test_logged_selection_probabilities_describe_the_policy_met(nbo: Harness, redis_url: str) -> None:
    responses = [await nbo.decide(c, pb.WEB) for c in sorted(CUSTOMERS)]
    client = sync_redis(redis_url)
    logged = {str(r["decision_id"]): r for r in await records(client, KEYS.decision_stream, len(responses))}
    client.close()
    firsts = []
    for resp in responses:
        rec = logged[resp.decision_id]
        cands = rec["candidates"]
        assert isinstance(cands, dict)
        prob = dict(zip(cands["offer_id"], cands["selection_probability"], strict=True))
        (offer,) = resp.offers
        # the probability logged for the award is the one the API returned and the one it was drawn with
        assert prob[offer.offer_id] == offer.selection_probability
        assert 0.1 - 1e-12 <= offer.selection_probability <= 0.9 + 1e-12  # epsilon 0.2 over two candidates
        assert sum(prob[o] for o in ("o_adhoc", "o_life")) == pytest.approx(1.0)
        assert rec["bandit_version"] == "arms-0"
        firsts.append(offer.offer_id)
    assert set(firsts) == {"o_adhoc", "o_life"}  # both get explored (seeding: tests/unit/test_bandit.py)


async def test_the_learner_learns_each_reward_once_and_replicas_pick_it_up(
    nbo: Harness, learner: Learner, redis_url: str
) -> None:
    # decision ids carry a random ULID, so which offer each call draws is not fixed: go on until
    # both offers were drawn (o_life's probability is at least 0.1, so 200 calls miss with ~1e-9)
    accepted = declined = 0
    for c in sorted(CUSTOMERS):
        if accepted >= 2 and declined >= 2 and accepted + declined >= 20:
            break
        r = await nbo.decide(c, pb.WEB)
        offer = r.offers[0].offer_id
        if offer == "o_life":
            await nbo.report(r.decision_id, offer, pb.PRESENTED)  # no reward: skipped
            await nbo.report(r.decision_id, offer, pb.ACCEPTED)
            await nbo.report(r.decision_id, offer, pb.CONVERTED)  # the same reward: learned once
            accepted += 1
        else:
            await nbo.report(r.decision_id, offer, pb.DECLINED)
            declined += 1
    client = sync_redis(redis_url)
    n_outcomes = 3 * accepted + declined
    await records(client, KEYS.outcome_stream, n_outcomes)
    learned = 0
    while learned < accepted + declined:
        learned += await learner.step()
    # redelivery of every outcome (at least once): nothing is learned twice
    for _, fields in client.xrange(KEYS.outcome_stream):
        client.xadd(KEYS.outcome_stream, fields)
    assert await learner.step() == 0
    arms = {k.decode(): decode_arm(v) for k, v in client.hgetall(KEYS.bandit_arms).items()}
    assert {k: a.n for k, a in arms.items()} == {"o_life|web": accepted, "o_adhoc|web": declined}
    assert arms["o_life|web"].mean > 0 > arms["o_adhoc|web"].mean
    version = int(client.get(KEYS.bandit_version) or 0)
    assert version == accepted + declined
    client.close()
    for _ in range(100):
        live = nbo.worker.service.live
        if live is not None and live.arms.version == version:
            break
        await asyncio.sleep(0.05)
    live = nbo.worker.service.live
    assert live is not None and live.arms.version == version
    assert live.arms.arms["o_life|web"].n == accepted
    r = await nbo.decide("c199", pb.WEB)
    client = sync_redis(redis_url)
    logged = await records(client, KEYS.decision_stream, accepted + declined + 1)
    client.close()
    assert [x["bandit_version"] for x in logged if x["decision_id"] == r.decision_id] == [f"arms-{version}"]


async def test_a_dead_learners_outcomes_are_taken_over(nbo: Harness, redis_url: str) -> None:
    r = await nbo.decide("c000", pb.WEB)
    await nbo.report(r.decision_id, r.offers[0].offer_id, pb.ACCEPTED)
    client = async_redis(redis_url)
    sync = sync_redis(redis_url)
    await records(sync, KEYS.outcome_stream, 1)
    dead = Learner(client, KEYS, Metrics(), nbo.settings, consumer="dead")
    await dead.start()
    assert len(await dead.consumer.read()) == 1  # read, then "crashes" before acknowledging
    await dead.stop()
    await asyncio.sleep(0.1)
    alive = Learner(client, KEYS, Metrics(), nbo.settings, consumer="alive")
    await alive.start()
    assert await alive.step() == 1
    assert sync.xpending(KEYS.outcome_stream, "learner")["pending"] == 0
    await alive.stop()
    await client.aclose()
    sync.close()


async def test_an_unreadable_outcome_is_skipped_and_the_learner_goes_on(
    nbo: Harness, learner: Learner, redis_url: str
) -> None:
    client = sync_redis(redis_url)
    client.xadd(KEYS.outcome_stream, {"v": "1", "r": "{not json"})
    client.xadd(KEYS.outcome_stream, {"v": "1", "r": json.dumps({"offer_id": "o_life"})})  # no decision id
    r = await nbo.decide("c000", pb.WEB)
    await nbo.report(r.decision_id, r.offers[0].offer_id, pb.ACCEPTED)
    for _ in range(300):
        if client.xlen(KEYS.outcome_stream) >= 3:
            break
        await asyncio.sleep(0.01)
    learned = 0
    for _ in range(10):
        learned += await learner.step()
        if learned:
            break
    assert learned == 1
    assert client.xpending(KEYS.outcome_stream, "learner")["pending"] == 0  # all three acknowledged
    assert {k.decode() for k in client.hgetall(KEYS.bandit_arms)} == {f"{r.offers[0].offer_id}|web"}
    client.close()
