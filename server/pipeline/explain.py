"""Stage 8a: the answer — ranked offers with their reasons, the suppressed offers and why, and
the no-offer reason when nothing is awarded."""

from __future__ import annotations

import numpy as np

from server.catalog.compiled import TIER_NAMES
from server.domain import CampaignType, NoOfferReason, RankedOffer, SuppressedOffer
from server.pipeline.context import CandidateStatus, RequestContext, Scores, Stage


def ranked_offers(
    ctx: RequestContext, awarded: list[int], scores: Scores, taken: dict[int, float]
) -> tuple[RankedOffer, ...]:
    return tuple(_ranked_offer(ctx, pos, i + 1, scores, taken[pos]) for i, pos in enumerate(awarded))


def no_offer_reason(ctx: RequestContext, status: CandidateStatus, awarded: list[int]) -> NoOfferReason:
    if awarded:
        return NoOfferReason.NONE
    if ctx.control_group:
        return NoOfferReason.CONTROL_GROUP
    return status.furthest_reason()


def suppressed(ctx: RequestContext, status: CandidateStatus) -> tuple[SuppressedOffer, ...]:
    """Every offer on the channel that is not in the answer, with the reason (explain=true)."""
    offers, view = ctx.catalog.offers, ctx.view
    positions = np.flatnonzero(status.stage != Stage.ALIVE).tolist()
    texts = status.texts(positions)
    return tuple(
        SuppressedOffer(view.offer_ids[pos], offers[view.offers[pos]].campaign_id, text)
        for pos, text in zip(positions, texts, strict=True)
    )


def _ranked_offer(ctx: RequestContext, pos: int, rank_no: int, scores: Scores, taken: float) -> RankedOffer:
    catalog, view = ctx.catalog, ctx.view
    offer = catalog.offers[view.offers[pos]]
    camp = catalog.campaigns[offer.campaign]
    reasons = [f"Campaign: {camp.name} ({TIER_NAMES[camp.tier]})"]
    if camp.type is CampaignType.TRIGGER:
        fired = sorted(camp.events & set(ctx.req.events))
        reasons.append(f"Triggered by: {', '.join(fired)}")
    matched = [catalog.segments[s].description for s in camp.target if ctx.segments.get(s)]
    reasons.append(f"Target groups: {', '.join(matched)}" if matched else "Open to all customers")
    p = float(scores.propensity[pos])
    source = "model" if scores.from_model[pos] else "catalog estimate"
    reasons.append(f"Likelihood to accept: {p:.0%} ({source})")
    adjusted = ctx.exploration.adjusted
    if pos in adjusted and abs(adjusted[pos] - p) >= 0.005:
        reasons.append(f"Learned from recent outcomes: {adjusted[pos]:.0%}")
    if taken < 1.0:
        reasons.append(f"Exploring: picked with probability {taken:.0%}")
    expected = float(scores.expected[pos])
    reasons.append(f"Expected value: {expected:.2f} (value {offer.value:.2f}, cost {offer.cost:.2f})")
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
        expected_value=expected,
        score=float(scores.score[pos]),
        selection_probability=taken,
        reasons=tuple(reasons),
        title=offer.title,
        script=offer.script,
    )
