"""Stage 7: award — reserve budgets walking the ranked list, commit on the customer's side, and
give back whatever the commit refused.

Two script calls, each in one Cluster slot: a budget reservation that walks the ranked
candidates (skipped when none is limited), then a commit of the contact history, per-customer
caps and request id. A reservation the commit refuses is released again, so counters end equal
to the awards returned. A concurrent decision for the same customer may use a per-customer cap
between our read and our commit; the commit then writes nothing and the next candidates get one
more try. A request id already decided is a replay of that decision, or, if it was decided for a
different request, ConflictError (after every reservation is given back).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from server.catalog.budgets import Period, Reservation, exhausted_reason, has_budget, per_customer_caps, reservation
from server.learning.arm_inputs import encode_inputs
from server.pipeline.context import CandidateStatus, Positions, RequestContext, Scores, Services, Stage
from server.pipeline.guard import bounded
from server.pipeline.idempotency import check_request_repeat, request_fingerprint
from server.state.store import CAMPAIGN_CAP, CHANNEL_CAP, OFFER_CAP, REPLAY, RETRY, Committed, Pick, StateUnavailable

log = logging.getLogger(__name__)

_AWARD_ATTEMPTS = 2
_REFUSED = {
    CHANNEL_CAP: "channel limit reached",
    OFFER_CAP: "per-customer limit of the offer reached",
    CAMPAIGN_CAP: "per-customer limit of the campaign reached",
}


# not frozen: one is made per request, and a frozen dataclass's __init__ costs a microsecond
@dataclass(slots=True)
class AwardOutcome:
    """Positions awarded; or degraded (state unreachable: send nothing); or the request id was
    already decided (`replay_of`: that decision's id)."""

    awarded: list[int]
    degraded: bool = False
    replay_of: str | None = None


_DEGRADED = AwardOutcome([], degraded=True)


# not frozen: one is made per request, and a frozen dataclass's __init__ costs a microsecond
@dataclass(slots=True)
class _Plan:
    """What one award works on: how many may be awarded, the budget period, offer id -> position,
    the scores (propensities are kept for the learner) and the candidates' status."""

    k: int
    period: Period
    by_id: dict[str, int]
    scores: Scores
    status: CandidateStatus


async def award(
    ctx: RequestContext, svc: Services, status: CandidateStatus, ranked: Positions, room: int | None, scores: Scores
) -> AwardOutcome:
    """Award up to min(max_offers, channel room) of `ranked`, in order; candidates refused on the
    way leave at Stage.BUDGET or Stage.CONTACT, those not reached at Stage.RANKED_OUT."""
    order = ranked.tolist()
    view = ctx.view
    plan = _Plan(
        k=ctx.k if room is None else min(ctx.k, room),
        period=Period.at(ctx.now, ctx.catalog.timezone),
        by_id={view.offer_ids[p]: p for p in order},
        scores=scores,
        status=status,
    )
    for attempt in range(_AWARD_ATTEMPTS):
        remaining = status.still_alive(ranked)
        outcome = await _award_once(ctx, svc, plan, remaining, may_retry=attempt + 1 < _AWARD_ATTEMPTS)
        if outcome is not None:
            return outcome
    raise AssertionError("the last attempt never asks for a retry")


async def _award_once(
    ctx: RequestContext, svc: Services, plan: _Plan, remaining: list[int], *, may_retry: bool
) -> AwardOutcome | None:
    walk = _walk(ctx, plan, remaining)
    granted: list[str] = [r.offer_id for r in walk[: plan.k]]
    if plan.k > 0 and any(r.checks for r in walk):
        try:
            reserved = await bounded(svc.store.reserve(plan.period, plan.k, walk), ctx.redis_until, svc.breaker)
        except StateUnavailable as err:
            # budgets cannot be checked: award nothing (fail closed)
            svc.metrics.redis_errors.labels("reserve").inc()
            log.warning("budget reservation failed, degrading: %s", err)
            return _DEGRADED
        granted = list(reserved.awarded)
        if reserved.refused:
            svc.metrics.award_refusals.labels("reserve").inc(len(reserved.refused))
        walk_by_id = {r.offer_id: r for r in walk}
        for offer_id, check_no, used in reserved.refused:
            why = exhausted_reason(walk_by_id[offer_id].checks[check_no - 1], used)
            plan.status.drop_one(plan.by_id[offer_id], Stage.BUDGET, why)
    try:
        committed = await _commit(ctx, svc, plan, granted, may_retry=may_retry and len(walk) > len(granted))
    except StateUnavailable as err:
        svc.metrics.redis_errors.labels("commit").inc()
        log.warning("award commit failed, degrading: %s", err)
        await release(svc, plan.period, _reservations(walk, granted))
        return _DEGRADED
    if committed.status == REPLAY:
        await release(svc, plan.period, _reservations(walk, granted))
        check_request_repeat(ctx.req, ctx.k, committed.fingerprint)
        return AwardOutcome([], replay_of=committed.decision_id)
    if committed.refused:
        svc.metrics.award_refusals.labels("commit").inc(len(committed.refused))
        await release(svc, plan.period, _reservations(walk, [o for o, _ in committed.refused]))
        for offer_id, cap in committed.refused:
            plan.status.drop_one(plan.by_id[offer_id], Stage.CONTACT, _REFUSED[cap])
    if committed.status == RETRY:
        return None
    awarded = [plan.by_id[o] for o in committed.awarded]
    plan.status.rank_out(remaining, awarded)
    return AwardOutcome(awarded)


def _walk(ctx: RequestContext, plan: _Plan, remaining: list[int]) -> list[Reservation]:
    """The reservations to send: the first k candidates, plus one more per budgeted candidate
    (a longer walk can only be needed to skip exhausted budgets)."""
    catalog, view = ctx.catalog, ctx.view
    walk: list[Reservation] = []
    budgeted = 0
    for at in remaining:
        offer = catalog.offers[view.offers[at]]
        res = reservation(catalog, offer, ctx.req.channel, ctx.now, plan.period)
        walk.append(res or Reservation(offer.id, ()))
        # a channel capacity check is the same for every offer, so it never needs a longer walk
        budgeted += has_budget(catalog, offer)
        if len(walk) >= plan.k + budgeted:
            break
    return walk


async def _commit(ctx: RequestContext, svc: Services, plan: _Plan, granted: list[str], *, may_retry: bool) -> Committed:
    catalog, view, req = ctx.catalog, ctx.view, ctx.req
    policy = catalog.contact_policy
    prior_sd = ctx.exploration.prior_sd
    picks = []
    for offer_id in granted:
        pos = plan.by_id[offer_id]
        offer = catalog.offers[view.offers[pos]]
        caps = per_customer_caps(catalog, offer)
        propensity = float(plan.scores.propensity[pos])
        sd = prior_sd.get(pos, catalog.bandit.prior_sd)
        inputs = _inputs_of(ctx, pos)
        picks.append(Pick(offer_id, offer.campaign_id, *caps, propensity, sd, offer.max_value, inputs))
    settings = svc.settings
    commit = svc.store.commit(
        customer_id=req.customer_id,
        channel=req.channel.value,
        decision_id=ctx.decision_id,
        request_id=req.request_id,
        now=ctx.now,
        window_seconds=policy.window_seconds,
        channel_cap=policy.max_per_window.get(req.channel),
        picks=picks,
        may_retry=may_retry,
        decision_ttl=settings.decision_ttl_seconds,
        request_ttl=settings.request_id_ttl_seconds,
        history_ttl=settings.contact_history_ttl_seconds,
        request_fingerprint=request_fingerprint(req, ctx.k) if req.request_id else "",
        caller=ctx.caller,
    )
    return await bounded(commit, ctx.redis_until, svc.breaker)


def _inputs_of(ctx: RequestContext, pos: int) -> str:
    """The arm inputs the offer at `pos` was drawn with, as the award keeps them ("" if none)."""
    drawn = ctx.exploration
    if drawn.inputs is None or pos not in drawn.input_row:
        return ""
    return encode_inputs(ctx.catalog.bandit.signature, drawn.inputs[drawn.input_row[pos]])


def _reservations(walk: list[Reservation], offer_ids: list[str]) -> list[Reservation]:
    by_id = {r.offer_id: r for r in walk}
    return [by_id[o] for o in offer_ids]


async def release(svc: Services, period: Period, reservations: list[Reservation]) -> None:
    """Give back reservations that were not awarded after all (best effort). Outside the
    decision's Redis budget: a give-back is worth its own redis_timeout_seconds."""
    limited = [r for r in reservations if r.checks]
    if not limited:
        return
    try:
        await svc.store.release(period, limited)
    except StateUnavailable as err:
        # the counters stay high: budgets under-spend (fail closed) until `nbo budgets reconcile`
        svc.metrics.redis_errors.labels("release").inc()
        log.warning("releasing %d reservation(s) failed: %s", len(limited), err)
