"""The contextual bandit: Thompson sampling on a learned per-offer, per-channel correction of the
propensity model's log-odds.

Each arm (offer x channel) has a Gaussian posterior over an offset added to the model's logit:
P(accept) = sigmoid(logit(p_model) + offset). The model carries the context (customer features,
channel, cart...); the arm learns what the model gets wrong for that offer now — drift since
training, an offer the model has never seen (then p_model is the catalog's prior and the
posterior starts wide), or, with the catalog's `bandit.inputs`, how the offer's response to a few
declared inputs has moved (server.learning.posterior). The learner (server.learning.learner)
updates the posteriors from outcomes with one Laplace (Newton) step per observation, as in
Chapelle & Li (2011), with a forgetting factor so drift is followed.

Selection probabilities are computed, not guessed: `samples` posterior draws of the best tier's
candidates are ranked like the server ranks (P x C x V x L, or the margin) and the policy *is*
the resulting distribution (mixed with an epsilon floor over the same candidates, for support),
from which the order is then drawn; lower tiers follow, never first (unless the catalog sets
`cross_tier`). So the logged probability is exactly the one the offer was drawn with; the Monte
Carlo error is only in how far that distribution is from ideal Thompson sampling (standard error
below 0.5/sqrt(samples)). Draws are seeded by the policy seed and the decision id: replicas and
replays agree.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from server.catalog.exploration import BanditPolicy, ChannelExploration

F64 = npt.NDArray[np.float64]
_TIER_GAP = 1e12  # larger than any P x C x V x L: a better tier always wins


def logit(p: F64) -> F64:
    q = np.minimum(np.maximum(p, 1e-6), 1 - 1e-6)  # np.clip, without its Python-level wrapper
    out: F64 = np.log(q / (1 - q))
    return out


def decision_rng(seed: int, decision_id: str) -> np.random.Generator:
    digest = hashlib.blake2b(f"{seed}\x00{decision_id}".encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "big")])


def _sigmoid(x: F64) -> F64:
    out: F64 = 1.0 / (1.0 + np.exp(-x))
    return out


def _rank_keys(p: F64, tier: npt.NDArray[np.int64] | None, gain: F64, loss: F64 | None) -> F64:
    """The server's ranking as one number: tier first, then P x gain - loss (P x C x V x L, or the
    margin C x L x (P x value - cost)). No tier: all candidates are of one tier."""
    out: F64 = p * gain
    if loss is not None:
        out -= loss
    if tier is not None:
        out -= tier * _TIER_GAP
    return out


@dataclass(frozen=True, slots=True)
class Choice:
    """The policy's distribution over the candidates (first slot) and the order drawn from it."""

    probability: F64  # per candidate, sums to 1
    order: npt.NDArray[np.intp]  # candidate positions, the walk order
    adjusted: F64  # the propensities after the learned offsets (posterior mean), for reasons


@dataclass(frozen=True, slots=True)
class Candidates:
    """What the policy ranks: per candidate its base propensity, the learned offset's posterior
    (mean, sd), its tier, and its rank weights (key = P x gain - loss; loss None = 0)."""

    base_p: F64
    mean: F64
    sd: F64
    tier: npt.NDArray[np.int64]
    gain: F64
    loss: F64 | None = None


def selection_probabilities(
    policy: BanditPolicy, explore: ChannelExploration, cand: Candidates, rng: np.random.Generator
) -> F64:
    """Probability of each candidate being ranked first under the policy (exact for the policy
    actually run: it *is* this distribution)."""
    return _first_choice(policy, explore, cand, logit(cand.base_p) + cand.mean, rng)


def _first_choice(
    policy: BanditPolicy, explore: ChannelExploration, cand: Candidates, center: F64, rng: np.random.Generator
) -> F64:
    """`center`: the posterior mean of each candidate's logit. Inside the tier rule (the default)
    only the best tier present is drawn, and the epsilon floor is spread over it alone."""
    if policy.cross_tier:
        return _spread(explore, _draws(policy.samples, explore, center, cand.sd, cand.tier, cand.gain, cand.loss, rng))
    tier = cand.tier
    top = tier == np.minimum.reduce(tier)
    if np.count_nonzero(top) == tier.size:
        return _spread(explore, _draws(policy.samples, explore, center, cand.sd, None, cand.gain, cand.loss, rng))
    cols = top.nonzero()[0]
    loss = None if cand.loss is None else cand.loss[cols]
    pi = np.zeros(tier.size)
    pi[cols] = _spread(
        explore, _draws(policy.samples, explore, center[cols], cand.sd[cols], None, cand.gain[cols], loss, rng)
    )
    return pi


def _spread(explore: ChannelExploration, pi: F64) -> F64:
    """Mix in the epsilon floor, spread evenly over the candidates drawn from."""
    if explore.epsilon > 0.0 and pi.size > 1:
        pi *= 1.0 - explore.epsilon
        pi += explore.epsilon / pi.size
    return pi


