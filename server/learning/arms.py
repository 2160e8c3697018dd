"""How every replica picks up the bandit parameters the learner (server/learner.py) publishes."""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as aioredis

from server.learning.posterior import Arms, decode_arm
from server.state.keys import Keys
from server.state.polling import Poller


class ArmsReloader(Poller):
    """Calls `on_change` with the learned arms whenever the learner published a new version."""

    def __init__(
        self, client: aioredis.Redis, keys: Keys, on_change: Callable[[Arms], None], poll_seconds: float
    ) -> None:
        self.client = client
        self.keys = keys
        self.on_change = on_change
        self.poll_seconds = poll_seconds
        self._seen = 0

    async def check(self) -> bool:
        version = int(await self.client.get(self.keys.bandit_version) or 0)
        if version == self._seen:
            return False
        raw = await self.client.hgetall(self.keys.bandit_arms)
        self._seen = version
        self.on_change(Arms(version, {_text(k): decode_arm(v) for k, v in raw.items()}))
        return True


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
