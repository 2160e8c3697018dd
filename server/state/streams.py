"""At-least-once consumption of the log streams, and trimming that never drops unread entries.

A consumer group remembers, per entry, who read it and whether it was acknowledged. A consumer
acknowledges only after its work is applied (and that work must be idempotent), so a crash
between reading and acknowledging redelivers instead of losing: the entries stay pending, and
any consumer of the group takes them over (XAUTOCLAIM) once they have been idle for
`claim_idle_ms` — including the same consumer after a restart.

Trimming (`safe_trim`) is the other half of the guarantee: a length cap applied blindly (XADD
MAXLEN, XTRIM MAXLEN) deletes the oldest entries whether or not a group has processed them, so
a consumer that stalls for a while silently loses data. `safe_trim` never cuts past what a
group still needs; a stalled group makes the stream grow instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

Entry = tuple[bytes, dict[bytes, bytes]]

# Each trim script call removes at most this many entries: the script runs atomically and
# blocks Redis while it runs, so a large backlog is trimmed in short steps rather than one
# long stall of every decision on the same Redis.
TRIM_STEP = 1000
_TRIM_SCRIPT = resources.files("server.state").joinpath("lua", "safe_trim.lua").read_text()


class StreamConsumer:
    """One consumer of a consumer group: `read()`, do the (idempotent) work, then `ack()`."""

    def __init__(
        self,
        client: aioredis.Redis,
        stream: str,
        group: str,
        consumer: str,
        *,
        batch: int = 500,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        # XAUTOCLAIM scans the pending list in pages; the cursor carries over between reads
        self._claim_from = "0-0"

    async def ensure_group(self) -> None:
        """Create the group at the start of the stream (so nothing already logged is skipped)."""
        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    async def read(self) -> list[Entry]:
        """Entries abandoned by a dead consumer first, else new ones (blocking up to block_ms)."""
        claimed = await self._reclaim()
        if claimed:
            return claimed
        reply: Any = await self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=self.batch, block=self.block_ms
        )
        if not reply:
            return []
        _, entries = reply[0]
        return [(entry_id, fields) for entry_id, fields in entries if fields is not None]

    async def _reclaim(self) -> list[Entry]:
        start = self._claim_from
        reply: Any = await self.client.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id=start,
            count=self.batch,
        )
        cursor = _text(reply[0])  # 0-0: the scan of the pending list wrapped around
        self._claim_from = cursor
        entries = reply[1]
        live = [(entry_id, fields) for entry_id, fields in entries if entry_id is not None and fields is not None]
        if len(live) < len(entries):
            await self._ack_deleted(start, cursor, {entry_id for entry_id, _ in live})
        return live

    async def _ack_deleted(self, start: str, cursor: str, live: set[bytes]) -> None:
        """Acknowledge pending entries that were deleted from the stream (nothing left to redo).

        Redis 7 drops those from the pending list itself; Redis 6.2 returns each as (nil, nil)
        without its id and keeps it pending, so without this it would come back on every read.
        """
        pending: Any = await self.client.xpending_range(
            self.stream,
            self.group,
            min=start,
            max="+" if cursor == "0-0" else f"({cursor}",
            count=10 * self.batch,
            consumername=self.consumer,
        )
        ids = [p["message_id"] for p in pending if p["message_id"] not in live]
        if not ids:
            return
        pipe = self.client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xrange(self.stream, min=entry_id, max=entry_id, count=1)
        found: list[Any] = await pipe.execute()
        await self.ack([entry_id for entry_id, hit in zip(ids, found, strict=True) if not hit])

    async def ack(self, ids: Sequence[bytes]) -> None:
        if ids:
            await self.client.xack(self.stream, self.group, *ids)


async def safe_trim(client: aioredis.Redis, stream: str, maxlen: int) -> int:
    """Trim `stream` toward `maxlen` entries, but never past an entry some consumer group has not
    acknowledged or not yet been delivered. Returns the number of entries removed.

    The cut is the oldest of: the entry that length trimming would keep first, every group's
    oldest pending entry, and the entry after every group's last-delivered one. Each step is
    one script (`server/lua/safe_trim.lua`), so concurrent trims by several workers and
    concurrent reads cannot combine into a cut past what a group needs.
    """
    if maxlen < 0:
        raise ValueError("maxlen must not be negative")
    script = client.register_script(_TRIM_SCRIPT)
    removed = 0
    while True:
        step = int(await script(keys=[stream], args=[maxlen, TRIM_STEP]))
        removed += step
        if step < TRIM_STEP:
            return removed


def safe_trim_sync(client: redis.Redis, stream: str, maxlen: int) -> int:
    """`safe_trim` for a synchronous client (command-line tools)."""
    if maxlen < 0:
        raise ValueError("maxlen must not be negative")
    script = client.register_script(_TRIM_SCRIPT)
    removed = 0
    while True:
        step = int(script(keys=[stream], args=[maxlen, TRIM_STEP]))
        removed += step
        if step < TRIM_STEP:
            return removed


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
