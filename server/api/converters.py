"""The one module between protobuf messages and the transport-free domain types.

Both transports go through it: gRPC hands it the request message it received, the HTTP/JSON front
the message it parsed from the proto's JSON mapping. Decoding raises `domain.RequestError` naming
the field for what protobuf itself admits but the API does not (an unset or unknown enum value).
"""

from __future__ import annotations

from typing import Any

from server import domain
from server.gen.nbo.v1 import decisioning_pb2 as pb

_CHANNELS = {
    pb.CALL_CENTRE: domain.Channel.CALL_CENTRE,
    pb.WEB: domain.Channel.WEB,
    pb.MOBILE_APP: domain.Channel.MOBILE_APP,
    pb.EMAIL: domain.Channel.EMAIL,
}
_OUTCOMES = {
    pb.PRESENTED: domain.Outcome.PRESENTED,
    pb.ACCEPTED: domain.Outcome.ACCEPTED,
    pb.DECLINED: domain.Outcome.DECLINED,
    pb.CONVERTED: domain.Outcome.CONVERTED,
}
_REASONS = {
    domain.NoOfferReason.NONE: pb.NO_OFFER_REASON_UNSPECIFIED,
    domain.NoOfferReason.UNKNOWN_CUSTOMER: pb.UNKNOWN_CUSTOMER,
    domain.NoOfferReason.NO_ELIGIBLE_OFFER: pb.NO_ELIGIBLE_OFFER,
    domain.NoOfferReason.CONTACT_POLICY: pb.CONTACT_POLICY,
    domain.NoOfferReason.BUDGET_EXHAUSTED: pb.BUDGET_EXHAUSTED,
    domain.NoOfferReason.BELOW_THRESHOLD: pb.BELOW_THRESHOLD,
    domain.NoOfferReason.CONTROL_GROUP: pb.CONTROL_GROUP,
    domain.NoOfferReason.OPTED_OUT: pb.OPTED_OUT,
    domain.NoOfferReason.DEGRADED: pb.DEGRADED,
    domain.NoOfferReason.DEADLINE: pb.DEADLINE,
}

# the message classes each transport decodes into and encodes from
DecideRequest = pb.DecideRequest
DecideResponse = pb.DecideResponse
ReportOutcomeRequest = pb.ReportOutcomeRequest
ReportOutcomeResponse = pb.ReportOutcomeResponse
RecordConversionRequest = pb.RecordConversionRequest
RecordConversionResponse = pb.RecordConversionResponse


def decide_request_from_pb(msg: Any) -> domain.DecideRequest:
    channel = _CHANNELS.get(msg.channel)
    if channel is None:
        reason = "must be set" if msg.channel == pb.CHANNEL_UNSPECIFIED else f"unknown channel {msg.channel}"
        raise domain.RequestError("channel", reason)
    return domain.DecideRequest(
        customer_id=msg.customer_id,
        channel=channel,
        context=dict(msg.context),
        events=tuple(msg.events),
        placement=msg.placement,
        max_offers=msg.max_offers,
        request_id=msg.request_id,
        explain=msg.explain,
    )


def decide_response_to_pb(decision: domain.Decision) -> Any:
    return pb.DecideResponse(
        decision_id=decision.decision_id,
        offers=[
            pb.RankedOffer(
                offer_id=o.offer_id,
                campaign_id=o.campaign_id,
                rank=o.rank,
                propensity=o.propensity,
                expected_value=o.expected_value,
                score=o.score,
                selection_probability=o.selection_probability,
                reasons=o.reasons,
                title=o.title,
                script=o.script,
                campaign_type=o.campaign_type.value,
            )
            for o in decision.offers
        ],
        no_offer_reason=_REASONS[decision.no_offer_reason],
        model_version=decision.model_version,
        catalog_version=decision.catalog_version,
        degraded=decision.degraded,
        suppressed=[
            pb.SuppressedOffer(offer_id=s.offer_id, reason=s.reason, campaign_id=s.campaign_id)
            for s in decision.suppressed
        ],
        replayed=decision.replayed,
    )


def outcome_from_pb(msg: Any) -> domain.OutcomeReport:
    outcome = _OUTCOMES.get(msg.outcome)
    if outcome is None:
        reason = "must be set" if msg.outcome == pb.OUTCOME_UNSPECIFIED else f"unknown outcome {msg.outcome}"
        raise domain.RequestError("outcome", reason)
    if not msg.decision_id:
        raise domain.RequestError("decision_id", "must not be empty")
    return domain.OutcomeReport(
        decision_id=msg.decision_id,
        offer_id=msg.offer_id,
        outcome=outcome,
        value=msg.value,
        event_id=msg.event_id,
    )


def outcome_result_to_pb(result: domain.OutcomeResult) -> Any:
    return pb.ReportOutcomeResponse(recorded=result.recorded, duplicate=result.duplicate)


def conversion_from_pb(msg: Any) -> domain.ConversionReport:
    """Field checks are the service's (server.pipeline.conversion), shared with the CSV import."""
    return domain.ConversionReport(
        customer_id=msg.customer_id,
        kind=msg.kind,
        value=msg.value,
        event_id=msg.event_id,
        occurred_at=msg.occurred_at,
    )


def conversion_result_to_pb(result: domain.OutcomeResult) -> Any:
    return pb.RecordConversionResponse(recorded=result.recorded, duplicate=result.duplicate)
