"""The gRPC face of the server: thin servicers over the transport-free DecisionService.

Each RPC decodes (server.api.converters), makes one call into the service, and encodes; an
error becomes the status of server.api.status, so caller mistakes are INVALID_ARGUMENT or
NOT_FOUND naming the field, never UNKNOWN or INTERNAL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from server.api import converters
from server.api.admission import Admission
from server.api.auth import ANONYMOUS, Caller, PermissionDenied, Unauthenticated
from server.api.gate import Gate, RateLimited, grpc_address
from server.api.status import Status, count_refusal, status_of
from server.domain import RequestError
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.gen.nbo.v1 import decisioning_pb2_grpc as pb_grpc
from server.metrics import Metrics
from server.pipeline.delivery import Delivery
from server.pipeline.service import DecisionService

# time an answer needs from the handler's return to the wire, about (a busy worker's loop)
_SEND_SECONDS = 0.002
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Decisioning"].full_name
log = logging.getLogger(__name__)


class Undecodable:
    """A request whose bytes are not the message: the handler answers INVALID_ARGUMENT.

    gRPC would otherwise answer UNKNOWN with the exception's class and log a traceback per call,
    which a fuzzer or a broken client turns into megabytes of log."""

    __slots__ = ("error",)

    def __init__(self, error: RequestError) -> None:
        self.error = error


def _decoder(message_type: Any) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        try:
            return message_type.FromString(raw)
        except DecodeError:
            return Undecodable(RequestError("request", f"not a valid {message_type.DESCRIPTOR.full_name} message"))

    return decode


class _EveryTenSeconds:
    """Logs the first of a kind of event, then at most one line per 10 s with the count since."""

    def __init__(self) -> None:
        self._next = 0.0
        self._count = 0

    def __call__(self, message: str) -> None:
        self._count += 1
        now = time.monotonic()
        if now >= self._next:
            log.warning("%s (%d such requests since the last report)", message, self._count)
            self._count = 0
            self._next = now + 10.0


def _fail(context: grpc.aio.ServicerContext[Any, Any], status: Status) -> None:
    """Set the error status. Not `context.abort()`: aborted RPCs are known to make grpc.aio's
    server.stop() wait or hang (grpc#37239), which we saw in our own shutdowns."""
    context.set_code(grpc.StatusCode[status.code.value])
    context.set_details(status.message)


class _RpcMetrics:
    """grpc_server_* for one method, with the labelled children looked up once."""

    def __init__(self, metrics: Metrics, method: str) -> None:
        self.method = method
        labels = ("unary", SERVICE_NAME, method)
        self._started = metrics.grpc_started.labels(*labels)
        self._seconds = metrics.grpc_seconds.labels(*labels)
        self._handled = metrics.grpc_handled
        self._labels = labels
        self._by_code: dict[Any, Any] = {}

    def start(self) -> float:
        self._started.inc()
        return time.perf_counter()

    def done(self, started: float, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._seconds.observe(time.perf_counter() - started)
        code = context.code() or grpc.StatusCode.OK
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._handled.labels(*self._labels, code.name)
        child.inc()


class DecisioningServicer(pb_grpc.DecisioningServicer):
    def __init__(self, service: DecisionService, admission: Admission, gate: Gate) -> None:
        self.service = service
        self.admission = admission
        self.gate = gate
        self._report_undecodable = _EveryTenSeconds()
        self._decide_rpc = _RpcMetrics(service.metrics, "Decide")
        self._outcome_rpc = _RpcMetrics(service.metrics, "ReportOutcome")
        self._conversion_rpc = _RpcMetrics(service.metrics, "RecordConversion")

    def _refuse(self, context: grpc.aio.ServicerContext[Any, Any], err: Exception) -> None:
        status = status_of(err)
        count_refusal(self.service.metrics, status)
        _fail(context, status)

    def _undecodable(self, request: Undecodable, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._report_undecodable(str(request.error))
        self._refuse(context, request.error)

    async def Decide(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await self._admitted(self._decide_rpc, pb.DecideResponse, self._decide, request, context)

    async def ReportOutcome(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await self._admitted(self._outcome_rpc, pb.ReportOutcomeResponse, self._report_outcome, request, context)

    async def RecordConversion(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await self._admitted(
            self._conversion_rpc, pb.RecordConversionResponse, self._record_conversion, request, context
        )

    async def _admitted(
        self,
        rpc: _RpcMetrics,
        empty: Callable[[], Any],
        handle: Callable[[Any, grpc.aio.ServicerContext[Any, Any], Caller], Awaitable[Any]],
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Any:
        """`handle` for an authenticated caller within its rate limit and the worker's bound on
        calls in flight, timed and counted by code."""
        started = rpc.start()
        try:
            caller = self._caller(rpc.method, context)
            if caller is None:
                return empty()
            if not self.admission.enter(rpc.method):
                _fail(context, self.admission.busy)
                return empty()
            try:
                if self.gate.limiter is not None and not await self._within_limit(rpc.method, caller, context):
                    return empty()
                return await handle(request, context, caller)
            finally:
                self.admission.leave()
        finally:
            rpc.done(started, context)

    def _caller(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Caller | None:
        """Who calls, if allowed to call `method`; else None, the call refused."""
        if not self.gate.authenticates:
            return ANONYMOUS
        try:
            return self.gate.admit(method, authorization(context))
        except (Unauthenticated, PermissionDenied) as err:
            self._refuse(context, err)
            return None

    async def _within_limit(self, method: str, caller: Caller, context: grpc.aio.ServicerContext[Any, Any]) -> bool:
        try:
            await self.gate.throttle(method, caller, grpc_address(context.peer()))
        except RateLimited as err:
            self._refuse(context, err)
            return False
        return True

    async def _decide(self, request: Any, context: grpc.aio.ServicerContext[Any, Any], caller: Caller) -> Any:
        if isinstance(request, Undecodable):
            self._undecodable(request, context)
            return pb.DecideResponse()
        loop = asyncio.get_running_loop()
        remaining = context.time_remaining()
        deadline = None if remaining is None else loop.time() + remaining
        delivery = Delivery()
        try:
            decision = await self.service.decide(
                converters.decide_request_from_pb(request), deadline=deadline, delivery=delivery, caller=caller.name
            )
        except asyncio.CancelledError:
            # the deadline passed or the caller hung up; an award in progress runs on, shielded,
            # and its record is logged undelivered
            delivery.settle(False)
            raise
        except Exception as err:
            delivery.settle(False)
            self._refuse(context, err)
            return pb.DecideResponse()
        response = converters.decide_response_to_pb(decision)
        # gRPC drops an answer that is ready after the deadline and does not tell the handler; one
        # ready just before may be dropped on the way, and counting it undelivered errs on the
        # side of not training on an answer nobody saw. Settled on the loop's next turn, once
        # gRPC has the answer: the log record is encoded then, not while the caller waits
        loop.call_soon(delivery.settle, deadline is None or loop.time() + _SEND_SECONDS < deadline)
        return response

    async def _report_outcome(self, request: Any, context: grpc.aio.ServicerContext[Any, Any], caller: Caller) -> Any:
        if isinstance(request, Undecodable):
            self._undecodable(request, context)
            return pb.ReportOutcomeResponse()
        try:
            result = await self.service.report_outcome(
                converters.outcome_from_pb(request), caller=caller.name, admin=caller.admin
            )
        except Exception as err:
            self._refuse(context, err)
            return pb.ReportOutcomeResponse()
        return converters.outcome_result_to_pb(result)

    async def _record_conversion(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any], caller: Caller
    ) -> Any:
        if isinstance(request, Undecodable):
            self._undecodable(request, context)
            return pb.RecordConversionResponse()
        try:
            result = await self.service.record_conversion(converters.conversion_from_pb(request), source="grpc")
        except Exception as err:
            self._refuse(context, err)
            return pb.RecordConversionResponse()
        return converters.conversion_result_to_pb(result)


def authorization(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


def add_to_server(service: DecisionService, server: grpc.aio.Server, admission: Admission, gate: Gate) -> None:
    """As the generated add_DecisioningServicer_to_server, with decoders that never raise."""
    servicer = DecisioningServicer(service, admission, gate)
    handlers = {
        "Decide": grpc.unary_unary_rpc_method_handler(
            servicer.Decide,
            request_deserializer=_decoder(pb.DecideRequest),
            response_serializer=pb.DecideResponse.SerializeToString,
        ),
        "ReportOutcome": grpc.unary_unary_rpc_method_handler(
            servicer.ReportOutcome,
            request_deserializer=_decoder(pb.ReportOutcomeRequest),
            response_serializer=pb.ReportOutcomeResponse.SerializeToString,
        ),
        "RecordConversion": grpc.unary_unary_rpc_method_handler(
            servicer.RecordConversion,
            request_deserializer=_decoder(pb.RecordConversionRequest),
            response_serializer=pb.RecordConversionResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
