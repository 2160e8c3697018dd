"""The gRPC face of the server: thin servicers over the transport-free DecisionService.

Each RPC decodes (server.api.converters), makes one call into the service, and encodes; an
error becomes the status of server.api.status, so caller mistakes are INVALID_ARGUMENT or
NOT_FOUND naming the field, never UNKNOWN or INTERNAL.
"""

from __future__ import annotations

from typing import Any

import grpc

from server.api import converters
from server.api.status import status_of
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.gen.nbo.v1 import decisioning_pb2_grpc as pb_grpc
from server.pipeline.service import DecisionService

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Decisioning"].full_name


def _fail(context: grpc.aio.ServicerContext[Any, Any], err: Exception) -> None:
    """Set the error status. Not `context.abort()`: aborted RPCs are known to make grpc.aio's
    server.stop() wait or hang (grpc#37239), which we saw in our own shutdowns."""
    status = status_of(err)
    context.set_code(grpc.StatusCode[status.code.value])
    context.set_details(status.message)


class DecisioningServicer(pb_grpc.DecisioningServicer):
    def __init__(self, service: DecisionService) -> None:
        self.service = service

    async def Decide(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            decision = await self.service.decide(converters.decide_request_from_pb(request))
        except Exception as err:
            _fail(context, err)
            return pb.DecideResponse()
        return converters.decide_response_to_pb(decision)

    async def ReportOutcome(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            result = await self.service.report_outcome(converters.outcome_from_pb(request))
        except Exception as err:
            _fail(context, err)
            return pb.ReportOutcomeResponse()
        return converters.outcome_result_to_pb(result)


def add_to_server(service: DecisionService, server: grpc.aio.Server) -> None:
    pb_grpc.add_DecisioningServicer_to_server(DecisioningServicer(service), server)  # type: ignore[no-untyped-call]
