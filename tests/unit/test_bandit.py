"""The bandit policy: selection probabilities, the walk order and its seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.catalog.compiler import parse_catalog
from server.domain import Channel
from server.learning.bandit import (
    Arm,
    Arms,
    BanditPolicy,
    ChannelExploration,
    choose,
    decision_rng,
    posterior,
    selection_probabilities,
    taken_probability,
)
from tests.unit.catalog_fixtures import BASE, SCHEMA

POLICY = BanditPolicy(enabled=True, seed=3, samples=4000)
TIER0 = np.zeros(2, dtype=np.int64)


def test_without_exploration_the_policy_is_greedy_on_the_learned_propensity() -> None:
    explore = ChannelExploration(exploration=0.0)
    base = np.array([0.10, 0.20])
    weight = np.ones(2)
    pi = selection_probabilities(POLICY, explore, base, np.zeros(2), np.ones(2), TIER0, weight, decision_rng(3, "d"))
    assert pi.tolist() == [0.0, 1.0]
    # a learned offset of +1.5 on the first makes it the better one (sigmoid(logit(0.1) + 1.5) = 0.33)
    pi = selection_probabilities(
        POLICY, explore, base, np.array([1.5, 0.0]), np.ones(2), TIER0, weight, decision_rng(3, "d")
    )
    assert pi.tolist() == [1.0, 0.0]


def test_a_better_tier_always_wins_the_draw() -> None:
    pi = selection_probabilities(
        POLICY,
        ChannelExploration(exploration=1.0),
        np.array([0.01, 0.6]),
        np.zeros(2),
        np.full(2, 2.0),
        np.array([0, 2], dtype=np.int64),
        np.array([1.0, 100.0]),
        decision_rng(3, "d"),
    )
    assert pi.tolist() == [1.0, 0.0]


def test_thompson_probability_matches_the_closed_form_within_its_monte_carlo_error() -> None:
    # same tier and weight: offer 0 wins when logit0 + d0 > logit1 + d1, d ~ N(mean, sd^2)
    base = np.array([0.10, 0.15])
    mean, sd = np.array([0.2, 0.0]), np.array([0.6, 0.3])
    pi = selection_probabilities(POLICY, ChannelExploration(), base, mean, sd, TIER0, np.ones(2), decision_rng(3, "x"))
    gap = math.log(0.10 / 0.90) + 0.2 - math.log(0.15 / 0.85)
    exact = 0.5 * (1 + math.erf(gap / math.sqrt(2 * (0.6**2 + 0.3**2))))
    se = math.sqrt(exact * (1 - exact) / POLICY.samples)
    assert abs(pi[0] - exact) < 4 * se
    assert pi.sum() == pytest.approx(1.0)


def test_epsilon_floor_gives_every_candidate_support() -> None:
    explore = ChannelExploration(exploration=0.0, epsilon=0.1)
    pi = selection_probabilities(
        POLICY, explore, np.array([0.1, 0.2, 0.3, 0.4]), np.zeros(4), np.ones(4), np.zeros(4, dtype=np.int64),
        np.ones(4), decision_rng(3, "d"),
    )  # fmt: skip
    assert pi.tolist() == pytest.approx([0.025, 0.025, 0.025, 0.925])


def test_draws_are_seeded_by_policy_seed_and_decision_id() -> None:
    args = (ChannelExploration(), np.array([0.1, 0.12, 0.11]), np.zeros(3), np.ones(3), np.zeros(3, dtype=np.int64))
    a = choose(POLICY, *args, np.ones(3), decision_rng(3, "d1"))
    b = choose(POLICY, *args, np.ones(3), decision_rng(3, "d1"))
    c = choose(POLICY, *args, np.ones(3), decision_rng(3, "d2"))
    assert a.probability.tolist() == b.probability.tolist() and a.order.tolist() == b.order.tolist()
    assert a.probability.tolist() != c.probability.tolist()


def test_the_walk_order_is_a_draw_from_the_policy() -> None:
    explore = ChannelExploration(exploration=0.0, epsilon=0.3)
    base = np.array([0.1, 0.2, 0.3])
    firsts = np.zeros(3)
    for i in range(6000):
        choice = choose(POLICY, explore, base, np.zeros(3), np.ones(3), np.zeros(3, dtype=np.int64),
                        np.ones(3), decision_rng(3, f"d{i}"))  # fmt: skip
        firsts[choice.order[0]] += 1
    expected = choice.probability  # 0.1, 0.1, 0.8 for every decision
    assert expected.tolist() == pytest.approx([0.1, 0.1, 0.8])
    assert np.abs(firsts / 6000 - expected).max() < 0.02


def test_taken_probability_renormalises_over_what_was_refused_before() -> None:
    pi = np.array([0.5, 0.3, 0.2])
    assert taken_probability(pi, 0, []) == 0.5
    assert taken_probability(pi, 1, [0]) == pytest.approx(0.6)  # 0.3 / (1 - 0.5)
    assert taken_probability(pi, 2, [0, 1]) == pytest.approx(1.0)
    assert taken_probability(np.array([1.0, 0.0]), 1, [0]) == 1.0  # only a fixed order was left


def test_posterior_uses_learned_arms_and_a_wider_prior_for_offers_the_model_lacks() -> None:
    policy = BanditPolicy(enabled=True, prior_sd=0.5, new_offer_sd=2.0)
    arms = Arms(7, {"a|web": Arm(0.3, 25.0, 40)})
    mean, sd, prior = posterior(policy, arms, "web", ["a", "b", "c"], np.array([True, True, False]))
    assert mean.tolist() == [0.3, 0.0, 0.0]
    assert sd.tolist() == [0.2, 0.5, 2.0]
    assert prior.tolist() == [0.5, 0.5, 2.0]


def test_catalog_bandit_section_compiles_per_channel_exploration() -> None:
    text = BASE.replace(
        "campaigns:\n",
        "bandit:\n  seed: 11\n  epsilon: 0.05\n  channels:\n    call_centre: {exploration: 0.3, epsilon: 0}\n"
        "campaigns:\n",
    )
    policy = parse_catalog(text, SCHEMA).bandit
    assert policy.enabled and policy.seed == 11
    assert policy.on(Channel.CALL_CENTRE) == ChannelExploration(0.3, 0.0)
    assert policy.on(Channel.WEB) == ChannelExploration(1.0, 0.05)
    assert parse_catalog(BASE, SCHEMA).bandit.enabled is False
