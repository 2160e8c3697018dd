"""Stage 1: validate a request, naming the offending field (INVALID_ARGUMENT)."""

from __future__ import annotations

import math
import re

from server.domain import DecideRequest, RequestError
from server.ids import id_problem

_CONTEXT_KEY = re.compile(r"[a-z_][a-z0-9_]{0,63}")
MAX_EVENTS = 32
MAX_CONTEXT = 64


def validate_request(req: DecideRequest, max_offers_limit: int) -> int:
    """Raise RequestError naming the field; return the effective max_offers."""
    if problem := id_problem(req.customer_id):
        raise RequestError("customer_id", problem)
    if req.max_offers < 0:
        raise RequestError("max_offers", f"must be >= 0, got {req.max_offers}")
    if req.max_offers > max_offers_limit:
        raise RequestError("max_offers", f"must be at most {max_offers_limit}, got {req.max_offers}")
    if len(req.context) > MAX_CONTEXT:
        raise RequestError("context", f"at most {MAX_CONTEXT} entries, got {len(req.context)}")
    for key, value in req.context.items():
        if not _CONTEXT_KEY.fullmatch(key):
            raise RequestError(f"context[{key!r}]", "keys are lower_snake_case, at most 64 characters")
        if not math.isfinite(value):
            raise RequestError(f"context[{key!r}]", f"must be finite, got {value}")
    if len(req.events) > MAX_EVENTS:
        raise RequestError("events", f"at most {MAX_EVENTS} events, got {len(req.events)}")
    for i, event in enumerate(req.events):
        if problem := id_problem(event):
            raise RequestError(f"events[{i}]", problem)
    if req.placement and (problem := id_problem(req.placement)):
        raise RequestError("placement", problem)
    if req.request_id and (problem := id_problem(req.request_id, 128)):
        raise RequestError("request_id", problem)
    return req.max_offers or 1
