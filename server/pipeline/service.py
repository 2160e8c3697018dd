"""The decision pipeline, free of any transport: `DecisionService.decide` runs the stages in order.

    validate -> read (one round trip) -> eligibility -> scoring -> arbitration -> exploration
    -> award (reserve, commit, release) -> explain -> log

Each stage is one public function in its own module of server.pipeline over the per-request
context (server.pipeline.context); state is reached only through the StateStore protocol
(server.state.store), so the whole pipeline runs on InMemoryStateStore in unit tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from server.config import Settings
from server.domain import ConversionReport, DecideRequest, Decision, NoOfferReason, OutcomeReport, OutcomeResult
from server.ids import DecisionIds
from server.metrics import Metrics
from server.pipeline.arbitration import arbitrate
from server.pipeline.award import award
from server.pipeline.context import (
    UNAVAILABLE_STATUSES,
    CandidateStatus,
    LiveConfig,
    Positions,
    RequestContext,
    Scores,
    Services,
    Stage,
)
from server.pipeline.control_groups import in_holdout
from server.pipeline.conversion import record_conversion
from server.pipeline.delivery import DELIVERED, Delivery
from server.pipeline.eligibility import eligibility
from server.pipeline.explain import no_offer_reason, ranked_offers, suppressed
from server.pipeline.exploration import explore, taken_probabilities
from server.pipeline.guard import CircuitBreaker, ServiceUnavailable, bounded
from server.pipeline.idempotency import check_request_repeat, request_fingerprint
from server.pipeline.outcome import report_outcome
from server.pipeline.record import candidate_records, log_decision
from server.pipeline.scoring import choose_model, score
from server.pipeline.validate import validate_request
from server.state.records import NO_CANDIDATES, decode_decision
from server.state.store import CustomerState, LogSink, StateStore, StateUnavailable

__all__ = ["UNAVAILABLE_STATUSES", "Clock", "DecisionService", "LiveConfig", "ServiceUnavailable", "validate_request"]

log = logging.getLogger(__name__)
Clock = Callable[[], float]
# seals the ids of decisions made before the shared secret is known: all degraded, never reported on
_UNSHARED = DecisionIds.random()


class DecisionService:
    def __init__(
        self,
        store: StateStore,
        writer: LogSink,
        metrics: Metrics,
        settings: Settings,
        clock: Clock = time.time,
        new_id: Callable[[str, float], str] | None = None,
        ids: DecisionIds | None = None,
    ) -> None:
        """`ids`: the decision-id codec with the secret every replica shares; None until it is
        known (the Worker sets it once read from Redis), and decisions degrade meanwhile.
        `new_id`: (customer id, now) -> decision id, by default `ids.new`; it seeds the bandit's
        draw, so tests fix it (with ids that `ids` opens, for outcomes to be reported)."""
        self.store = store
        self.writer = writer
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        self.new_id = new_id
        self.ids = ids
        breaker = CircuitBreaker(metrics, settings.breaker_failures, settings.breaker_probe_seconds)
        self.services = Services(store, writer, metrics, settings, breaker)
        self.live: LiveConfig | None = None

    # -- Decide ------------------------------------------------------------------------------
    async def decide(
        self, req: DecideRequest, *, deadline: float | None = None, delivery: Delivery = DELIVERED, caller: str = ""
    ) -> Decision:
        """`deadline`: the caller's, in event-loop time (None: it sent none); the server's
        decision_timeout_seconds caps it. `delivery`: settled by the transport once it knows
        whether the answer reached the caller; the decision's log record waits for it.
        `caller`: who asks ("" on a server without authentication), kept with an award: only it
        (or an admin) may report the outcome."""
        started = time.perf_counter()
        k = validate_request(req, self.settings.max_offers_limit)
        live, ids = self.live, self.ids
        now = self.clock()
        decision_id = (self.new_id or (ids or _UNSHARED).new)(req.customer_id, now)
        if live is None or ids is None:
            # no catalog yet (or none valid), or no id another replica could open: fail closed
            decision = Decision(decision_id, (), NoOfferReason.DEGRADED, "", "", degraded=True)
        else:
            loop_now = asyncio.get_running_loop().time()
            cap = loop_now + self.settings.decision_timeout_seconds
            catalog = live.catalog
            ctx = RequestContext(req, live, catalog, catalog.views[req.channel], now, decision_id, k, caller=caller)
            ctx.scorer, ctx.model_role = choose_model(live, req.customer_id)
            ctx.deadline = cap if deadline is None else min(deadline, cap)
            ctx.redis_until = loop_now + self.settings.redis_timeout_seconds
            ctx.delivery = delivery
            decision = await self._decide(ctx)
        self.metrics.decisions.labels(req.channel.value, decision.no_offer_reason.value).inc()
        self.metrics.decision_latency.labels(req.channel.value).observe(time.perf_counter() - started)
        return decision

    async def _decide(self, ctx: RequestContext) -> Decision:
        req, catalog = ctx.req, ctx.catalog
        state = await self._read(ctx)
        if isinstance(state, Decision):
            return state  # degraded, or the answer to an earlier request with this id
        vector = state.vector
        if vector is None or state.vector_schema not in ctx.live.readable_versions:
            return await self._no_offer(ctx, NoOfferReason.UNKNOWN_CUSTOMER)
        eligible = eligibility(
            catalog,
            req.channel,
            vector.tolist(),
            req.context,
            ctx.now,
            events=set(req.events),
            customer_id=req.customer_id,
            history=state.history,
            segments=ctx.segments,
        )
        if eligible is None:
            return await self._no_offer(ctx, NoOfferReason.OPTED_OUT)
        # after consent, so that treated and control customers are comparable for lift
        ctx.control_group = in_holdout(catalog.control_salt, req.customer_id, catalog.control_fraction)
        if not ctx.view.offers:
            return await self._no_offer(
                ctx, NoOfferReason.CONTROL_GROUP if ctx.control_group else NoOfferReason.NO_ELIGIBLE_OFFER
            )
        status, room = eligible.status, eligible.room
        scores = score(ctx, status, vector)
        self.metrics.candidates.observe(scores.candidates.size)
        ranked = arbitrate(ctx, status, scores)
        ranked, ctx.exploration = explore(ctx, ranked, scores)
        if ctx.control_group:
            return await self._hold_back(ctx, status, ranked, room, scores)
        if ctx.short_of_time(self.settings.deadline_margin_seconds):
            return self._empty(ctx, NoOfferReason.DEADLINE)  # nothing spent on a caller about to go
        if ranked.size or req.request_id:
            # once the award starts it runs to its end and is logged even if the caller goes away:
            # cancelled mid-script, a reservation would stay counted but never logged nor released
            return await asyncio.shield(self._award(ctx, status, ranked, room, scores))
        return self._answer(ctx, status, ranked, scores, [], committed=False)

    async def _award(
        self, ctx: RequestContext, status: CandidateStatus, ranked: Positions, room: int | None, scores: Scores
    ) -> Decision:
        """Stage 7, award, then the answer and its log record."""
        outcome = await award(ctx, self.services, status, ranked, room, scores)
        if outcome.degraded:
            return self._empty(ctx, NoOfferReason.DEGRADED, degraded=True)
        if outcome.replay_of is not None:
            return await self._replay(ctx.req.customer_id, outcome.replay_of)
        return self._answer(ctx, status, ranked, scores, outcome.awarded, committed=True)

    def _answer(
        self,
        ctx: RequestContext,
        status: CandidateStatus,
        ranked: Positions,
        scores: Scores,
        awarded: list[int],
        *,
        committed: bool,
    ) -> Decision:
        """Stage 8, explain and log."""
        req, catalog = ctx.req, ctx.catalog
        taken = taken_probabilities(ctx.exploration, awarded)
        decision = Decision(
            decision_id=ctx.decision_id,
            offers=ranked_offers(ctx, awarded, scores, taken),
            no_offer_reason=no_offer_reason(ctx, status, awarded),
            model_version=ctx.scorer.version,
            catalog_version=catalog.version,
            suppressed=suppressed(ctx, status) if req.explain else (),
        )
        log_decision(
            ctx, self.services, decision, candidate_records(ctx, status, scores, awarded, taken), keep=committed
        )
        return decision

    async def _read(self, ctx: RequestContext) -> CustomerState | Decision:
        """Stage 2: everything the decision reads, in one round trip."""
        req = ctx.req
        if ctx.short_of_time(self.settings.deadline_margin_seconds):
            return self._empty(ctx, NoOfferReason.DEADLINE)
        if not self.services.breaker.allow():
            return self._empty(ctx, NoOfferReason.DEGRADED, degraded=True)
        window = ctx.catalog.contact_policy.window_seconds
        try:
            ctx.state = state = await bounded(
                self.store.read(req.customer_id, req.channel.value, ctx.now, window, req.request_id),
                ctx.redis_until,
                self.services.breaker,
            )
        except StateUnavailable as err:
            self.metrics.redis_errors.labels("read").inc()
            log.warning("feature/contact read failed, degrading: %s", err)
            return self._empty(ctx, NoOfferReason.DEGRADED, degraded=True)
        if state.replay_decision_id is not None:
            check_request_repeat(req, ctx.k, state.replay_fingerprint)
            return await self._replay(req.customer_id, state.replay_decision_id)
        return state

    async def _no_offer(self, ctx: RequestContext, reason: NoOfferReason) -> Decision:
        """A decision that ends before the award stage (nothing to award, no commit script)."""
        return await self._once(ctx, lambda: self._empty(ctx, reason))

    async def _hold_back(
        self, ctx: RequestContext, status: CandidateStatus, ranked: Positions, room: int | None, scores: Scores
    ) -> Decision:
        """Universal control group: nothing is awarded, but what would have been is logged."""
        ctx.would_offer = [ctx.view.offer_ids[p] for p in ranked[: ctx.k if room is None else min(ctx.k, room)]]
        status.drop(ranked, Stage.RANKED_OUT)
        return await self._once(ctx, lambda: self._answer(ctx, status, ranked, scores, [], committed=False))

    async def _once(self, ctx: RequestContext, answer: Callable[[], Decision]) -> Decision:
        """`answer()`, for a decision no commit script records. With a request id the id is claimed
        first, so a repeat racing this call is its replay (or a conflict), not a second decision."""
        if not ctx.req.request_id:
            return answer()
        # shielded as the award is: a claim whose answer is never logged would leave every repeat
        # waiting for it until the request id expires
        return await asyncio.shield(self._claim(ctx, answer))

    async def _claim(self, ctx: RequestContext, answer: Callable[[], Decision]) -> Decision:
        req = ctx.req
        if ctx.short_of_time(self.settings.deadline_margin_seconds):
            return self._empty(ctx, NoOfferReason.DEADLINE)  # never remembered: a retry decides anew
        claim = self.store.claim_request(
            req.customer_id,
            req.request_id,
            ctx.decision_id,
            request_fingerprint(req, ctx.k),
            self.settings.request_id_ttl_seconds,
        )
        try:
            earlier = await bounded(claim, ctx.redis_until, self.services.breaker)
        except StateUnavailable as err:
            # unclaimed, a repeat would be decided again and logged twice: answer as any decision
            # whose state write failed (degraded answers are never remembered for the request id)
            self.metrics.redis_errors.labels("claim").inc()
            log.warning("request id claim failed, degrading: %s", err)
            return self._empty(ctx, NoOfferReason.DEGRADED, degraded=True)
        if earlier is None:
            return answer()
        decision_id, fingerprint = earlier
        check_request_repeat(req, ctx.k, fingerprint)
        return await self._replay(req.customer_id, decision_id)

    def _empty(self, ctx: RequestContext, reason: NoOfferReason, *, degraded: bool = False) -> Decision:
        decision = Decision(
            decision_id=ctx.decision_id,
            offers=(),
            no_offer_reason=reason,
            model_version=ctx.scorer.version,
            catalog_version=ctx.catalog.version,
            degraded=degraded,
        )
        # degraded ones too, flagged: the log must show every answer (export, reconcile and the
        # simulation skip them), but log_decision never stores them for request-id replay
        log_decision(ctx, self.services, decision, NO_CANDIDATES, keep=False)
        return decision

    async def _replay(self, customer_id: str, decision_id: str) -> Decision:
        # the original's answer is written by the log writer within log_flush_seconds
        for _ in range(50):
            try:
                raw = await self.store.replay(customer_id, decision_id)
            except StateUnavailable as err:
                raise ServiceUnavailable(f"request_id repeat: could not read decision {decision_id}: {err}") from err
            if raw is not None:
                return decode_decision(raw)
            await asyncio.sleep(0.02)
        raise ServiceUnavailable(f"request_id repeat: decision {decision_id} is still being written; retry")

    # -- ReportOutcome -----------------------------------------------------------------------
    async def report_outcome(self, report: OutcomeReport, *, caller: str = "", admin: bool = False) -> OutcomeResult:
        """`caller`: who reports ("" on a server without authentication); only the caller that
        made the decision, or an `admin`, may report its outcomes (server.pipeline.outcome)."""
        return await report_outcome(
            self.services, self.live, self.ids, report, caller=caller, admin=admin, now=self.clock()
        )

    # -- RecordConversion --------------------------------------------------------------------
    async def record_conversion(self, report: ConversionReport, *, source: str = "grpc") -> OutcomeResult:
        """Keep a customer's conversion once per event id (server.pipeline.conversion)."""
        return await record_conversion(self.services, report, now=self.clock(), source=source)
