"""The bandit policy: selection probabilities, the walk order and its seeding."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import numpy as np
import pytest

from server.catalog.compiler import parse_catalog
from server.catalog.exploration import BanditPolicy, ChannelExploration
from server.domain import Channel
from server.learning.bandit import (
    Candidates,
    choose,
    decision_rng,
    logit,
    selection_probabilities,
    taken_probability,
)
from server.learning.posterior import Arm, Arms, posterior, posterior_at
from tests.unit.catalog_fixtures import BASE, SCHEMA

POLICY = BanditPolicy(enabled=True, seed=3, samples=4000)
TIER0 = np.zeros(2, dtype=np.int64)


def test_without_exploration_the_policy_is_greedy_on_the_learned_propensity() -> None:
    explore = ChannelExploration(exploration=0.0)
    base = np.array([0.10, 0.20])
    weight = np.ones(2)
    pi = selection_probabilities(
        POLICY, explore, Candidates(base, np.zeros(2), np.ones(2), TIER0, weight), decision_rng(3, "d")
    )
    assert pi.tolist() == [0.0, 1.0]
    # a learned offset of +1.5 on the first makes it the better one (sigmoid(logit(0.1) + 1.5) = 0.33)
    pi = selection_probabilities(
        POLICY, explore, Candidates(base, np.array([1.5, 0.0]), np.ones(2), TIER0, weight), decision_rng(3, "d")
    )
    assert pi.tolist() == [1.0, 0.0]


def test_a_better_tier_always_wins_the_draw() -> None:
    cand = Candidates(
        np.array([0.01, 0.6]), np.zeros(2), np.full(2, 2.0), np.array([0, 2], dtype=np.int64), np.array([1.0, 100.0])
    )
    for policy in (POLICY, replace(POLICY, cross_tier=True)):
        pi = selection_probabilities(policy, ChannelExploration(exploration=1.0), cand, decision_rng(3, "d"))
        assert pi.tolist() == [1.0, 0.0]


def test_epsilon_stays_inside_the_best_tier_unless_the_catalog_crosses_tiers() -> None:
    # two ad-hoc offers and a lifecycle one: the floor goes to the ad-hoc pair only
    explore = ChannelExploration(exploration=0.0, epsilon=0.1)
    cand = Candidates(
        np.array([0.2, 0.1, 0.9]), np.zeros(3), np.ones(3), np.array([0, 0, 2], dtype=np.int64), np.ones(3)
    )
    pi = selection_probabilities(POLICY, explore, cand, decision_rng(3, "d"))
    assert pi.tolist() == pytest.approx([0.95, 0.05, 0.0]) and pi[2] == 0.0
    crossing = selection_probabilities(replace(POLICY, cross_tier=True), explore, cand, decision_rng(3, "d"))
    assert crossing.tolist() == pytest.approx([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    # the walk still reaches the lifecycle offer, after the drawn ones, at probability 1 there
    choice = choose(POLICY, explore, cand, decision_rng(3, "d"))
    assert choice.order.tolist()[-1] == 2
    assert taken_probability(choice.probability, 2, [0, 1]) == 1.0


def test_margin_ranking_counts_the_cost() -> None:
    # worth 50 costing 4 against worth 48 costing nothing, equal propensity: by value the first,
    # by margin (P x value - cost) the second
    base = np.array([0.3, 0.3])
    gain = np.array([50.0, 48.0])
    greedy = ChannelExploration(exploration=0.0)
    by_value = Candidates(base, np.zeros(2), np.ones(2), TIER0, gain)
    by_margin = Candidates(base, np.zeros(2), np.ones(2), TIER0, gain, np.array([4.0, 0.0]))
    assert selection_probabilities(POLICY, greedy, by_value, decision_rng(3, "d")).tolist() == [1.0, 0.0]
    assert selection_probabilities(POLICY, greedy, by_margin, decision_rng(3, "d")).tolist() == [0.0, 1.0]


def test_thompson_probability_matches_the_closed_form_within_its_monte_carlo_error() -> None:
    # same tier and weight: offer 0 wins when logit0 + d0 > logit1 + d1, d ~ N(mean, sd^2)
    base = np.array([0.10, 0.15])
    mean, sd = np.array([0.2, 0.0]), np.array([0.6, 0.3])
    pi = selection_probabilities(
        POLICY, ChannelExploration(), Candidates(base, mean, sd, TIER0, np.ones(2)), decision_rng(3, "x")
    )
    gap = math.log(0.10 / 0.90) + 0.2 - math.log(0.15 / 0.85)
    exact = 0.5 * (1 + math.erf(gap / math.sqrt(2 * (0.6**2 + 0.3**2))))
    se = math.sqrt(exact * (1 - exact) / POLICY.samples)
    assert abs(pi[0] - exact) < 4 * se
    assert pi.sum() == pytest.approx(1.0)


def test_epsilon_floor_gives_every_candidate_support() -> None:
    explore = ChannelExploration(exploration=0.0, epsilon=0.1)
    cand = Candidates(np.array([0.1, 0.2, 0.3, 0.4]), np.zeros(4), np.ones(4), np.zeros(4, dtype=np.int64), np.ones(4))
    pi = selection_probabilities(POLICY, explore, cand, decision_rng(3, "d"))
    assert pi.tolist() == pytest.approx([0.025, 0.025, 0.025, 0.925])


def test_draws_are_seeded_by_policy_seed_and_decision_id() -> None:
    cand = Candidates(np.array([0.1, 0.12, 0.11]), np.zeros(3), np.ones(3), np.zeros(3, dtype=np.int64), np.ones(3))
    a = choose(POLICY, ChannelExploration(), cand, decision_rng(3, "d1"))
    b = choose(POLICY, ChannelExploration(), cand, decision_rng(3, "d1"))
    c = choose(POLICY, ChannelExploration(), cand, decision_rng(3, "d2"))
    assert a.probability.tolist() == b.probability.tolist() and a.order.tolist() == b.order.tolist()
    assert a.probability.tolist() != c.probability.tolist()


def test_the_walk_order_is_a_draw_from_the_policy() -> None:
    explore = ChannelExploration(exploration=0.0, epsilon=0.3)
    base = np.array([0.1, 0.2, 0.3])
    firsts = np.zeros(3)
    cand = Candidates(base, np.zeros(3), np.ones(3), np.zeros(3, dtype=np.int64), np.ones(3))
    for i in range(6000):
        choice = choose(POLICY, explore, cand, decision_rng(3, f"d{i}"))
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


# The fast paths against their definitions, bit for bit, on many random inputs: the logged
# selection probabilities and the walk order must not change with the implementation.
# `reference_choose` is the policy as first written (every draw of every candidate scored, a fresh
# Generator per decision), kept here as the definition the server's version is held to; inside
# the tier rule it is the same definition over the best tier's candidates.

F64 = np.ndarray
_TIER_GAP = 1e12


Case = tuple[F64, F64, F64, F64, F64, F64 | None]  # base_p, mean, sd, tier, gain, loss


def _keys(p: F64, tier: F64 | None, gain: F64, loss: F64 | None) -> F64:
    keys = p * gain
    if loss is not None:
        keys = keys - loss
    return keys if tier is None else keys - tier * _TIER_GAP


def reference_probabilities(
    policy: BanditPolicy, explore: ChannelExploration, case: Case, rng: np.random.Generator
) -> F64:
    """Across tiers (`cross_tier`): every candidate drawn, the floor over all. Inside the tier
    rule: the same over the best tier's candidates alone (no tier term), the others 0."""
    base_p, mean, sd, tier, gain, loss = case
    if not policy.cross_tier:
        top = tier == tier.min()
        if not top.all():
            pi = np.zeros(base_p.size)
            sub_loss = None if loss is None else loss[top]
            inner = replace(policy, cross_tier=True)
            sub = (base_p[top], mean[top], sd[top], np.zeros(int(top.sum()), dtype=np.int64), gain[top], sub_loss)
            pi[top] = _reference_draws(inner, explore, sub, rng, with_tier=False)
            return pi
    return _reference_draws(policy, explore, case, rng, with_tier=policy.cross_tier)


