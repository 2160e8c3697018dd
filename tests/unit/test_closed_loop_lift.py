"""The simulation's conversions and its true lift, on a small world with exact numbers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.records import decision_record
from training.closed_loop_lift import ORGANIC_VALUE, organic_conversions, organic_propensity, true_lift
from training.world import World

BASE = decision_record(model_version="m", catalog_version="c", bandit_version="off")


def test_true_lift_counts_awards_for_the_treated_and_would_offer_for_the_control_group() -> None:
    world = World.create(n_customers=50, seed=3)
    ids = world.population.customer_ids
    a, b = world.offer_ids[0], world.offer_ids[1]
    records = [
        dataclasses.replace(BASE, decision_id="d1", customer_id=ids[0], chosen=[a]),
        dataclasses.replace(BASE, decision_id="d2", customer_id=ids[0], chosen=[b], channel="call_centre"),
        dataclasses.replace(BASE, decision_id="d3", customer_id=ids[1], control_group=True, would_offer=[b]),
        dataclasses.replace(BASE, decision_id="d4", customer_id=ids[2]),  # nothing to offer
        dataclasses.replace(BASE, decision_id="d5", customer_id=ids[3], chosen=[a], degraded=True),
    ]
    p0 = np.linspace(0.05, 0.5, 50)

    def p(c: int, j: int, channel: str) -> float:
        return float(world.oracle(np.array([c]), np.array([j]), channel, {}, np.array([BASE.ts]))[0])

    lift = true_lift(
        records, dict.fromkeys([r.decision_id for r in records], world), p0, {c: i for i, c in enumerate(ids)}
    )
    p1, p2, p3 = p(0, 0, "web"), p(0, 1, "call_centre"), p(1, 1, "web")
    treated = [1 - (1 - p0[0]) * (1 - p1) * (1 - p2), 1 - (1 - p0[1]) * (1 - p3), p0[2], p0[3]]
    base = p0[[0, 1, 2, 3]]
    assert (lift.customers, lift.control_customers) == (4, 1)
    assert lift.conversion_rate_treated == pytest.approx(np.mean(treated), rel=1e-12)
    assert lift.conversion_rate_untreated == pytest.approx(base.mean(), rel=1e-12)
    assert lift.conversion_rate_diff == pytest.approx(np.mean(treated) - base.mean(), rel=1e-12)
    values = world.offer_value
    expected_value = (p1 * values[0] + p2 * values[1] + p3 * values[1]) / 4
    assert lift.value_per_customer_diff == pytest.approx(expected_value, rel=1e-12)


def test_organic_conversions_are_seeded_and_follow_each_customers_propensity() -> None:
    world = World.create(n_customers=2_000, seed=3)
    p0 = organic_propensity(world, seed=1)
    assert np.array_equal(p0, organic_propensity(world, seed=1))
    assert 0.07 < p0.mean() < 0.12
    first_seen = {c: 100.0 + c for c in range(0, 2_000, 2)}
    drawn = organic_conversions(world, first_seen, p0, seed=1)
    assert drawn == organic_conversions(world, first_seen, p0, seed=1)
    ids = world.population.customer_ids
    index = {cid: i for i, cid in enumerate(ids)}
    assert all(index[c.customer_id] in first_seen for c in drawn)
    assert all(c.occurred_at == first_seen[index[c.customer_id]] + 1.0 and c.value == ORGANIC_VALUE for c in drawn)
    assert len({c.event_id for c in drawn}) == len(drawn)
    expected = sum(p0[c] for c in first_seen)
    assert abs(len(drawn) - expected) < 4 * np.sqrt(expected)
