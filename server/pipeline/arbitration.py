"""Arbitration: campaign tier first, then P x C x V x L inside a tier (or, with the catalog's
`arbitration.value: margin`, the expected margin C x L x (P x value - cost)).

P is the propensity, C the offer's weight on the channel, V its value and L its business lever.
The expected value P x value - cost must reach the catalog's minimum, else the offer is below
threshold. Ties break on campaign priority, then on catalog order, so rankings are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from server.catalog.compiled import ChannelView
from server.pipeline.context import CandidateStatus, RequestContext, Scores, Stage


@dataclass(frozen=True, slots=True)
class Ranking:
    order: npt.NDArray[np.intp]  # indices into the candidate arrays, best first, threshold cleared
    below: npt.NDArray[np.intp]  # indices of candidates below the threshold
    expected_value: npt.NDArray[np.float64]
    score: npt.NDArray[np.float64]


def rank(
    view: ChannelView,
    positions: npt.NDArray[np.intp],
    propensity: npt.NDArray[np.float64],
    min_expected_value: float,
) -> Ranking:
    value = view.value[positions]
    expected = propensity * value - view.cost[positions]
    if view.margin:
        score = propensity * view.gain[positions] - view.loss[positions]
    else:
        score = propensity * view.weight[positions] * value * view.lever[positions]
    ok = expected >= min_expected_value
    idx = np.flatnonzero(ok)
    kept = positions[idx]
    # lexsort sorts by the last key first: tier asc, score desc, then priority desc and position
    # asc, which view.tie_rank orders in one key
    order = idx[np.lexsort((view.tie_rank[kept], -score[idx], view.tier[kept]))]
    return Ranking(order=order, below=np.flatnonzero(~ok), expected_value=expected, score=score)


def arbitrate(ctx: RequestContext, status: CandidateStatus, scores: Scores) -> npt.NDArray[np.intp]:
    """Stage 6: rank the scored candidates (positions, best first); those below the catalog's
    minimum expected value leave at Stage.BELOW. Fills expected value and score."""
    alive = scores.candidates
    if not alive.size:
        return alive
    ranking = rank(ctx.view, alive, scores.propensity[alive], ctx.catalog.min_expected_value)
    scores.expected[alive], scores.score[alive] = ranking.expected_value, ranking.score
    status.drop(alive[ranking.below], Stage.BELOW)
    return alive[ranking.order]
