"""At-least-once consumption of the log streams, and trimming that never drops unread entries.

A consumer group remembers, per entry, who read it and whether it was acknowledged. A consumer
acknowledges only after its work is applied (and that work must be idempotent), so a crash
between reading and acknowledging redelivers instead of losing: the entries stay pending, and
any consumer of the group takes them over (XAUTOCLAIM) once they have been idle for
`claim_idle_ms` — including the same consumer after a restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

Entry = tuple[bytes, dict[bytes, bytes]]


class StreamConsumer:
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
        reply: Any = await self.client.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id=self._claim_from,
            count=self.batch,
        )
        next_start, entries = reply[0], reply[1]
        # a cursor of 0-0 means the scan of the pending list wrapped around
        self._claim_from = next_start.decode() if isinstance(next_start, bytes) else str(next_start)
        # entries trimmed away while pending come back as (id, None): nothing left to redo
        gone = [entry_id for entry_id, fields in entries if fields is None]
        if gone:
            await self.ack(gone)
        return [(entry_id, fields) for entry_id, fields in entries if fields is not None]

    async def ack(self, ids: Sequence[bytes]) -> None:
        if ids:
            await self.client.xack(self.stream, self.group, *ids)


async def safe_trim(client: aioredis.Redis, stream: str, maxlen: int) -> int:
    """Trim `stream` toward `maxlen` entries, but never past an entry some consumer group has not
    acknowledged or not yet been delivered. Returns the number of entries removed."""
    if maxlen < 1:
        raise ValueError("maxlen must be at least 1")
    if int(await client.xlen(stream)) <= maxlen:
        return 0
    # the oldest entry to keep if only the length mattered
    newest: Any = await client.xrevrange(stream, max="+", min="-", count=maxlen)
    bound = _parse(newest[-1][0])
    for group in await client.xinfo_groups(stream):
        # undelivered entries follow the group's last-delivered id; pending ones start at the oldest
        last = _parse(group["last-delivered-id"])
        bound = min(bound, (last[0], last[1] + 1))
        if int(group["pending"]) > 0:
            pending: Any = await client.xpending(stream, group["name"])
            bound = min(bound, _parse(pending["min"]))
    return int(await client.xtrim(stream, minid=f"{bound[0]}-{bound[1]}", approximate=False))


def _parse(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, seq = text.split("-")
    return int(ms), int(seq)
