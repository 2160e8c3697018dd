"""The one decision-id secret all replicas and workers share (server.ids.DecisionIds).

Configured (Settings.decision_id_secret), it is used as given. Otherwise the first worker to
find none in Redis makes one (SET NX: all racing workers end with the same) and every worker
reads it there, checking again every poll so that a secret replaced in Redis (a rotation) is
picked up by the whole fleet within a poll. Until a worker has the secret it answers every
decision degraded (fail closed): an id no other replica could open would lose its outcomes.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

import redis.asyncio as aioredis

from server.ids import DecisionIds
from server.state.keys import Keys
from server.state.polling import Poller

log = logging.getLogger(__name__)


class DecisionIdSecret(Poller):
    """Calls `on_change` with a codec whenever the secret is first known or has changed."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        on_change: Callable[[DecisionIds], None],
        poll_seconds: float,
        configured: str | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.on_change = on_change
        self.poll_seconds = poll_seconds
        self._configured = configured
        self._seen: bytes | None = None

    async def check(self) -> bool:
        secret = self._configured.encode() if self._configured is not None else await self._shared()
        if secret == self._seen:
            return False
        ids = DecisionIds(secret)  # ValueError for a secret too short: logged by the poller
        if self._seen is not None:
            log.warning("the decision id secret changed: ids issued before are now unknown (NOT_FOUND)")
        self._seen = secret
        self.on_change(ids)
        return True

    async def _shared(self) -> bytes:
        key = self.keys.decision_id_secret
        found = await self.client.get(key)
        if found is None:
            await self.client.set(key, secrets.token_hex(32), nx=True)
            found = await self.client.get(key)
            if found is None:
                raise ValueError(f"{key} was neither set nor readable")
        return found if isinstance(found, bytes) else str(found).encode()

    def start(self) -> None:
        if self._configured is None:  # a configured secret never changes while we run
            super().start()
