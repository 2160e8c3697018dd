"""The HTTP/JSON face of the server, for web callers that cannot speak gRPC.

`POST /v1/decide` and `POST /v1/outcomes` take and return the proto's JSON mapping
(server.api.json_mapping), decode through the same converters as gRPC into the same
DecisionService, and answer errors with the HTTP status of server.api.status and a body
`{"error": {"code", "message", "field"}}` whose message is the gRPC status detail word for word.
Each worker process serves it on its own event loop beside gRPC, with SO_REUSEPORT on one port.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from server.api import converters
from server.api.admission import Admission
from server.api.auth import ANONYMOUS, Caller, PermissionDenied, Unauthenticated
from server.api.gate import Gate
from server.api.json_mapping import message_from_json, message_to_json
from server.api.status import HTTP_STATUS, Code, Status, count_refusal, status_of
from server.metrics import Metrics
from server.pipeline.service import DecisionService

DECIDE_PATH = "/v1/decide"
OUTCOMES_PATH = "/v1/outcomes"
CONVERSIONS_PATH = "/v1/conversions"
# the Decisioning RPC each path serves (scripts/gen_openapi.py documents them from this table)
RPC_PATHS = {"Decide": DECIDE_PATH, "ReportOutcome": OUTCOMES_PATH, "RecordConversion": CONVERSIONS_PATH}
# the same limit as gRPC's max_receive_message_length
MAX_BODY_BYTES = 1 << 20
JSON_TYPE = "application/json"
# codes of failures only HTTP has (the request never reached a converter)
TRANSPORT_CODES = {
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CALLER = web.RequestKey("nbo.caller", Caller)  # the request's authenticated Caller


def error_response(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return web.Response(body=json.dumps({"error": error}).encode(), status=status, content_type=JSON_TYPE)


def _status_response(status: Status) -> web.Response:
    return error_response(HTTP_STATUS[status.code], status.code.value, status.message, status.field)


def _transport_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusals (no route, wrong method, body too large) in our error shape."""
    if exc.status == 405:
        message = f"method {request.method} is not allowed on {request.path}; use POST"
    elif exc.status == 404:
        message = f"no such path {request.path}; the API has POST {DECIDE_PATH} and POST {OUTCOMES_PATH}"
    elif exc.status == 413:
        message = f"body: larger than the limit of {MAX_BODY_BYTES} bytes"
    else:
        message = exc.text or exc.reason
    fallback = Code.INVALID_ARGUMENT.value if exc.status < 500 else Code.INTERNAL.value
    response = error_response(exc.status, TRANSPORT_CODES.get(exc.status, fallback), message)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


class HttpFront:
    """The aiohttp application and its listening site, over one worker's DecisionService."""

    def __init__(
        self, service: DecisionService, metrics: Metrics, admission: Admission, gate: Gate, *, shutdown_seconds: float
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.admission = admission
        self.gate = gate
        self._rpcs = {path: rpc for rpc, path in RPC_PATHS.items()}
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._errors])
        handlers = {"Decide": self._decide, "ReportOutcome": self._outcomes, "RecordConversion": self._conversions}
        for rpc, path in RPC_PATHS.items():
            app.router.add_post(path, handlers[rpc])
        # no access log: one line per decision would cost more than the decision's JSON. Handlers
        # are not cancelled when a caller hangs up (aiohttp's default): an award once started
        # completes or is given back, as under gRPC. HTTP sends no deadline: the server's
        # decision_timeout_seconds bounds a decision, and an answer counts as delivered once the
        # handler returns it (aiohttp does not say whether the client read it)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_seconds)

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        """Listen on host:port (0 = a free port), sharing it with the other workers, with TLS if
        `ssl_context` is given; the port."""
        await self.runner.setup()
        site = web.TCPSite(self.runner, host.strip("[]"), port, reuse_port=True, ssl_context=ssl_context)
        await site.start()
        return int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening, let in-flight requests finish within the shutdown time, close."""
        await self.runner.cleanup()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        rpc = self._rpcs.get(request.path)
        path = request.path if rpc is not None else "other"
        if rpc is not None:
            refused = self._authenticate(request, rpc)
            if refused is None and not self.admission.enter(path):
                refused = _status_response(self.admission.busy)
            if refused is not None:
                self.metrics.http_requests.labels(path, str(refused.status)).inc()
                return refused
        response: web.StreamResponse
        try:
            if rpc is not None and self.gate.limiter is not None:
                await self.gate.throttle(rpc, request[CALLER], request.remote or "unknown")
            response = await handler(request)
        except web.HTTPException as exc:
            response = _transport_error(request, exc)
        except Exception as err:
            status = status_of(err)
            count_refusal(self.metrics, status)
            response = _status_response(status)
        finally:
            if path != "other":
                self.admission.leave()
        self.metrics.http_requests.labels(path, str(response.status)).inc()
        return response

    def _authenticate(self, request: web.Request, rpc: str) -> web.Response | None:
        """Keep the request's Caller for its handler, or answer 401/403 before anything runs."""
        caller = ANONYMOUS
        if self.gate.authenticates:
            try:
                caller = self.gate.admit(rpc, request.headers.get("Authorization"))
            except Unauthenticated as err:
                refused = _status_response(status_of(err))
                refused.headers["WWW-Authenticate"] = 'Bearer realm="nbo"'  # RFC 6750
                return refused
            except PermissionDenied as err:
                return _status_response(status_of(err))
        request[CALLER] = caller
        return None

    async def _body(self, request: web.Request, cls: Any) -> Any:
        if request.content_type != JSON_TYPE or (request.charset or "utf-8").lower() not in ("utf-8", "utf8"):
            raise _UnsupportedMediaType(request.headers.get("Content-Type", ""))
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=request.content_length)
        return message_from_json(await request.read(), cls)

    async def _decide(self, request: web.Request) -> web.Response:
        msg = await self._body(request, converters.DecideRequest)
        decision = await self.service.decide(converters.decide_request_from_pb(msg), caller=request[CALLER].name)
        return _json(converters.decide_response_to_pb(decision))

    async def _outcomes(self, request: web.Request) -> web.Response:
        msg = await self._body(request, converters.ReportOutcomeRequest)
        caller = request[CALLER]
        result = await self.service.report_outcome(
            converters.outcome_from_pb(msg), caller=caller.name, admin=caller.admin
        )
        return _json(converters.outcome_result_to_pb(result))

    async def _conversions(self, request: web.Request) -> web.Response:
        msg = await self._body(request, converters.RecordConversionRequest)
        result = await self.service.record_conversion(converters.conversion_from_pb(msg), source="http")
        return _json(converters.conversion_result_to_pb(result))


class _UnsupportedMediaType(web.HTTPUnsupportedMediaType):
    def __init__(self, given: str) -> None:
        super().__init__(text=f"Content-Type must be {JSON_TYPE} (UTF-8), got {given or 'none'!r}")


def _json(msg: Any) -> web.Response:
    return web.Response(body=message_to_json(msg), content_type=JSON_TYPE)