def _draws(
    samples: int,
    explore: ChannelExploration,
    center: F64,
    sd: F64,
    tier: npt.NDArray[np.int64] | None,
    gain: F64,
    loss: F64 | None,
    rng: np.random.Generator,
) -> F64:
    """Share of the posterior draws each candidate wins; a channel that does not explore takes
    the best at the posterior means."""
    if explore.exploration == 0.0:
        pi = np.zeros(center.size)
        pi[int(_rank_keys(_sigmoid(center), tier, gain, loss).argmax())] = 1.0
        return pi
    return _thompson(samples, -explore.exploration * sd, center, tier, gain, loss, rng)


def _thompson(
    samples: int,
    drop: F64,
    center: F64,
    tier: npt.NDArray[np.int64] | None,
    weight: F64,
    loss: F64 | None,
    rng: np.random.Generator,
) -> F64:
    """Share of `samples` posterior draws each candidate wins, ranked like the server ranks
    (`drop`: minus the exploration times the posterior sd of each candidate's offset).

    All the draws are made (the stream must stay the same), but only the candidates that can win
    one are scored: the best tier, whenever no other candidate can outscore it."""
    n = center.size
    z = rng.standard_normal((samples, n))
    cols: npt.NDArray[np.intp] | None = None
    gap: float | F64 = 0.0
    if tier is not None:
        cols, gap = _contenders(drop, center, tier, weight, loss)
    if cols is not None:
        z, drop, center, weight = z[:, cols], drop[cols], center[cols], weight[cols]
        loss = None if loss is None else loss[cols]
    # sigmoid(center + scale * z) * weight - tier * gap, in place, from the negated logit:
    # negation is exact, so drop * z - center is -(center + scale * z) bit for bit
    z *= drop
    z -= center
    np.exp(z, out=z)
    z += 1.0
    np.divide(1.0, z, out=z)
    z *= weight
    if loss is not None:
        z -= loss
    if not isinstance(gap, float) or gap:
        z -= gap
    winners = z.argmax(axis=1)
    out: F64 = np.bincount(winners if cols is None else cols[winners], minlength=n) / samples
    return out


def _contenders(
    drop: F64, center: F64, tier: npt.NDArray[np.int64], weight: F64, loss: F64 | None
) -> tuple[npt.NDArray[np.intp] | None, float | F64]:
    """The positions that can win a draw (None: all of them), and the tier gap to subtract there.

    A draw's key is p x weight - tier x gap with p in [0, 1] (never NaN when every center and scale
    is finite). With every weight in [0, gap / 2), a better tier's key is at least -its tier x gap
    and a worse tier's at most gap / 2 below that (rounding is monotonic): only the best tier can
    win, and the argmax over it is the argmax over all. Otherwise (or with a loss term, which this
    bound does not cover) all candidates are scored."""
    best = int(np.minimum.reduce(tier))
    top = tier == best
    if np.count_nonzero(top) == tier.size:
        return None, best * _TIER_GAP
    if (
        loss is None
        and np.minimum.reduce(weight) >= 0.0
        and np.maximum.reduce(weight) < _TIER_GAP / 2
        and math.isfinite(center @ drop)  # inf or NaN anywhere makes it so (or an overflow: no matter)
    ):
        return top.nonzero()[0], best * _TIER_GAP
    return None, tier * np.float64(_TIER_GAP)


def choose(policy: BanditPolicy, explore: ChannelExploration, cand: Candidates, rng: np.random.Generator) -> Choice:
    """The distribution, and an order drawn from it without replacement (Plackett-Luce via the
    Gumbel trick), so that walking the order past exhausted budgets stays a draw from the policy
    restricted to the offers still available."""
    center = logit(cand.base_p) + cand.mean
    adjusted = _sigmoid(center)
    pi = _first_choice(policy, explore, cand, center, rng)
    # candidates the policy never picks first follow, in the greedy order of their posterior mean
    fallback = _rank_keys(adjusted, cand.tier, cand.gain, cand.loss)
    # keys log(pi) + gumbel, negated for an ascending sort: with g = log(-log(u)) = -gumbel, that
    # is g - log(pi) exactly (IEEE rounding is symmetric)
    g = np.log(rng.uniform(1e-300, 1.0, pi.size))
    np.negative(g, out=g)
    np.log(g, out=g)
    if np.count_nonzero(pi) == pi.size:  # pi is never NaN: all drawable
        drawn = g - np.log(pi)
    else:
        with np.errstate(divide="ignore"):
            drawn = -np.where(pi > 0, np.log(pi) - g, -np.inf)
    order = np.lexsort((-fallback, drawn))
    return Choice(pi, order.astype(np.intp, copy=False), adjusted)


def taken_probability(pi: F64, taken: int, skipped: list[int]) -> float:
    """Probability with which candidate `taken` (an index into `pi`) was drawn at its place in
    the walk, given the candidates before it (`skipped`: refused by a budget or a per-customer
    cap, or awarded in an earlier slot)."""
    rest = 1.0 - float(pi[skipped].sum()) if skipped else 1.0
    if rest <= 1e-12:
        return 1.0  # every candidate with mass was refused; the remainder is a fixed order
    return min(1.0, float(pi[taken]) / rest)
