"""The gRPC face of the server: protobuf <-> domain converters and thin servicers.

This is the only module that imports generated `*_pb2` code. Each RPC decodes, makes one call
into the transport-free DecisionService, and encodes; caller mistakes become INVALID_ARGUMENT
or NOT_FOUND naming the field, never UNKNOWN or INTERNAL.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from server import domain
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.gen.nbo.v1 import decisioning_pb2_grpc as pb_grpc
from server.pipeline.service import DecisionService, ServiceUnavailable

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Decisioning"].full_name

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
}


# -- converters --------------------------------------------------------------------------------
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


# -- servicer -----------------------------------------------------------------------------------
def _fail(context: grpc.aio.ServicerContext[Any, Any], err: Exception) -> None:
    """Set the error status. Not `context.abort()`: aborted RPCs are known to make grpc.aio's
    server.stop() wait or hang (grpc#37239), which we saw in our own shutdowns."""
    if isinstance(err, domain.RequestError):
        code, details = grpc.StatusCode.INVALID_ARGUMENT, str(err)
    elif isinstance(err, domain.NotFoundError):
        code, details = grpc.StatusCode.NOT_FOUND, str(err)
    elif isinstance(err, ServiceUnavailable):
        code, details = grpc.StatusCode.UNAVAILABLE, str(err)
    else:
        log.exception("internal error", exc_info=err)
        code, details = grpc.StatusCode.INTERNAL, "internal error; see the server log"
    context.set_code(code)
    context.set_details(details)


class DecisioningServicer(pb_grpc.DecisioningServicer):
    def __init__(self, service: DecisionService) -> None:
        self.service = service

    async def Decide(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            decision = await self.service.decide(decide_request_from_pb(request))
        except Exception as err:
            _fail(context, err)
            return pb.DecideResponse()
        return decide_response_to_pb(decision)

    async def ReportOutcome(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            result = await self.service.report_outcome(outcome_from_pb(request))
        except Exception as err:
            _fail(context, err)
            return pb.ReportOutcomeResponse()
        return pb.ReportOutcomeResponse(recorded=result.recorded, duplicate=result.duplicate)


def add_to_server(service: DecisionService, server: grpc.aio.Server) -> None:
    pb_grpc.add_DecisioningServicer_to_server(DecisioningServicer(service), server)  # type: ignore[no-untyped-call]
