"""Bounds on a decision's Redis time: a circuit breaker per worker and a time budget per decision.

While Redis is known to be down, waiting `redis_timeout_seconds` per decision only to degrade
turns an outage into a latency incident, so after `breaker_failures` consecutive failures the
breaker opens: decisions degrade at once, without a call, and one decision per
`breaker_probe_seconds` goes through to find out whether Redis is back. Each decision's Redis
steps (pool checkout and connect included) share one budget of `redis_timeout_seconds`, so a
slow Redis cannot stretch a decision to a multiple of the setting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from server.metrics import Metrics
from server.state.store import StateUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class ServiceUnavailable(RuntimeError):
    """Shared state cannot be reached; the caller may retry (UNAVAILABLE)."""


class CircuitBreaker:
    def __init__(
        self, metrics: Metrics, failures: int, probe_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._metrics = metrics
        self._threshold = failures
        self._probe_seconds = probe_seconds
        self._clock = clock
        self._failures = 0
        self._probe_at: float | None = None  # set while open: when the next probe may go

    @property
    def open(self) -> bool:
        return self._probe_at is not None

    def allow(self) -> bool:
        """May a decision call Redis now? While open, one caller per probe interval may; the
        others are counted (nbo_redis_errors{op="circuit_open"})."""
        if self._probe_at is None:
            return True
        now = self._clock()
        if now < self._probe_at:
            self._metrics.redis_errors.labels("circuit_open").inc()
            return False
        self._probe_at = now + self._probe_seconds
        return True

    def success(self) -> None:
        self._failures = 0
        if self._probe_at is not None:
            self._probe_at = None
            self._metrics.redis_circuit_open.set(0)
            log.warning("Redis answers again: circuit closed, decisions use it again")

    def failure(self) -> None:
        self._failures += 1
        if self._probe_at is None and self._failures >= self._threshold:
            self._probe_at = self._clock() + self._probe_seconds
            self._metrics.redis_circuit_open.set(1)
            log.warning(
                "Redis failed %d times in a row: circuit open, decisions degrade at once; probing every %.2f s",
                self._failures,
                self._probe_seconds,
            )


async def bounded(step: Awaitable[T], until: float, breaker: CircuitBreaker) -> T:
    """`step` within the decision's Redis budget (loop time `until`); a timeout or Redis error
    is StateUnavailable, and either counts against the breaker."""
    try:
        async with asyncio.timeout_at(until):
            result = await step
    except TimeoutError as err:
        breaker.failure()
        raise StateUnavailable("the decision's Redis time budget (redis_timeout_seconds) ran out") from err
    except StateUnavailable:
        breaker.failure()
        raise
    breaker.success()
    return result
