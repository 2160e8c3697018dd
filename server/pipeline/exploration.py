"""Stage 5: the bandit's policy over the ranked candidates.

The walk order is drawn from the policy (seeded by the decision id, so a decision is
reproducible); every candidate's first-slot probability is kept, so the logged selection
probabilities are exact. Tiers still rank first: exploration stays inside the best tier present
unless the catalog's `bandit.cross_tier` asks otherwise.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from server.learning.arm_inputs import input_rows
from server.learning.bandit import Candidates, choose, decision_rng, taken_probability
from server.learning.posterior import posterior_at
from server.pipeline.context import Exploration, RequestContext, Scores

Positions = npt.NDArray[np.intp]


def explore(ctx: RequestContext, ranked: Positions, scores: Scores) -> tuple[Positions, Exploration]:
    """The walk order (positions) drawn from the bandit's policy, and the draw's probabilities."""
    policy = ctx.catalog.bandit
    if not policy.enabled or not ranked.size:
        return ranked, ctx.exploration
    view = ctx.view
    known = scores.from_model[ranked]
    inputs = None
    if policy.inputs:
        inputs = input_rows(policy, _vector(ctx), ctx.req.context, scores.propensity[ranked])
    mean, sd, prior = posterior_at(policy, ctx.live.arms, ctx.req.channel.value, view.offer_ids, ranked, known, inputs)
    cand = Candidates(
        scores.propensity[ranked],
        mean,
        sd,
        view.tier[ranked],
        view.gain[ranked],
        view.loss[ranked] if view.margin else None,
    )
    choice = choose(policy, policy.on(ctx.req.channel), cand, decision_rng(policy.seed, ctx.decision_id))
    order = ranked[choice.order]
    positions = ranked.tolist()
    drawn = Exploration(
        walk=order.tolist(),
        first_choice=dict(zip(positions, choice.probability.tolist(), strict=True)),
        adjusted=dict(zip(positions, choice.adjusted.tolist(), strict=True)),
        prior_sd=dict(zip(positions, prior.tolist(), strict=True)),
        inputs=inputs,
        input_row={p: i for i, p in enumerate(positions)} if inputs is not None else {},
    )
    return order, drawn


def _vector(ctx: RequestContext) -> npt.NDArray[np.float32] | None:
    """The customer's features, if they are laid out as the catalog's schema says."""
    state = ctx.state
    if state is None or state.vector is None or state.vector_schema != ctx.catalog.schema_version:
        return None
    return state.vector


def taken_probabilities(drawn: Exploration, awarded: list[int]) -> dict[int, float]:
    """Probability each awarded offer was drawn with, given what came before it in the walk."""
    if not drawn.walk:
        return dict.fromkeys(awarded, 1.0)
    index = {p: i for i, p in enumerate(drawn.walk)}
    pi = np.array([drawn.first_choice[p] for p in drawn.walk])
    return {pos: taken_probability(pi, index[pos], list(range(index[pos]))) for pos in awarded}
