"""Log streams on a real Redis: at-least-once consumption, and trimming that keeps what a
consumer group still needs (server/streams.py, the LogWriter's trimming)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis
import redis.asyncio as aioredis

from server.metrics import Metrics
from server.state.keys import Keys
from server.state.log_writer import LogWriter
from server.state.records import OutcomeRecord
from server.state.streams import TRIM_STEP, StreamConsumer, safe_trim, safe_trim_sync
from tests.redis_cluster import async_redis, redis_url_on_both

# every test here runs on a single Redis and on the 3-master cluster
redis_url = redis_url_on_both

KEYS = Keys()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = async_redis(redis_url)
    yield c
    await c.aclose()


async def _add(client: aioredis.Redis, n: int, stream: str = "s") -> list[bytes]:
    return [await client.xadd(stream, {"n": str(i)}) for i in range(n)]


async def _pending(client: aioredis.Redis, stream: str = "s", group: str = "g") -> int:
    return int((await client.xpending(stream, group))["pending"])


# -- at least once -------------------------------------------------------------------------------
async def test_entries_a_dead_consumer_held_go_to_another_after_claim_idle(client: aioredis.Redis) -> None:
    ids = await _add(client, 3)
    a = StreamConsumer(client, "s", "g", "a", batch=10, block_ms=10, claim_idle_ms=50)
    b = StreamConsumer(client, "s", "g", "b", batch=10, block_ms=10, claim_idle_ms=50)
    await a.ensure_group()
    await b.ensure_group()  # a second creation is harmless (BUSYGROUP)
    got_a = await a.read()
    assert got_a == [(ids[i], {b"n": str(i).encode()}) for i in range(3)]
    # a dies here without acknowledging; until the entries are idle long enough nobody takes them
    assert await b.read() == []
    await asyncio.sleep(0.06)
    got_b = await b.read()
    assert got_b == got_a  # exactly a's entries, with their fields
    await b.ack([entry_id for entry_id, _ in got_b])
    assert await _pending(client) == 0
    more = await _add(client, 2)
    assert [entry_id for entry_id, _ in await b.read()] == more
    await b.ack(more)
    assert await _pending(client) == 0
    assert await b.read() == []
    # every entry was delivered, acknowledged and is still in the stream: none lost
    assert [entry_id for entry_id, _ in await client.xrange("s")] == ids + more


async def test_a_restarted_consumer_gets_its_own_unacknowledged_entries_back(client: aioredis.Redis) -> None:
    ids = await _add(client, 2)
    first = StreamConsumer(client, "s", "g", "learner-1", block_ms=10, claim_idle_ms=50)
    await first.ensure_group()
    assert [entry_id for entry_id, _ in await first.read()] == ids
    restarted = StreamConsumer(client, "s", "g", "learner-1", block_ms=10, claim_idle_ms=50)
    await asyncio.sleep(0.06)
    assert [entry_id for entry_id, _ in await restarted.read()] == ids
    await restarted.ack(ids)
    assert await _pending(client) == 0


async def test_a_pending_entry_deleted_from_the_stream_is_acknowledged_not_redelivered_forever(
    client: aioredis.Redis,
) -> None:
    ids = await _add(client, 3)
    a = StreamConsumer(client, "s", "g", "a", block_ms=10, claim_idle_ms=50)
    b = StreamConsumer(client, "s", "g", "b", block_ms=10, claim_idle_ms=50)
    await a.ensure_group()
    await a.read()
    await client.xdel("s", ids[1])  # e.g. trimmed by something other than safe_trim
    await asyncio.sleep(0.06)
    got = await b.read()
    assert [entry_id for entry_id, _ in got] == [ids[0], ids[2]]
    await b.ack([ids[0], ids[2]])
    assert await _pending(client) == 0
    assert await b.read() == []


# -- safe trimming -------------------------------------------------------------------------------
async def test_safe_trim_keeps_what_the_slowest_group_has_not_acknowledged_or_received(
    client: aioredis.Redis,
) -> None:
    ids = await _add(client, 10)
    fast = StreamConsumer(client, "s", "fast", "f", batch=10, block_ms=10)
    slow = StreamConsumer(client, "s", "slow", "s", batch=4, block_ms=10)
    await fast.ensure_group()
    await slow.ensure_group()
    # a group that received nothing yet holds everything back
    assert await safe_trim(client, "s", maxlen=1) == 0
    assert await client.xlen("s") == 10
    await fast.ack([entry_id for entry_id, _ in await fast.read()])
    got = await slow.read()  # the slow group received 0..3 and acknowledged 0 and 1
    await slow.ack([entry_id for entry_id, _ in got[:2]])
    assert await safe_trim(client, "s", maxlen=1) == 2
    assert (await client.xrange("s", count=1))[0][0] == ids[2]  # its oldest pending entry
    await slow.ack([entry_id for entry_id, _ in got[2:]])
    assert await safe_trim(client, "s", maxlen=1) == 2
    assert (await client.xrange("s", count=1))[0][0] == ids[4]  # the first it was not delivered
    await slow.ack([entry_id for entry_id, _ in await slow.read()])  # 4..7
    assert await safe_trim(client, "s", maxlen=1) == 4
    assert (await client.xrange("s", count=1))[0][0] == ids[8]
    # once both groups are through, the length decides
    await slow.ack([entry_id for entry_id, _ in await slow.read()])  # 8, 9
    assert await safe_trim(client, "s", maxlen=1) == 1
    assert [entry_id for entry_id, _ in await client.xrange("s")] == [ids[9]]
    assert await safe_trim(client, "s", maxlen=1) == 0


async def test_safe_trim_without_groups_trims_by_length_in_bounded_steps(client: aioredis.Redis) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(2 * TRIM_STEP + 500):
        pipe.xadd("s", {"n": str(i)})
    ids = await pipe.execute()
    assert await safe_trim(client, "s", maxlen=10) == 2 * TRIM_STEP + 490
    assert [entry_id for entry_id, _ in await client.xrange("s")] == ids[-10:]
    assert await safe_trim(client, "missing", maxlen=10) == 0


def test_the_synchronous_twin_trims_the_same_way(redis_client: redis.Redis) -> None:
    ids = [redis_client.xadd("s", {"n": str(i)}) for i in range(5)]
    redis_client.xgroup_create("s", "g", id=ids[1])  # as if it had been delivered 0 and 1
    assert safe_trim_sync(redis_client, "s", maxlen=1) == 2
    assert [entry_id for entry_id, _ in redis_client.xrange("s")] == ids[2:]


# -- the log writer ------------------------------------------------------------------------------
def _outcome(i: int) -> OutcomeRecord:
    return OutcomeRecord(f"e{i}", f"d{i}", "c", "o", "accepted", 0.0, 1.0, "web", math.nan, math.nan)


def _count(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(f"{name}_total") or 0.0


async def _until(check: Callable[[], Awaitable[bool]], seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_the_log_writer_never_trims_entries_a_group_has_not_acknowledged(client: aioredis.Redis) -> None:
    stream = KEYS.outcome_stream
    reader = StreamConsumer(client, stream, "exporter", "e", batch=100, block_ms=10)
    await reader.ensure_group()
    metrics = Metrics()
    writer = LogWriter(client, KEYS, metrics, flush_seconds=0.001, maxlen=10, trim_seconds=0.02)
    writer.start()
    try:
        for i in range(25):
            writer.outcome(_outcome(i))

        async def written() -> bool:
            return int(await client.xlen(stream)) == 25

        await _until(written)
        await asyncio.sleep(0.1)  # several trim rounds
        assert await client.xlen(stream) == 25  # the group read none: nothing may go
        assert _count(metrics, "nbo_log_records_trimmed") == 0
        await reader.ack([entry_id for entry_id, _ in await reader.read()])

        async def trimmed() -> bool:
            return int(await client.xlen(stream)) == 10

        await _until(trimmed)
        assert _count(metrics, "nbo_log_records_trimmed") == 15
        assert [f[b"r"] for _, f in await client.xrange(stream)] == [
            _outcome(i).to_fields()["r"].encode() for i in range(15, 25)
        ]
    finally:
        await writer.close()


async def test_the_log_writer_retries_a_failed_batch_and_writes_it(
    client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    stream = KEYS.outcome_stream
    await client.set(stream, "not a stream")  # the first attempt fails with WRONGTYPE
    metrics = Metrics()
    writer = LogWriter(client, KEYS, metrics, flush_seconds=0.001, maxlen=10, trim_seconds=60)
    writer.start()
    with caplog.at_level(logging.WARNING, logger="server.state.log_writer"):
        writer.outcome(_outcome(1))

        async def failed_once() -> bool:
            return "attempt 1" in caplog.text

        await _until(failed_once)
        await client.delete(stream)  # the retry, 0.1 s later, finds a usable key
        await writer.close()
    assert [f[b"r"] for _, f in await client.xrange(stream)] == [_outcome(1).to_fields()["r"].encode()]
    assert (_count(metrics, "nbo_log_records_written"), _count(metrics, "nbo_log_records_dropped")) == (1, 0)
