"""The per-request context the decision stages share, and the typed candidate status.

`LiveConfig` is what the hot path reads from memory, swapped as one reference when a catalog,
schema, model or arms change. `RequestContext` is one decision's inputs (request, live config,
time, id, effective max_offers) plus what the read stage found. `CandidateStatus` holds, per
offer on the channel, the stage at which it left the pipeline (vectorised: one int8 per offer)
and any detail for explain; every stage changes it through its methods only.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from server.catalog.compiled import Catalog, ChannelView
from server.config import Settings
from server.domain import DecideRequest, NoOfferReason
from server.features.schema import FeatureSchema
from server.learning.posterior import NO_ARMS, Arms
from server.metrics import Metrics
from server.models.champion import Challenger
from server.models.scorers import PriorScorer, Scorer
from server.pipeline.delivery import DELIVERED, Delivery
from server.pipeline.guard import CircuitBreaker
from server.state.store import CustomerState, LogSink, StateStore

F64 = npt.NDArray[np.float64]
PRIOR: Final[Scorer] = PriorScorer()  # stateless: one for every context built before its model is chosen
Positions = npt.NDArray[np.intp]


@dataclass(frozen=True)
class LiveConfig:
    """What the hot path reads, swapped as one reference when a catalog or schema changes."""

    catalog: Catalog
    schema: FeatureSchema
    readable_versions: frozenset[int]  # vector schema versions this catalog's indices apply to
    scorer: Scorer = field(default_factory=PriorScorer)  # the champion: the live model
    arms: Arms = NO_ARMS
    challenger: Challenger | None = None  # a second model for a share of customers, when on


@dataclass(frozen=True, slots=True)
class Services:
    """What the stages use beyond the request: shared state, the log, metrics and settings."""

    store: StateStore
    writer: LogSink
    metrics: Metrics
    settings: Settings
    breaker: CircuitBreaker


class Stage:
    """Why a candidate left the pipeline, in pipeline order; the furthest stage any candidate
    reached names the decision's no-offer reason. Plain ints, not an IntEnum: numpy compares
    and assigns them at C speed, where an enum member costs attribute probing on every use."""

    ALIVE: Final = 0
    NOT_LIVE: Final = 1
    NOT_FIRED: Final = 2
    NOT_TARGETED: Final = 3
    INELIGIBLE: Final = 4
    HELD_OUT: Final = 5
    CONTACT: Final = 6
    BELOW: Final = 7
    BUDGET: Final = 8
    RANKED_OUT: Final = 9


STAGE_REASON: dict[int, NoOfferReason] = {
    Stage.NOT_LIVE: NoOfferReason.NO_ELIGIBLE_OFFER,
    Stage.NOT_FIRED: NoOfferReason.NO_ELIGIBLE_OFFER,
    Stage.NOT_TARGETED: NoOfferReason.NO_ELIGIBLE_OFFER,
    Stage.INELIGIBLE: NoOfferReason.NO_ELIGIBLE_OFFER,
    Stage.HELD_OUT: NoOfferReason.CONTROL_GROUP,
    Stage.CONTACT: NoOfferReason.CONTACT_POLICY,
    Stage.BELOW: NoOfferReason.BELOW_THRESHOLD,
    Stage.BUDGET: NoOfferReason.BUDGET_EXHAUSTED,
}
STAGE_STATUS: dict[int, str] = {
    Stage.NOT_LIVE: "campaign not live now",
    Stage.NOT_FIRED: "trigger event not present",
    Stage.NOT_TARGETED: "customer not in a target group of the campaign",
    Stage.INELIGIBLE: "offer eligibility rule not met",
    Stage.HELD_OUT: "customer in the campaign's control group",
    Stage.CONTACT: "contact policy",
    Stage.BELOW: "expected value below the catalog minimum",
    Stage.BUDGET: "budget exhausted",
    Stage.RANKED_OUT: "ranked below the offers returned",
}
# statuses of offers the rules allowed but history, a control group or a budget kept from the
# customer: a dataset row cannot rebuild them, so `nbo export` lists them (`unavailable`)
UNAVAILABLE_STATUSES = tuple(STAGE_STATUS[s] for s in (Stage.HELD_OUT, Stage.CONTACT, Stage.BUDGET))


class CandidateStatus:
    """Per offer position on the channel: its Stage (int8 array) and a note for explain."""

    __slots__ = ("notes", "stage")

    def __init__(self, stage: npt.NDArray[np.int8], notes: dict[int, str] | None = None) -> None:
        self.stage = stage
        self.notes: dict[int, str] = {} if notes is None else notes

    def alive(self) -> Positions:
        return np.flatnonzero(self.stage == Stage.ALIVE)

    def where(self, stage: int) -> Positions:
        return np.flatnonzero(self.stage == stage)

    def still_alive(self, positions: Positions) -> list[int]:
        """Those of `positions` still in the running, in the given order."""
        out: list[int] = positions[self.stage[positions] == Stage.ALIVE].tolist()
        return out

    def drop(self, positions: Positions | list[int], stage: int) -> None:
        """Take candidates out at `stage` (vectorised)."""
        self.stage[positions] = stage

    def drop_one(self, pos: int, stage: int, note: str | None = None) -> None:
        self.stage[pos] = stage
        if note is not None:
            self.notes[pos] = note

    def rank_out(self, positions: list[int], awarded: list[int]) -> None:
        """Those of `positions` still alive and not awarded lost to the offers ranked above them."""
        chosen = set(awarded)
        stage = self.stage
        out = [p for p in positions if p not in chosen and stage[p] == Stage.ALIVE]
        if out:
            stage[out] = Stage.RANKED_OUT

    def texts(self, positions: list[int], chosen: set[int] | frozenset[int] = frozenset()) -> list[str]:
        """Each position's status: "chosen" for those in `chosen`, else its stage's text and note
        ("contact policy: ..."), in one pass: a decision logs a hundred of them, and a call per
        candidate was a visible share of its cost."""
        stage, notes, table = self.stage.tolist(), self.notes, STAGE_STATUS
        out = []
        for p in positions:
            if p in chosen:
                out.append("chosen")
                continue
            base, note = table.get(stage[p], "suppressed"), notes.get(p)
            out.append(f"{base}: {note}" if note else base)
        return out

    def furthest_reason(self) -> NoOfferReason:
        """The no-offer reason named by the furthest stage a candidate reached (ranked-out ones
        aside: they lost to an offer that was then not awarded for another reason)."""
        reached = self.stage[self.stage != Stage.RANKED_OUT]
        if not reached.size:
            return NoOfferReason.NO_ELIGIBLE_OFFER
        return STAGE_REASON.get(int(reached.max()), NoOfferReason.NO_ELIGIBLE_OFFER)

    def logged(self) -> Positions:
        """Candidates that reached scoring, were held out for lift measurement, or were stopped
        by contact policy or later: the ones a decision record lists."""
        return np.flatnonzero((self.stage == Stage.ALIVE) | (self.stage >= Stage.HELD_OUT))


@dataclass(slots=True)
class Scores:
    """Per offer position on the channel (zero where not scored), and the live candidates scored."""

    candidates: Positions  # positions alive when scored (held-out ones are scored but not here)
    propensity: F64
    from_model: npt.NDArray[np.bool_]
    expected: F64
    score: F64


@dataclass(frozen=True, slots=True)
class Exploration:
    """The bandit's draw, by offer position: walk order, first-slot probability, the learned
    propensity (for reasons) and the prior sd of each candidate's offset (kept for the learner)."""

    walk: list[int]
    first_choice: dict[int, float]
    adjusted: dict[int, float]
    prior_sd: dict[int, float]
    # the arm inputs of the candidates (catalog `bandit.inputs`), a row per candidate, kept for
    # the learner with each award; `input_row` maps an offer position to its row
    inputs: npt.NDArray[np.float64] | None = None
    input_row: dict[int, int] = field(default_factory=dict)


