"""What every call passes before its handler, on either transport: who it is, and how often.

`admit` (synchronous, before the worker's admission bound) authenticates and checks the role;
`throttle` (inside the bound: it may wait on Redis) takes one call from the caller's token bucket.
Both raise exceptions of the status table (server.api.status) and count their refusals here, so
the gRPC servicer and the HTTP front refuse the same calls with the same codes and messages.

Rate limits fail open: while Redis cannot be reached (the circuit breaker is open, or the bucket
call fails or outlasts redis_timeout_seconds) calls go on unlimited. A caller can then create no
state in Redis either, decisions degrade to "send nothing" without it, and failing closed would
turn a Redis blip into RESOURCE_EXHAUSTED for every caller, which they would read as overload.
"""

from __future__ import annotations

import asyncio
import math
from urllib.parse import unquote

from redis import asyncio as aioredis

from server.api.auth import ANONYMOUS, Authenticator, Caller, PermissionDenied, Unauthenticated
from server.api.tokens import read_tokens
from server.config import Settings
from server.metrics import Metrics
from server.pipeline.guard import CircuitBreaker, bounded
from server.pipeline.service import Clock
from server.state.keys import Keys
from server.state.rate_limit import RateLimiter, anonymous_bucket
from server.state.store import StateUnavailable


class RateLimited(Exception):
    """The caller's token bucket is empty (RESOURCE_EXHAUSTED, HTTP 429)."""


class Gate:
    def __init__(
        self,
        authenticator: Authenticator,
        limiter: RateLimiter | None,
        metrics: Metrics,
        breaker: CircuitBreaker,
        clock: Clock,
        redis_timeout: float,
    ) -> None:
        self.authenticator = authenticator
        self.limiter = limiter
        self._metrics = metrics
        self._breaker = breaker
        self._clock = clock
        self._redis_timeout = redis_timeout

    @property
    def authenticates(self) -> bool:
        return self.authenticator.enabled

    def admit(self, method: str, authorization: str | None) -> Caller:
        """The caller, if its credential and role allow `method`; else raise (and count)."""
        try:
            return self.authenticator.check(method, authorization)
        except Unauthenticated:
            self._metrics.auth_refusals.labels(method, "UNAUTHENTICATED").inc()
            raise
        except PermissionDenied:
            self._metrics.auth_refusals.labels(method, "PERMISSION_DENIED").inc()
            raise

    async def throttle(self, method: str, caller: Caller, address: str) -> None:
        """Take one call from the caller's bucket (an anonymous caller's: its address's);
        RateLimited when it is empty. Nothing at all when rate limits are off."""
        limiter = self.limiter
        if limiter is None or self._breaker.open:
            return
        bucket = anonymous_bucket(address) if caller.anonymous else caller.name
        until = asyncio.get_running_loop().time() + self._redis_timeout
        try:
            wait = await bounded(limiter.take(bucket, self._clock()), until, self._breaker)
        except StateUnavailable:
            self._metrics.redis_errors.labels("rate_limit").inc()
            return
        if wait:
            self._metrics.rate_limited.labels(method).inc()
            who = "calls from this address" if caller.anonymous else f"client {caller.name!r}"
            raise RateLimited(
                f"rate limit: {who} may make {limiter.rate:g} calls/s in bursts of up to {limiter.burst}; "
                f"retry in {math.ceil(wait * 1000)} ms"
            )


def build_gate(
    settings: Settings, client: aioredis.Redis, keys: Keys, metrics: Metrics, breaker: CircuitBreaker, clock: Clock
) -> Gate:
    """The gate of `settings`: tokens from auth_tokens_file (TokenFileError if unreadable), a
    limiter when rate_limit_per_second is set."""
    entries = None if settings.auth_tokens_file is None else read_tokens(settings.auth_tokens_file)
    limiter = None
    if settings.rate_limit_per_second is not None:
        limiter = RateLimiter(client, keys, settings.rate_limit_per_second, settings.rate_limit_bucket)
    return Gate(Authenticator(entries), limiter, metrics, breaker, clock, settings.redis_timeout_seconds)


def grpc_address(peer: str) -> str:
    """The address part of a gRPC peer (`ipv4:10.0.0.7:53412`, `ipv6:%5B::1%5D:53412`)."""
    kind, _, rest = unquote(peer).partition(":")
    if kind not in ("ipv4", "ipv6"):
        return kind or "unknown"
    return rest.rpartition(":")[0].strip("[]") or "unknown"


__all__ = ["ANONYMOUS", "Gate", "RateLimited", "build_gate", "grpc_address"]
