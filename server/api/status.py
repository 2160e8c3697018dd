"""What an error raised by the service means to a caller, for every transport.

One table maps the domain's exceptions to status codes named as gRPC names them; the gRPC
servicer sets that code, the HTTP/JSON front answers with the HTTP status of `HTTP_STATUS`.
A caller mistake is never INTERNAL: anything not in the table is a bug, logged with its trace.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from server.api.auth import PermissionDenied, Unauthenticated
from server.api.gate import RateLimited
from server.domain import ConflictError, ForbiddenError, NotFoundError, RequestError
from server.metrics import Metrics
from server.pipeline.service import ServiceUnavailable

log = logging.getLogger(__name__)


class Code(enum.StrEnum):
    """The status codes the API answers with (gRPC's names)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INTERNAL = "INTERNAL"


# the mapping of google.rpc.Code to HTTP that gRPC-JSON gateways use
HTTP_STATUS: dict[Code, int] = {
    Code.INVALID_ARGUMENT: 400,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.UNAVAILABLE: 503,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.DEADLINE_EXCEEDED: 504,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.INTERNAL: 500,
}

# first match wins; a new error type of the service gets its row here and both transports follow
_BY_TYPE: tuple[tuple[type[Exception], Code], ...] = (
    (RequestError, Code.INVALID_ARGUMENT),
    (NotFoundError, Code.NOT_FOUND),
    (ConflictError, Code.ALREADY_EXISTS),
    (ForbiddenError, Code.PERMISSION_DENIED),
    (ServiceUnavailable, Code.UNAVAILABLE),
    (Unauthenticated, Code.UNAUTHENTICATED),
    (PermissionDenied, Code.PERMISSION_DENIED),
    (RateLimited, Code.RESOURCE_EXHAUSTED),
)
INTERNAL_MESSAGE = "internal error; see the server log"


@dataclass(frozen=True, slots=True)
class Status:
    code: Code
    message: str
    field: str | None = None  # the request field at fault, when the caller asked for something wrong


# refusals of what the call asked for (not of the server's state): nbo_invalid_requests counts them
_REFUSALS = frozenset({Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.ALREADY_EXISTS})


def status_of(err: Exception) -> Status:
    for kind, code in _BY_TYPE:
        if isinstance(err, kind):
            field = getattr(err, "field", None)
            return Status(code, str(err), field if isinstance(field, str) else None)
    log.error("internal error", exc_info=err)
    return Status(Code.INTERNAL, INTERNAL_MESSAGE)


def count_refusal(metrics: Metrics, status: Status) -> None:
    """Every transport counts every refused call here, once, by the field at fault."""
    if status.code in _REFUSALS:
        metrics.invalid_requests.labels((status.field or "request").split("[")[0]).inc()
