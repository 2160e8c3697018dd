"""A background task that calls `check()` every `poll_seconds`, surviving transient failures."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class Poller:
    poll_seconds: float
    _task: asyncio.Task[None] | None = None

    async def check(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=type(self).__name__)

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except (RedisError, OSError, ValueError) as err:
                log.warning("%s check failed: %s", type(self).__name__, err)
            await asyncio.sleep(self.poll_seconds)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