NO_EXPLORATION = Exploration([], {}, {}, {})


@dataclass(slots=True)
class RequestContext:
    """One decision's inputs and what the read stage found; later stages add their results."""

    req: DecideRequest
    live: LiveConfig
    catalog: Catalog  # live.catalog
    view: ChannelView  # the catalog's offers on the request's channel
    now: float
    decision_id: str
    k: int  # effective max_offers
    caller: str = ""  # who asked; kept with an award, so only it (or an admin) reports the outcome
    state: CustomerState | None = None
    control_group: bool = False
    would_offer: list[str] = field(default_factory=list)  # universal control group: what it would get
    segments: dict[int, bool] = field(default_factory=dict)  # segment index -> customer is in it
    exploration: Exploration = NO_EXPLORATION
    deadline: float = math.inf  # event-loop time: the caller's deadline, capped by the server's
    redis_until: float = math.inf  # event-loop time: the end of the decision's Redis time budget
    delivery: Delivery = DELIVERED
    # the model that scores this decision (live.scorer, or the challenger for its customers) and
    # its role: "" while no challenger is on, else "champion" or "challenger"
    scorer: Scorer = PRIOR
    model_role: str = ""

    def short_of_time(self, margin: float) -> bool:
        """Less than `margin` left before the deadline: start no Redis call and no award."""
        return asyncio.get_running_loop().time() + margin > self.deadline
