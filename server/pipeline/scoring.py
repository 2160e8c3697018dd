"""Stage 4: one vectorised model call for every candidate still in the running.

Candidates held out by a campaign control group are scored too, so that lift can be measured
against their propensity.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from server.models.scorers import ScoringInput
from server.pipeline.context import CandidateStatus, RequestContext, Scores, Stage


def score(ctx: RequestContext, status: CandidateStatus, features: npt.NDArray[np.float32]) -> Scores:
    """Propensity (and whether a model gave it) per offer position; zero where not scored."""
    n = status.stage.size
    alive = status.alive()
    scores = Scores(alive, np.zeros(n), np.zeros(n, dtype=np.bool_), np.zeros(n), np.zeros(n))
    held = status.where(Stage.HELD_OUT)
    scored = np.concatenate([alive, held]) if held.size else alive
    if scored.size:
        req = ctx.req
        p, m = ctx.live.scorer.score(ScoringInput(ctx.live.catalog, req.channel, features, req.context, scored))
        scores.propensity[scored], scores.from_model[scored] = p, m
    return scores