def _reference_draws(
    policy: BanditPolicy, explore: ChannelExploration, case: Case, rng: np.random.Generator, *, with_tier: bool
) -> F64:
    base_p, mean, sd, tier, gain, loss = case
    n = base_p.size
    base = logit(base_p)
    t = tier if with_tier else None
    if explore.exploration == 0.0:
        p = 1.0 / (1.0 + np.exp(-(base + mean)))
        pi = np.zeros(n)
        pi[int(_keys(p, t, gain, loss).argmax())] = 1.0
    else:
        z = rng.standard_normal((policy.samples, n))
        draws = base + mean + explore.exploration * sd * z
        p = 1.0 / (1.0 + np.exp(-draws))
        winners = _keys(p, t, gain, loss).argmax(axis=1)
        pi = np.bincount(winners, minlength=n).astype(np.float64) / policy.samples
    if explore.epsilon > 0.0 and n > 1:
        pi = (1.0 - explore.epsilon) * pi + explore.epsilon / n
    return pi


def reference_choose(
    policy: BanditPolicy, explore: ChannelExploration, case: Case, rng: np.random.Generator
) -> tuple[F64, F64, F64]:
    base_p, mean, _, tier, gain, loss = case
    pi = reference_probabilities(policy, explore, case, rng)
    gumbel = -np.log(-np.log(rng.uniform(1e-300, 1.0, pi.size)))
    with np.errstate(divide="ignore"):
        keys = np.where(pi > 0, np.log(pi) + gumbel, -np.inf)
    adjusted = 1.0 / (1.0 + np.exp(-(logit(base_p) + mean)))
    fallback = _keys(adjusted, tier, gain, loss)
    return pi, np.lexsort((-fallback, -keys)), adjusted


