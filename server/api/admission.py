"""Load shedding shared by a worker's transports: at most `max_concurrent_rpcs` calls in flight.

One call more is refused at once (RESOURCE_EXHAUSTED, HTTP 429) and counted, before any work:
under overload a worker keeps answering the calls it admitted within their deadlines instead of
queueing all of them until none does.
"""

from __future__ import annotations

from server.api.status import Code, Status
from server.metrics import Metrics

BUSY_MESSAGE = "server busy: {limit} calls in flight on this worker (max_concurrent_rpcs); retry with backoff"


class Admission:
    __slots__ = ("_in_flight", "_limit", "_shed", "busy")

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self._limit = limit
        self._in_flight = 0
        self._shed = metrics.shed
        self.busy = Status(Code.RESOURCE_EXHAUSTED, BUSY_MESSAGE.format(limit=limit))  # a shed call's answer

    def enter(self, method: str) -> bool:
        """Admit one call (then `leave` once it is answered), or count it as shed."""
        if self._in_flight >= self._limit:
            self._shed.labels(method).inc()
            return False
        self._in_flight += 1
        return True

    def leave(self) -> None:
        self._in_flight -= 1
