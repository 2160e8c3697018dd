"""The contextual bandit: Thompson sampling on a learned per-offer, per-channel correction of the
propensity model's log-odds.

Each arm (offer x channel) has a Gaussian posterior N(mean, 1/precision) over an offset delta
added to the model's logit: P(accept) = sigmoid(logit(p_model) + delta). The model carries the
context (customer features, channel, cart...); the arm learns what the model gets wrong for that
offer now — drift since training, or an offer the model has never seen (then p_model is the
catalog's prior and the posterior starts wide, so the offer is explored until its worth is
known). The learner (server/learner.py) updates the posteriors from outcomes with one Laplace
(Newton) step per observation, as in Chapelle & Li (2011), with a forgetting factor so drift is
followed.

Selection probabilities are computed, not guessed: `samples` posterior draws are ranked like the
server ranks (tier first, then P x C x V x L) and the policy *is* the resulting distribution
(mixed with an epsilon floor for support), from which the order is then drawn. So the logged
probability is exactly the one the offer was drawn with; the Monte Carlo error is only in how
far that distribution is from ideal Thompson sampling (standard error below 0.5/sqrt(samples)).
Draws are seeded by the policy seed and the decision id: replicas and replays agree.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from server.catalog.exploration import BanditPolicy, ChannelExploration

F64 = npt.NDArray[np.float64]
_TIER_GAP = 1e12  # larger than any P x C x V x L: a better tier always wins


@dataclass(frozen=True, slots=True)
class Arm:
    mean: float
    precision: float
    n: int


@dataclass(frozen=True)
class Arms:
    """The learned posteriors, as published by the learner (one version at a time)."""

    version: int = 0
    arms: Mapping[str, Arm] = field(default_factory=dict)


NO_ARMS = Arms()


def arm_key(offer_id: str, channel: str) -> str:
    return f"{offer_id}|{channel}"


def decode_arm(raw: bytes | str) -> Arm:
    text = raw.decode() if isinstance(raw, bytes) else raw
    mean, precision, n = text.split(",")
    return Arm(float(mean), float(precision), int(n))


def encode_arm(arm: Arm) -> str:
    return f"{arm.mean!r},{arm.precision!r},{arm.n}"


def posterior(
    policy: BanditPolicy, arms: Arms, channel: str, offer_ids: list[str], known: npt.NDArray[np.bool_]
) -> tuple[F64, F64, F64]:
    """(mean, sd, prior sd) of each offer's offset on the channel."""
    n = len(offer_ids)
    mean, sd = np.zeros(n), np.empty(n)
    prior = np.where(known, policy.prior_sd, policy.new_offer_sd)
    for i, offer_id in enumerate(offer_ids):
        arm = arms.arms.get(arm_key(offer_id, channel))
        if arm is None:
            sd[i] = prior[i]
        else:
            mean[i], sd[i] = arm.mean, 1.0 / math.sqrt(arm.precision)
    return mean, sd, prior


def logit(p: F64) -> F64:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    out: F64 = np.log(q / (1 - q))
    return out


def decision_rng(seed: int, decision_id: str) -> np.random.Generator:
    digest = hashlib.blake2b(f"{seed}\x00{decision_id}".encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "big")])


@dataclass(frozen=True, slots=True)
class Choice:
    """The policy's distribution over the candidates (first slot) and the order drawn from it."""

    probability: F64  # per candidate, sums to 1
    order: npt.NDArray[np.intp]  # candidate positions, the walk order
    adjusted: F64  # the propensities after the learned offsets (posterior mean), for reasons


def selection_probabilities(
    policy: BanditPolicy,
    explore: ChannelExploration,
    base_p: F64,
    mean: F64,
    sd: F64,
    tier: npt.NDArray[np.int64],
    weight: F64,
    rng: np.random.Generator,
) -> F64:
    """Probability of each candidate being ranked first under the policy (exact for the policy
    actually run: it *is* this distribution). `weight` = C x V x L of each candidate."""
    n = base_p.size
    base = logit(base_p)
    if explore.exploration == 0.0:
        greedy = np.zeros(n)
        greedy[_best(base + mean, tier, weight)] = 1.0
        pi = greedy
    else:
        z = rng.standard_normal((policy.samples, n))
        draws = base + mean + explore.exploration * sd * z
        p = 1.0 / (1.0 + np.exp(-draws))
        keys = p * weight - tier * _TIER_GAP
        winners = keys.argmax(axis=1)
        pi = np.bincount(winners, minlength=n).astype(np.float64) / policy.samples
    if explore.epsilon > 0.0 and n > 1:
        pi = (1.0 - explore.epsilon) * pi + explore.epsilon / n
    return pi


def _best(score_logit: F64, tier: npt.NDArray[np.int64], weight: F64) -> int:
    p = 1.0 / (1.0 + np.exp(-score_logit))
    return int((p * weight - tier * _TIER_GAP).argmax())


def choose(
    policy: BanditPolicy,
    explore: ChannelExploration,
    base_p: F64,
    mean: F64,
    sd: F64,
    tier: npt.NDArray[np.int64],
    weight: F64,
    rng: np.random.Generator,
) -> Choice:
    """The distribution, and an order drawn from it without replacement (Plackett-Luce via the
    Gumbel trick), so that walking the order past exhausted budgets stays a draw from the policy
    restricted to the offers still available."""
    pi = selection_probabilities(policy, explore, base_p, mean, sd, tier, weight, rng)
    gumbel = -np.log(-np.log(rng.uniform(1e-300, 1.0, pi.size)))
    with np.errstate(divide="ignore"):
        keys = np.where(pi > 0, np.log(pi) + gumbel, -np.inf)
    # candidates the policy never picks first follow, in the greedy order of their posterior mean
    adjusted = 1.0 / (1.0 + np.exp(-(logit(base_p) + mean)))
    fallback = adjusted * weight - tier * _TIER_GAP
    order = np.lexsort((-fallback, -keys))
    return Choice(pi, order.astype(np.intp), adjusted)


def taken_probability(pi: F64, taken: int, skipped: list[int]) -> float:
    """Probability with which candidate `taken` (an index into `pi`) was drawn at its place in
    the walk, given the candidates before it (`skipped`: refused by a budget or a per-customer
    cap, or awarded in an earlier slot)."""
    rest = 1.0 - float(pi[skipped].sum()) if skipped else 1.0
    if rest <= 1e-12:
        return 1.0  # every candidate with mass was refused; the remainder is a fixed order
    return min(1.0, float(pi[taken]) / rest)
