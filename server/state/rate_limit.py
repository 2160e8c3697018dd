"""Per-client token buckets in Redis, shared by every replica: one script call per admitted call.

A bucket holds up to `burst` calls and refills at `rate` calls per second; a call takes one or is
refused with the time until one is back. Each bucket is one hash under its own hash tag, so a
client's calls land on one Cluster slot whichever replica serves them.
"""

from __future__ import annotations

import re
from importlib import resources

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.state.keys import Keys
from server.state.store import StateUnavailable

_UNSAFE = re.compile(r"[^A-Za-z0-9_.@-]")


def anonymous_bucket(address: str) -> str:
    """The bucket of an unauthenticated caller: its address, made safe for a key (`@` first, a
    character no client name starts with)."""
    return "@" + _UNSAFE.sub("_", address)[:64]


class RateLimiter:
    def __init__(self, client: aioredis.Redis, keys: Keys, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._keys = keys
        self._script = client.register_script(
            resources.files("server.state").joinpath("lua", "rate_limit.lua").read_text()
        )

    async def take(self, bucket: str, now: float) -> float:
        """Take one call from `bucket` at epoch time `now`: 0.0 if it may go on, else the seconds
        until the bucket has a call again. StateUnavailable when Redis does not answer."""
        try:
            allowed, wait_ms = await self._script(
                keys=[self._keys.rate_bucket(bucket)], args=[self.rate, self.burst, now]
            )
        except RedisError as err:
            raise StateUnavailable(str(err)) from err
        return 0.0 if int(allowed) else int(wait_ms) / 1000