def random_case(r: random.Random, n: int) -> Case:
    """Candidates as the server sees them, and the corners: ties, saturated propensities, zero
    spreads, unsorted or single tiers, zero weights, weights too large for the tier gap, NaN."""
    base = np.array([r.choice([r.uniform(0.001, 0.6), 0.2, 0.0, 1.0, 1e-9]) for _ in range(n)])
    mean = np.array([r.choice([0.0, r.gauss(0, 1), 40.0]) for _ in range(n)])
    sd = np.array([r.choice([0.5, 1.5, r.uniform(0.05, 3), 0.0]) for _ in range(n)])
    tiers = [r.choice([0, 1, 2, 3]) for _ in range(n)]
    shape = r.random()
    if shape < 0.5:
        tiers.sort()  # as ranked
    elif shape < 0.65:
        tiers = [tiers[0]] * n
    tier = np.array(tiers, dtype=np.int64)
    weight = np.array([r.choice([r.uniform(5, 200), 50.0, 0.0]) for _ in range(n)])
    corner = r.random()
    if corner < 0.05:
        weight[r.randrange(n)] = 3e12  # outscores a better tier: the contender shortcut must not apply
    elif corner < 0.08:
        weight[r.randrange(n)] = -20.0
    elif corner < 0.09:
        weight[tier == tier.min()] = -2e12  # the best tier's keys below a worse tier's
    elif corner < 0.11:
        sd[r.randrange(n)] = r.choice([math.inf, math.nan])
    elif corner < 0.13:
        mean[r.randrange(n)] = math.nan  # a NaN key wins argmax, whatever its tier
    # ranking by margin: a cost term, sometimes larger than the gain
    loss = np.array([r.choice([0.0, r.uniform(0, 30), 500.0]) for _ in range(n)]) if r.random() < 0.3 else None
    return base, mean, sd, tier, weight, loss


@pytest.mark.parametrize("seed", range(6))
def test_choose_matches_the_reference_bit_for_bit(seed: int) -> None:
    r = random.Random(seed)
    with np.errstate(all="ignore"):  # the corners overflow exp(); both versions alike
        for case in range(250):
            n = r.choice([1, 2, 3, r.randint(4, 60)])
            policy = BanditPolicy(
                enabled=True,
                seed=r.choice([0, 7, 2**40 + 3]),
                samples=r.choice([1, 16, 256]),
                cross_tier=r.random() < 0.5,
            )
            explore = ChannelExploration(r.choice([0.0, 0.3, 1.0, 3.0]), r.choice([0.0, 0.0, 0.05, 0.3]))
            arrays = random_case(r, n)
            decision_id = f"d{seed}-{case}"
            pi, order, adjusted = reference_choose(policy, explore, arrays, decision_rng(policy.seed, decision_id))
            got = choose(policy, explore, Candidates(*arrays), decision_rng(policy.seed, decision_id))
            assert got.probability.tobytes() == pi.tobytes(), (seed, case)
            assert got.order.tolist() == order.tolist(), (seed, case)
            assert got.adjusted.tobytes() == adjusted.tobytes(), (seed, case)
            alone = selection_probabilities(
                policy, explore, Candidates(*arrays), decision_rng(policy.seed, decision_id)
            )
            assert alone.tobytes() == pi.tobytes(), (seed, case)


def test_posterior_from_the_table_matches_the_lookup() -> None:
    r = random.Random(5)
    policy = BanditPolicy(enabled=True, prior_sd=0.5, new_offer_sd=2.0)
    offer_ids = tuple(f"o{i}" for i in range(40))
    for version in range(30):
        learned = r.sample(offer_ids, r.choice([0, 1, 10, 40]))
        arms = Arms(version, {f"{o}|web": Arm(r.gauss(0, 1), r.uniform(0.5, 400), 3) for o in learned})
        for _ in range(5):
            positions = np.array(r.sample(range(40), r.randint(1, 40)), dtype=np.intp)
            known = np.array([r.random() < 0.8 for _ in positions])
            expected = posterior(policy, arms, "web", [offer_ids[p] for p in positions], known)
            got = posterior_at(policy, arms, "web", offer_ids, positions, known)
            assert [a.tobytes() for a in got] == [a.tobytes() for a in expected]


def test_an_arm_without_a_valid_precision_fails_as_the_lookup_does() -> None:
    policy = BanditPolicy(enabled=True)
    offer_ids = ("a", "b")
    arms = Arms(1, {"b|web": Arm(0.1, 0.0, 1)})
    known = np.array([True])
    mean, _, _ = posterior_at(policy, arms, "web", offer_ids, np.array([0], dtype=np.intp), known)
    assert mean.tolist() == [0.0]  # the broken arm is not a candidate
    with pytest.raises(ZeroDivisionError):
        posterior_at(policy, arms, "web", offer_ids, np.array([1], dtype=np.intp), known)
