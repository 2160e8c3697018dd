"""Stage 8b: the log — build the decision's typed record (and, for a request id, where its answer
is kept for repeats) and hand both to the log writer, off the request path. The request key was
written before, by the commit script or the service's claim, so that a repeat is recognised at
once; only the answer it points to is written here."""

from __future__ import annotations

from dataclasses import replace

from server.domain import Decision, NoOfferReason
from server.pipeline.context import CandidateStatus, RequestContext, Scores, Services
from server.state.log_writer import Replay
from server.state.records import Candidates, DecisionRecord, encode_decision


def candidate_records(
    ctx: RequestContext, status: CandidateStatus, scores: Scores, awarded: list[int], taken: dict[int, float]
) -> Candidates:
    """The logged candidates: those that reached scoring, were held out for lift measurement, or
    were stopped by contact policy or later."""
    catalog, view = ctx.catalog, ctx.view
    logged = status.logged()
    positions = logged.tolist()
    first_choice = ctx.exploration.first_choice
    offers = [catalog.offers[view.offers[p]] for p in positions]
    return Candidates(
        offer_id=[o.id for o in offers],
        campaign_id=[o.campaign_id for o in offers],
        propensity=scores.propensity[logged].tolist(),
        expected_value=scores.expected[logged].tolist(),
        score=scores.score[logged].tolist(),
        selection_probability=[taken.get(p, first_choice.get(p, 0.0)) for p in positions],
        status=status.texts(positions, set(awarded)),
    )


def log_decision(ctx: RequestContext, svc: Services, decision: Decision, candidates: Candidates, *, keep: bool) -> None:
    """`keep`: the commit script ran, so it created the decision key already if it awarded
    anything (else the key is created here, for a request id's replay only, with its expiry).
    The record waits for the transport to say whether the answer reached the caller
    (ctx.delivery)."""
    req, state = ctx.req, ctx.state
    record = DecisionRecord(
        decision_id=decision.decision_id,
        ts=ctx.now,
        customer_id=req.customer_id,
        channel=req.channel.value,
        placement=req.placement,
        context=dict(req.context),
        events=list(req.events),
        request_id=req.request_id,
        schema_version=state.vector_schema if state else None,
        features=state.vector.tolist() if state is not None and state.vector is not None else None,
        candidates=candidates,
        chosen=[o.offer_id for o in decision.offers],
        no_offer_reason=decision.no_offer_reason.value,
        model_version=decision.model_version,
        catalog_version=decision.catalog_version,
        bandit_version=f"arms-{ctx.live.arms.version}" if ctx.catalog.bandit.enabled else "off",
        degraded=decision.degraded,
        control_group=ctx.control_group,
        would_offer=ctx.would_offer,
        model_role=ctx.model_role,
    )
    # a degraded or out-of-time answer is not remembered: a retry with the same request id
    # deserves a real decision
    forget = decision.degraded or decision.no_offer_reason is NoOfferReason.DEADLINE
    replay = None if forget else _replay(ctx, svc, decision, keep=keep)

    def write(delivered: bool) -> None:
        if not delivered:
            svc.metrics.undelivered.inc()
        svc.writer.decision(record if delivered else replace(record, undelivered=True), replay)

    ctx.delivery.hold(write)


def _replay(ctx: RequestContext, svc: Services, decision: Decision, *, keep: bool) -> Replay | None:
    req = ctx.req
    if not req.request_id:
        return None  # nobody can ask for this answer again
    keys = svc.store.keys
    decision_key = keys.decision(req.customer_id, decision.decision_id)
    if keep and decision.offers:
        # the commit script created the decision key (for outcomes) and the request key; add
        # the full answer
        return Replay(decision_key, encode_decision(decision))
    # nothing was awarded: no outcome can come, so no decision key exists and this answer is
    # kept only as long as the request id that may ask for it again (the request key was
    # written by the commit script or the service's claim)
    return Replay(decision_key, encode_decision(decision), decision_ttl=svc.settings.request_id_ttl_seconds)
