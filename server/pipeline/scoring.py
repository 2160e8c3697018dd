"""Stage 4: one vectorised model call for every candidate still in the running.

Candidates held out by a campaign control group are scored too, so that lift can be measured
against their propensity. While a challenger is on, `choose_model` picks the model of the
decision by a salted hash of the customer id (the one control groups use): the same customer
meets the same model on every replica and after restarts, another salt draws another split.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from server.models.champion import CHALLENGER, CHAMPION
from server.models.scorers import Scorer, ScoringInput
from server.pipeline.context import CandidateStatus, LiveConfig, RequestContext, Scores, Stage
from server.pipeline.control_groups import bucket


def choose_model(live: LiveConfig, customer_id: str) -> tuple[Scorer, str]:
    """The scorer that decides for this customer and its role ("" while no challenger is on)."""
    challenger = live.challenger
    if challenger is None:
        return live.scorer, ""
    if bucket(challenger.salt, customer_id) < challenger.share:
        return challenger.scorer, CHALLENGER
    return live.scorer, CHAMPION


def score(ctx: RequestContext, status: CandidateStatus, features: npt.NDArray[np.float32]) -> Scores:
    """Propensity (and whether a model gave it) per offer position; zero where not scored."""
    n = status.stage.size
    alive = status.alive()
    scores = Scores(alive, np.zeros(n), np.zeros(n, dtype=np.bool_), np.zeros(n), np.zeros(n))
    held = status.where(Stage.HELD_OUT)
    scored = np.concatenate([alive, held]) if held.size else alive
    if scored.size:
        req = ctx.req
        p, m = ctx.scorer.score(ScoringInput(ctx.live.catalog, req.channel, features, req.context, scored))
        scores.propensity[scored], scores.from_model[scored] = p, m
    return scores
