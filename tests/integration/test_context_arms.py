"""Arms that learn context: inputs declared in the catalog's `bandit.inputs` travel with each award
to the learner, which learns a weight per input; replicas then draw from the contextual posterior.
Real redis-server, real gRPC worker, the real learner."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from server.catalog.bandit_section import bandit_policy
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.learning.arm_inputs import decode_inputs, input_rows
from server.learning.learner import Learner
from server.learning.posterior import decode_arm, posterior_at
from server.metrics import Metrics
from server.state.keys import Keys
from server.state.records import decode_outcome_record
from tests.integration.harness import Clock, Harness, load_customers, publish_text
from tests.unit.catalog_fixtures import BASE

KEYS = Keys()
# tenure 0..199; every customer is a VIP, so the ad-hoc offer is the one awarded on the web
CUSTOMERS = {
    f"c{i:03d}": {"tier": "A", "tenure_months": i, "churn_risk": 0.2, "consent_web": 1, "consent_call": 1}
    for i in range(200)
}
BANDIT = """bandit:
  seed: 5
  samples: 64
  decay: 1.0
  inputs:
    - {feature: tenure_months, center: 100, scale: 50}
    - {context: cart_value, center: 50, scale: 25}
    - {model: logit, center: -2}
  input_prior_sd: 0.5
"""
CATALOG = BASE.replace("  max_per_window: {web: 2}\n", "").replace("campaigns:\n", BANDIT + "campaigns:\n")


@pytest.fixture
async def nbo(redis_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    publish_text(redis_url, CATALOG)
    harness = Harness(redis_url, Clock())
    await harness.start()
    yield harness
    await harness.stop()


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


async def test_an_arm_learns_how_the_offer_responds_to_a_feature(nbo: Harness, redis_url: str) -> None:
    # long-tenured customers accept the ad-hoc offer, short-tenured ones decline it: a per-offer
    # level cannot say that, a weight on tenure can
    for cid, row in CUSTOMERS.items():
        r = await nbo.decide(cid, pb.WEB, context={"cart_value": 50.0 + row["tenure_months"] % 7})
        (offer,) = r.offers
        assert offer.offer_id == "o_adhoc"
        await nbo.report(r.decision_id, offer.offer_id, pb.ACCEPTED if row["tenure_months"] >= 100 else pb.DECLINED)
    client = redis.Redis.from_url(redis_url)
    for _ in range(300):
        if client.xlen(KEYS.outcome_stream) >= len(CUSTOMERS):
            break
        await asyncio.sleep(0.01)
    outcomes = [decode_outcome_record(f) for _, f in client.xrange(KEYS.outcome_stream)]
    policy = bandit_policy(CATALOG)
    # every outcome carries the inputs its offer was drawn with, under the live declaration
    tenure_input = {o.customer_id: decode_inputs(o.arm_inputs) for o in outcomes}
    assert {sig for sig, _ in tenure_input.values()} == {policy.signature}
    assert tenure_input["c150"][1][0] == pytest.approx((150 - 100) / 50)

    learner_client = aioredis.Redis.from_url(redis_url)
    learner = Learner(learner_client, KEYS, Metrics(), nbo.settings)
    await learner.start()
    learned = 0
    while learned < len(CUSTOMERS):
        learned += await learner.step()
    await learner_client.aclose()

    arm = decode_arm(client.hget(KEYS.bandit_arms, "o_adhoc|web") or b"")
    client.close()
    assert (arm.n, arm.signature, len(arm.weights)) == (200, policy.signature, 3)
    # the learner's steps, replayed here in the stream's order: the same numbers
    assert (arm.mean, *arm.weights) == pytest.approx(
        _replay(outcomes, outcomes[0].prior_sd, policy.input_prior_sd), abs=1e-9
    )
    tenure_weight, tenure_sd = arm.weights[0], 1 / math.sqrt(arm.weight_precisions[0])
    assert tenure_weight > 3 * tenure_sd  # clearly learned, in the right direction

    # the worker picks the arm up; its posterior for a long-tenured customer is far above a short one's
    for _ in range(100):
        live = nbo.worker.service.live
        if live is not None and "o_adhoc|web" in live.arms.arms:
            break
        await asyncio.sleep(0.05)
    live = nbo.worker.service.live
    assert live is not None
    means = []
    for tenure in (190.0, 10.0):
        vector = np.array([0, tenure, 0.2, 1, 1], dtype=np.float32)
        x = input_rows(live.catalog.bandit, vector, {"cart_value": 50.0}, np.array([0.1]))
        view = live.catalog.views[next(iter(live.catalog.views))]
        at = np.array([view.offer_ids.index("o_adhoc")], dtype=np.intp)
        mean, _, _ = posterior_at(live.catalog.bandit, live.arms, "web", view.offer_ids, at, np.array([False]), x)
        means.append(float(mean[0]))
    assert _sigmoid(math.log(0.1 / 0.9) + means[0]) > 0.5 > _sigmoid(math.log(0.1 / 0.9) + means[1])


def _replay(outcomes: list, prior_sd: float, input_prior_sd: float) -> list[float]:  # type: ignore[type-arg]
    """learn.lua's step (decay 1: no forgetting), in Python; the intercept's prior is the one
    kept with the award (the wider new-offer prior here: no model knows the offer)."""
    mean, precision = 0.0, 1.0 / prior_sd**2
    weights, precisions = [0.0] * 3, [1.0 / input_prior_sd**2] * 3
    for o in outcomes:
        _, x = decode_inputs(o.arm_inputs)
        p_model = min(max(o.propensity, 1e-6), 1 - 1e-6)
        z = math.log(p_model / (1 - p_model)) + mean + sum(w * v for w, v in zip(weights, x, strict=True))
        p = _sigmoid(z)
        h, g = p * (1 - p), (1.0 if o.outcome == "accepted" else 0.0) - p
        precision += h
        mean += g / precision
        for i, v in enumerate(x):
            precisions[i] += h * v * v
            weights[i] += g * v / precisions[i]
    return [mean, *weights]
