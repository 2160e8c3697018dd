"""The decision pipeline, free of any transport: validate, read, filter, score, arbitrate, award, log.

One Redis round trip reads everything the decision needs. Awarding is two script calls, each in
one Cluster slot: a budget reservation that walks the ranked candidates (skipped when none is
limited), then a commit of the contact history, per-customer caps and request id on the
customer's side; whatever the commit refuses is released again. Filtering
and scoring run over arrays of the channel's offers, never one Redis call per offer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from redis.exceptions import RedisError

from server.catalog.budgets import Period, Reservation, exhausted_reason, has_budget, per_customer_caps, reservation
from server.catalog.rules import Now
from server.catalog.spec import TIER_NAMES, Catalog, ChannelView
from server.config import Settings
from server.domain import (
    CampaignType,
    DecideRequest,
    Decision,
    NoOfferReason,
    NotFoundError,
    OutcomeReport,
    OutcomeResult,
    RankedOffer,
    RequestError,
    SuppressedOffer,
)
from server.features.schema import FeatureSchema
from server.ids import id_problem, new_decision_id, split_decision_id
from server.learning.bandit import NO_ARMS, Arms, choose, decision_rng, posterior, taken_probability
from server.metrics import Metrics
from server.models.scorers import PriorScorer, Scorer, ScoringInput
from server.pipeline.arbitration import rank
from server.pipeline.contact_policy import blocked_offers, channel_room
from server.pipeline.control_groups import in_holdout
from server.state.log_writer import LogWriter, Replay
from server.state.records import (
    NO_CANDIDATES,
    Candidates,
    DecisionRecord,
    OutcomeRecord,
    decode_decision,
    encode_decision,
)
from server.state.redis_store import (
    CAMPAIGN_CAP,
    CHANNEL_CAP,
    OFFER_CAP,
    REPLAY,
    RETRY,
    CustomerState,
    Pick,
    StateStore,
)

log = logging.getLogger(__name__)
Clock = Callable[[], float]

_CONTEXT_KEY = re.compile(r"[a-z_][a-z0-9_]{0,63}")
MAX_EVENTS = 32
MAX_CONTEXT = 64

# Why a candidate left the pipeline, in pipeline order; the furthest stage any candidate reached
# names the decision's no-offer reason.
ALIVE, NOT_LIVE, NOT_FIRED, NOT_TARGETED, INELIGIBLE, HELD_OUT, CONTACT, BELOW, BUDGET, RANKED_OUT = range(10)
_STAGE_REASON = {
    NOT_LIVE: NoOfferReason.NO_ELIGIBLE_OFFER,
    NOT_FIRED: NoOfferReason.NO_ELIGIBLE_OFFER,
    NOT_TARGETED: NoOfferReason.NO_ELIGIBLE_OFFER,
    INELIGIBLE: NoOfferReason.NO_ELIGIBLE_OFFER,
    HELD_OUT: NoOfferReason.CONTROL_GROUP,
    CONTACT: NoOfferReason.CONTACT_POLICY,
    BELOW: NoOfferReason.BELOW_THRESHOLD,
    BUDGET: NoOfferReason.BUDGET_EXHAUSTED,
}
_STAGE_STATUS = {
    NOT_LIVE: "campaign not live now",
    NOT_FIRED: "trigger event not present",
    NOT_TARGETED: "customer not in a target group of the campaign",
    INELIGIBLE: "offer eligibility rule not met",
    HELD_OUT: "customer in the campaign's control group",
    CONTACT: "contact policy",
    BELOW: "expected value below the catalog minimum",
    BUDGET: "budget exhausted",
    RANKED_OUT: "ranked below the offers returned",
}
# statuses of offers the rules allowed but history, a control group or a budget kept from the
# customer: a dataset row cannot rebuild them, so `nbo export` lists them (`unavailable`)
UNAVAILABLE_STATUSES = tuple(_STAGE_STATUS[s] for s in (HELD_OUT, CONTACT, BUDGET))


_AWARD_ATTEMPTS = 2
_REFUSED = {
    CHANNEL_CAP: "channel limit reached",
    OFFER_CAP: "per-customer limit of the offer reached",
    CAMPAIGN_CAP: "per-customer limit of the campaign reached",
}


class ServiceUnavailable(RuntimeError):
    """Shared state cannot be reached; the caller may retry (UNAVAILABLE)."""


@dataclass(frozen=True)
class LiveConfig:
    """What the hot path reads, swapped as one reference when a catalog or schema changes."""

    catalog: Catalog
    schema: FeatureSchema
    readable_versions: frozenset[int]  # vector schema versions this catalog's indices apply to
    scorer: Scorer = field(default_factory=PriorScorer)
    arms: Arms = NO_ARMS


def validate_request(req: DecideRequest, max_offers_limit: int) -> int:
    """Raise RequestError naming the field; return the effective max_offers."""
    if problem := id_problem(req.customer_id):
        raise RequestError("customer_id", problem)
    if req.max_offers < 0:
        raise RequestError("max_offers", f"must be >= 0, got {req.max_offers}")
    if req.max_offers > max_offers_limit:
        raise RequestError("max_offers", f"must be at most {max_offers_limit}, got {req.max_offers}")
    if len(req.context) > MAX_CONTEXT:
        raise RequestError("context", f"at most {MAX_CONTEXT} entries, got {len(req.context)}")
    for key, value in req.context.items():
        if not _CONTEXT_KEY.fullmatch(key):
            raise RequestError(f"context[{key!r}]", "keys are lower_snake_case, at most 64 characters")
        if not math.isfinite(value):
            raise RequestError(f"context[{key!r}]", f"must be finite, got {value}")
    if len(req.events) > MAX_EVENTS:
        raise RequestError("events", f"at most {MAX_EVENTS} events, got {len(req.events)}")
    for i, event in enumerate(req.events):
        if problem := id_problem(event):
            raise RequestError(f"events[{i}]", problem)
    if req.placement and (problem := id_problem(req.placement)):
        raise RequestError("placement", problem)
    if req.request_id and (problem := id_problem(req.request_id, 128)):
        raise RequestError("request_id", problem)
    return req.max_offers or 1


class _Scores(NamedTuple):
    propensity: npt.NDArray[np.float64]
    from_model: npt.NDArray[np.bool_]
    expected: npt.NDArray[np.float64]
    score: npt.NDArray[np.float64]


@dataclass
class _Work:
    """Per-decision scratch state."""

    req: DecideRequest
    live: LiveConfig
    now: float
    decision_id: str
    k: int
    state: CustomerState | None = None
    control_group: bool = False
    would_offer: list[str] = field(default_factory=list)  # universal control group: what it would get
    degraded: bool = False
    notes: dict[int, str] = field(default_factory=dict)  # position -> extra detail for explain
    # the bandit's draw: walk order, first-slot probability and learned propensity per position
    walk: list[int] = field(default_factory=list)
    first_choice: dict[int, float] = field(default_factory=dict)
    adjusted: dict[int, float] = field(default_factory=dict)
    prior_sd: dict[int, float] = field(default_factory=dict)
    segments: dict[int, bool] = field(default_factory=dict)  # segment index -> customer is in it


class DecisionService:
    def __init__(
        self,
        store: StateStore,
        writer: LogWriter,
        metrics: Metrics,
        settings: Settings,
        clock: Clock = time.time,
    ) -> None:
        self.store = store
        self.writer = writer
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        self.live: LiveConfig | None = None

    # -- Decide ------------------------------------------------------------------------------
    async def decide(self, req: DecideRequest) -> Decision:
        started = time.perf_counter()
        try:
            k = validate_request(req, self.settings.max_offers_limit)
        except RequestError as err:
            self.metrics.invalid_requests.labels(err.field.split("[")[0]).inc()
            raise
        live = self.live
        now = self.clock()
        if live is None:
            # no catalog yet (or none valid): fail closed rather than guess
            decision = Decision(
                decision_id=new_decision_id(req.customer_id, now),
                offers=(),
                no_offer_reason=NoOfferReason.DEGRADED,
                model_version="",
                catalog_version="",
                degraded=True,
            )
        else:
            decision = await self._decide(_Work(req, live, now, new_decision_id(req.customer_id, now), k))
        self.metrics.decisions.labels(req.channel.value, decision.no_offer_reason.value).inc()
        self.metrics.decision_latency.labels(req.channel.value).observe(time.perf_counter() - started)
        return decision

    async def _decide(self, w: _Work) -> Decision:
        req, catalog = w.req, w.live.catalog
        policy = catalog.contact_policy
        try:
            w.state = await self.store.read(
                req.customer_id, req.channel.value, w.now, policy.window_seconds, req.request_id
            )
        except RedisError as err:
            self.metrics.redis_errors.labels("read").inc()
            log.warning("feature/contact read failed, degrading: %s", err)
            return self._empty(w, NoOfferReason.DEGRADED, degraded=True)
        if w.state.replay_decision_id is not None:
            return await self._replay(req.customer_id, w.state.replay_decision_id)
        vector = w.state.vector
        if vector is None or w.state.vector_schema not in w.live.readable_versions:
            return self._empty(w, NoOfferReason.UNKNOWN_CUSTOMER)
        consent_at = catalog.consent.get(req.channel)
        if consent_at is not None:
            flag = float(vector[consent_at])
            if (catalog.consent_missing_allows if math.isnan(flag) else flag > 0) is False:
                return self._empty(w, NoOfferReason.OPTED_OUT)
        # after consent, so that treated and control customers are comparable for lift
        w.control_group = in_holdout(catalog.control_salt, req.customer_id, catalog.control_fraction)

        view = catalog.views[req.channel]
        if not view.offers:
            return self._empty(w, NoOfferReason.CONTROL_GROUP if w.control_group else NoOfferReason.NO_ELIGIBLE_OFFER)
        stage = self._filter(w, view, vector)

        alive = np.flatnonzero(stage == ALIVE)
        room = channel_room(policy, req.channel, w.state.history)
        if room == 0 and alive.size:
            stage[alive] = CONTACT
            for pos in alive:
                w.notes[int(pos)] = f"channel limit of {policy.max_per_window[req.channel]} offers reached"
            alive = alive[:0]
        propensity = np.zeros(len(view.offers))
        from_model = np.zeros(len(view.offers), dtype=np.bool_)
        expected = np.zeros(len(view.offers))
        score = np.zeros(len(view.offers))
        ranked: npt.NDArray[np.intp] = alive
        held = np.flatnonzero(stage == HELD_OUT)
        scored = np.concatenate([alive, held]) if held.size else alive
        if scored.size:
            # held-out candidates are scored too, so lift can be measured against their propensity
            p, m = w.live.scorer.score(ScoringInput(catalog, req.channel, vector, req.context, scored))
            propensity[scored], from_model[scored] = p, m
        if alive.size:
            p = propensity[alive]
            ranking = rank(view, alive, p, catalog.min_expected_value)
            expected[alive], score[alive] = ranking.expected_value, ranking.score
            stage[alive[ranking.below]] = BELOW
            ranked = alive[ranking.order]
            if catalog.bandit.enabled and ranked.size:
                ranked = self._explore(w, view, ranked, propensity, from_model)
        self.metrics.candidates.observe(alive.size)

        awarded: list[int] = []
        award_ran = False
        if w.control_group:
            # universal control group: nothing is awarded, but what would have been is logged
            w.would_offer = [
                catalog.offers[view.offers[p]].id for p in ranked[: w.k if room is None else min(w.k, room)]
            ]
            for p in ranked:
                stage[p] = RANKED_OUT
        elif ranked.size or req.request_id:
            outcome = await self._award(w, view, stage, ranked, room, propensity)
            if isinstance(outcome, Decision):
                return outcome
            awarded, award_ran = outcome, True

        taken = self._taken_probabilities(w, ranked, awarded)
        offers = tuple(
            self._ranked_offer(catalog, view, pos, i + 1, _Scores(propensity, from_model, expected, score), w, taken)
            for i, pos in enumerate(awarded)
        )
        if offers:
            reason = NoOfferReason.NONE
        elif w.control_group:
            reason = NoOfferReason.CONTROL_GROUP
        else:
            reached = [s for s in stage.tolist() if s != RANKED_OUT]
            reason = (
                _STAGE_REASON.get(max(reached), NoOfferReason.NO_ELIGIBLE_OFFER)
                if reached
                else (NoOfferReason.NO_ELIGIBLE_OFFER)
            )
        suppressed = self._explain(catalog, view, stage, w) if req.explain else ()
        decision = Decision(
            decision_id=w.decision_id,
            offers=offers,
            no_offer_reason=reason,
            model_version=w.live.scorer.version,
            catalog_version=catalog.version,
            suppressed=suppressed,
        )
        # logged: candidates that reached scoring, were held out for lift measurement, or were
        # stopped by contact policy or later
        logged = np.flatnonzero((stage == ALIVE) | (stage >= HELD_OUT))
        chosen_set = set(awarded)
        ids = [catalog.offers[view.offers[p]].id for p in logged.tolist()]
        records = Candidates(
            offer_id=ids,
            campaign_id=[catalog.offers[view.offers[p]].campaign_id for p in logged.tolist()],
            propensity=propensity[logged].tolist(),
            expected_value=expected[logged].tolist(),
            score=score[logged].tolist(),
            selection_probability=[taken.get(p, w.first_choice.get(p, 0.0)) for p in logged.tolist()],
            status=["chosen" if p in chosen_set else _status(int(stage[p]), w.notes.get(p)) for p in logged.tolist()],
        )
        self._log(w, decision, records, keep=award_ran)
        return decision

    async def _award(
        self,
        w: _Work,
        view: ChannelView,
        stage: npt.NDArray[np.int8],
        ranked: npt.NDArray[np.intp],
        room: int | None,
        propensity: npt.NDArray[np.float64],
    ) -> list[int] | Decision:
        """Reserve budgets, then commit on the customer's side; positions awarded, or a finished
        Decision (degraded or a replay)."""
        catalog = w.live.catalog
        k = w.k if room is None else min(w.k, room)
        period = Period.at(w.now, catalog.timezone)
        by_id = {catalog.offers[view.offers[p]].id: int(p) for p in ranked}
        # a concurrent decision for the same customer may use a per-customer cap between our read
        # and our commit; the commit then writes nothing and the next candidates get one more try
        for attempt in range(_AWARD_ATTEMPTS):
            remaining = [int(p) for p in ranked if stage[p] == ALIVE]
            outcome = await self._award_once(
                w, view, stage, remaining, by_id, k, period, propensity, may_retry=attempt + 1 < _AWARD_ATTEMPTS
            )
            if outcome is not None:
                return outcome
        raise AssertionError("the last attempt never asks for a retry")

    async def _award_once(
        self,
        w: _Work,
        view: ChannelView,
        stage: npt.NDArray[np.int8],
        remaining: list[int],
        by_id: dict[str, int],
        k: int,
        period: Period,
        propensity: npt.NDArray[np.float64],
        *,
        may_retry: bool,
    ) -> list[int] | Decision | None:
        req, catalog = w.req, w.live.catalog
        policy = catalog.contact_policy
        walk: list[Reservation] = []
        budgeted = 0
        for at in remaining:
            offer = catalog.offers[view.offers[at]]
            res = reservation(catalog, offer, req.channel, w.now, period)
            walk.append(res or Reservation(offer.id, ()))
            # a channel capacity check is the same for every offer, so it never needs a longer walk
            budgeted += has_budget(catalog, offer)
            if len(walk) >= k + budgeted:
                break  # a longer walk can only be needed to skip exhausted budgets
        walk_by_id = {r.offer_id: r for r in walk}
        granted: list[str] = [r.offer_id for r in walk[:k]]
        if k > 0 and any(r.checks for r in walk):
            try:
                reserved = await self.store.reserve(period, k, walk)
            except RedisError as err:
                # budgets cannot be checked: award nothing (fail closed)
                self.metrics.redis_errors.labels("reserve").inc()
                log.warning("budget reservation failed, degrading: %s", err)
                return self._empty(w, NoOfferReason.DEGRADED, degraded=True)
            granted = list(reserved.awarded)
            if reserved.refused:
                self.metrics.award_refusals.labels("reserve").inc(len(reserved.refused))
            for offer_id, check_no, used in reserved.refused:
                pos = by_id[offer_id]
                stage[pos] = BUDGET
                w.notes[pos] = exhausted_reason(walk_by_id[offer_id].checks[check_no - 1], used)
        picks = []
        for offer_id in granted:
            pos = by_id[offer_id]
            offer = catalog.offers[view.offers[pos]]
            prior_sd = w.prior_sd.get(pos, catalog.bandit.prior_sd)
            caps = per_customer_caps(catalog, offer)
            picks.append(Pick(offer_id, offer.campaign_id, *caps, float(propensity[pos]), prior_sd))
        try:
            committed = await self.store.commit(
                customer_id=req.customer_id,
                channel=req.channel.value,
                decision_id=w.decision_id,
                request_id=req.request_id,
                now=w.now,
                window_seconds=policy.window_seconds,
                channel_cap=policy.max_per_window.get(req.channel),
                picks=picks,
                may_retry=may_retry and len(walk) > len(granted),
                decision_ttl=self.settings.decision_ttl_seconds,
                request_ttl=self.settings.request_id_ttl_seconds,
                history_ttl=self.settings.contact_history_ttl_seconds,
            )
        except RedisError as err:
            self.metrics.redis_errors.labels("commit").inc()
            log.warning("award commit failed, degrading: %s", err)
            await self._release(period, [walk_by_id[o] for o in granted])
            return self._empty(w, NoOfferReason.DEGRADED, degraded=True)
        if committed.status == REPLAY:
            await self._release(period, [walk_by_id[o] for o in granted])
            return await self._replay(req.customer_id, committed.decision_id)
        if committed.refused:
            self.metrics.award_refusals.labels("commit").inc(len(committed.refused))
            await self._release(period, [walk_by_id[o] for o, _ in committed.refused])
            for offer_id, why in committed.refused:
                pos = by_id[offer_id]
                stage[pos] = CONTACT
                w.notes[pos] = _REFUSED[why]
        if committed.status == RETRY:
            return None
        awarded = [by_id[o] for o in committed.awarded]
        chosen = set(awarded)
        for p in remaining:
            if stage[p] == ALIVE and p not in chosen:
                stage[p] = RANKED_OUT
        return awarded

    async def _release(self, period: Period, reservations: list[Reservation]) -> None:
        limited = [r for r in reservations if r.checks]
        if not limited:
            return
        try:
            await self.store.release(period, limited)
        except RedisError as err:
            # the counters stay high: budgets under-spend (fail closed) until `nbo budgets reconcile`
            self.metrics.redis_errors.labels("release").inc()
            log.warning("releasing %d reservation(s) failed: %s", len(limited), err)

    def _filter(self, w: _Work, view: ChannelView, vector: npt.NDArray[np.float32]) -> npt.NDArray[np.int8]:
        """Stage of each offer on the channel after campaign, eligibility and history checks."""
        req, catalog = w.req, w.live.catalog
        feats = vector.tolist()
        now_parts = Now.from_datetime(datetime.fromtimestamp(w.now, catalog.timezone))
        segment_cache = w.segments

        def in_segment(s: int) -> bool:
            hit = segment_cache.get(s)
            if hit is None:
                hit = segment_cache[s] = catalog.segments[s].rule(feats, req.context, now_parts)
            return hit

        events = set(req.events)
        camp_stage = np.zeros(len(view.campaigns), dtype=np.int8)
        held_camp = np.zeros(len(view.campaigns), dtype=np.bool_)
        for cpos, ci in enumerate(view.campaigns):
            camp = catalog.campaigns[ci]
            if not camp.live(w.now):
                camp_stage[cpos] = NOT_LIVE
            elif camp.type is CampaignType.TRIGGER and not (camp.events & events):
                camp_stage[cpos] = NOT_FIRED
            elif camp.target and not any(in_segment(s) for s in camp.target):
                camp_stage[cpos] = NOT_TARGETED
            elif in_holdout(camp.holdout_salt, req.customer_id, camp.holdout):
                held_camp[cpos] = True
        stage = camp_stage[view.offer_campaign]
        for pos, rule in view.rules:
            if stage[pos] == ALIVE and not rule(feats, req.context, now_parts):
                stage[pos] = INELIGIBLE
        if held_camp.any():
            # held out only where the offer was eligible: the control group of a lift measurement
            stage[(stage == ALIVE) & held_camp[view.offer_campaign]] = HELD_OUT
        assert w.state is not None
        history = w.state.history
        if history.declined_at or history.suppressed_until or history.awards:
            alive = np.flatnonzero(stage == ALIVE)
            offers = [catalog.offers[view.offers[p]] for p in alive]
            ids = [o.id for o in offers]
            caps = [(o.campaign_id, *per_customer_caps(catalog, o)) for o in offers] if history.awards else []
            for i, why in blocked_offers(catalog.contact_policy, history, ids, w.now, caps).items():
                stage[alive[i]] = CONTACT
                w.notes[int(alive[i])] = why
        return stage

    def _explore(
        self,
        w: _Work,
        view: ChannelView,
        ranked: npt.NDArray[np.intp],
        propensity: npt.NDArray[np.float64],
        from_model: npt.NDArray[np.bool_],
    ) -> npt.NDArray[np.intp]:
        """Draw the walk order from the bandit's policy; remember each candidate's probability."""
        policy = w.live.catalog.bandit
        channel = w.req.channel.value
        ids = [view.offer_ids[p] for p in ranked]
        mean, sd, prior = posterior(policy, w.live.arms, channel, ids, from_model[ranked])
        w.prior_sd = {int(p): float(q) for p, q in zip(ranked, prior, strict=True)}
        weight = view.weight[ranked] * view.value[ranked] * view.lever[ranked]
        choice = choose(
            policy,
            policy.on(w.req.channel),
            propensity[ranked],
            mean,
            sd,
            view.tier[ranked],
            weight,
            decision_rng(policy.seed, w.decision_id),
        )
        order = ranked[choice.order]
        w.first_choice = {int(p): float(q) for p, q in zip(ranked, choice.probability, strict=True)}
        w.adjusted = {int(p): float(q) for p, q in zip(ranked, choice.adjusted, strict=True)}
        w.walk = [int(p) for p in order]
        return order

    def _taken_probabilities(self, w: _Work, ranked: npt.NDArray[np.intp], awarded: list[int]) -> dict[int, float]:
        """Probability each awarded offer was drawn with, given what came before it in the walk."""
        if not w.walk:
            return dict.fromkeys(awarded, 1.0)
        index = {p: i for i, p in enumerate(w.walk)}
        pi = np.array([w.first_choice[p] for p in w.walk])
        out = {}
        for pos in awarded:
            before = list(range(index[pos]))
            out[pos] = taken_probability(pi, index[pos], before)
        return out

    def _ranked_offer(
        self,
        catalog: Catalog,
        view: ChannelView,
        pos: int,
        rank_no: int,
        scores: _Scores,
        w: _Work,
        taken: dict[int, float],
    ) -> RankedOffer:
        propensity, from_model, expected, score = scores
        offer = catalog.offers[view.offers[pos]]
        camp = catalog.campaigns[offer.campaign]
        reasons = [f"Campaign: {camp.name} ({TIER_NAMES[camp.tier]})"]
        if camp.type is CampaignType.TRIGGER:
            fired = sorted(camp.events & set(w.req.events))
            reasons.append(f"Triggered by: {', '.join(fired)}")
        matched = [catalog.segments[s].description for s in camp.target if w.segments.get(s)]
        reasons.append(f"Target groups: {', '.join(matched)}" if matched else "Open to all customers")
        p = float(propensity[pos])
        source = "model" if from_model[pos] else "catalog estimate"
        reasons.append(f"Likelihood to accept: {p:.0%} ({source})")
        if pos in w.adjusted and abs(w.adjusted[pos] - p) >= 0.005:
            reasons.append(f"Learned from recent outcomes: {w.adjusted[pos]:.0%}")
        if taken[pos] < 1.0:
            reasons.append(f"Exploring: picked with probability {taken[pos]:.0%}")
        reasons.append(f"Expected value: {expected[pos]:.2f} (value {offer.value:.2f}, cost {offer.cost:.2f})")
        weight = float(view.weight[pos])
        if weight != 1.0:
            reasons.append(f"Channel fit x{weight:g}")
        if offer.lever != 1.0:
            reasons.append(f"Business priority x{offer.lever:g}")
        return RankedOffer(
            offer_id=offer.id,
            campaign_id=camp.id,
            campaign_type=camp.type,
            rank=rank_no,
            propensity=p,
            expected_value=float(expected[pos]),
            score=float(score[pos]),
            selection_probability=taken[pos],
            reasons=tuple(reasons),
            title=offer.title,
            script=offer.script,
        )

    def _explain(
        self, catalog: Catalog, view: ChannelView, stage: npt.NDArray[np.int8], w: _Work
    ) -> tuple[SuppressedOffer, ...]:
        out = []
        for pos, s in enumerate(stage.tolist()):
            if s == ALIVE:
                continue
            offer = catalog.offers[view.offers[pos]]
            out.append(SuppressedOffer(offer.id, offer.campaign_id, _status(s, w.notes.get(pos))))
        return tuple(out)

    def _empty(self, w: _Work, reason: NoOfferReason, *, degraded: bool = False) -> Decision:
        decision = Decision(
            decision_id=w.decision_id,
            offers=(),
            no_offer_reason=reason,
            model_version=w.live.scorer.version,
            catalog_version=w.live.catalog.version,
            degraded=degraded,
        )
        if not degraded:
            self._log(w, decision, NO_CANDIDATES, keep=False)
        return decision

    def _log(self, w: _Work, decision: Decision, records: Candidates, *, keep: bool) -> None:
        req, state = w.req, w.state
        record = DecisionRecord(
            decision_id=decision.decision_id,
            ts=w.now,
            customer_id=req.customer_id,
            channel=req.channel.value,
            placement=req.placement,
            context=dict(req.context),
            events=list(req.events),
            request_id=req.request_id,
            schema_version=state.vector_schema if state else None,
            features=state.vector.tolist() if state is not None and state.vector is not None else None,
            candidates=records,
            chosen=[o.offer_id for o in decision.offers],
            no_offer_reason=decision.no_offer_reason.value,
            model_version=decision.model_version,
            catalog_version=decision.catalog_version,
            bandit_version=f"arms-{w.live.arms.version}" if w.live.catalog.bandit.enabled else "off",
            degraded=decision.degraded,
            control_group=w.control_group,
            would_offer=w.would_offer,
        )
        keys = self.store.keys
        if not req.request_id:
            replay = None  # nobody can ask for this answer again
        elif keep:
            # the commit script created the decision key and the request key; add the full answer
            replay = Replay(keys.decision(req.customer_id, decision.decision_id), encode_decision(decision))
        else:
            # nothing was awarded, so no script ran: remember the answer for repeats here
            replay = Replay(
                keys.decision(req.customer_id, decision.decision_id),
                encode_decision(decision),
                request_key=keys.request(req.customer_id, req.request_id),
                decision_id=decision.decision_id,
                request_ttl=self.settings.request_id_ttl_seconds,
                decision_ttl=self.settings.decision_ttl_seconds,
            )
        self.writer.decision(record, replay)

    async def _replay(self, customer_id: str, decision_id: str) -> Decision:
        # the original's answer is written by the log writer within log_flush_seconds
        for _ in range(50):
            raw = await self.store.replay(customer_id, decision_id)
            if raw is not None:
                return decode_decision(raw)
            await asyncio.sleep(0.02)
        raise ServiceUnavailable(f"request_id repeat: decision {decision_id} is still being written; retry")

    # -- ReportOutcome -----------------------------------------------------------------------
    async def report_outcome(self, report: OutcomeReport) -> OutcomeResult:
        parts = split_decision_id(report.decision_id)
        if parts is None:
            raise RequestError("decision_id", "not a decision id returned by Decide")
        customer_id = parts[1]
        if problem := id_problem(report.offer_id):
            raise RequestError("offer_id", problem)
        if not math.isfinite(report.value) or report.value < 0:
            raise RequestError("value", f"must be finite and >= 0, got {report.value}")
        if report.event_id and (problem := id_problem(report.event_id, 200)):
            raise RequestError("event_id", problem)
        event_id = report.event_id or f"{report.decision_id}:{report.offer_id}:{report.outcome.value}"
        live = self.live
        policy = live.catalog.contact_policy if live else None
        now = self.clock()
        try:
            result = await self.store.record_outcome(
                customer_id=customer_id,
                decision_id=report.decision_id,
                offer_id=report.offer_id,
                outcome=report.outcome.value,
                event_id=event_id,
                now=now,
                event_ttl=self.settings.outcome_event_ttl_seconds,
                max_presented=policy.max_presented_without_response if policy else 3,
                suppression_seconds=policy.suppression_seconds if policy else 30 * 86400,
                history_ttl=self.settings.contact_history_ttl_seconds,
            )
        except RedisError as err:
            self.metrics.redis_errors.labels("outcome").inc()
            raise ServiceUnavailable(f"could not record the outcome: {err}") from err
        if result.status == -1:
            self.metrics.outcomes.labels(report.outcome.value, "not_found").inc()
            raise NotFoundError(f"decision_id: no decision {report.decision_id!r} (unknown or expired)")
        if result.status == -2:
            self.metrics.outcomes.labels(report.outcome.value, "invalid").inc()
            raise RequestError("offer_id", f"offer {report.offer_id!r} was not offered in this decision")
        recorded = result.status == 1
        self.metrics.outcomes.labels(report.outcome.value, "recorded" if recorded else "duplicate").inc()
        if recorded:
            self.writer.outcome(
                OutcomeRecord(
                    event_id=event_id,
                    decision_id=report.decision_id,
                    customer_id=customer_id,
                    offer_id=report.offer_id,
                    outcome=report.outcome.value,
                    value=report.value,
                    ts=now,
                    channel=result.channel,
                    propensity=result.propensity,
                    prior_sd=result.prior_sd,
                )
            )
        return OutcomeResult(recorded=recorded, duplicate=not recorded)


def _status(stage: int, note: str | None) -> str:
    base = _STAGE_STATUS.get(stage, "suppressed")
    return f"{base}: {note}" if note else base
