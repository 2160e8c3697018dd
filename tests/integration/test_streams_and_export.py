"""Log streams: at-least-once consumption, trimming that keeps unacknowledged entries, export."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from server.decision_log import LogWriter
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.keys import Keys
from server.metrics import Metrics
from server.streams import StreamConsumer, safe_trim
from tests.integration.harness import Harness
from training.dataset import read_dataset
from training.log_export import export

KEYS = Keys()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


async def test_an_entry_read_but_not_acknowledged_is_redelivered_to_another_consumer(
    client: aioredis.Redis,
) -> None:
    ids = [await client.xadd("s", {"n": str(i)}) for i in range(5)]
    a = StreamConsumer(client, "s", "g", "a", batch=3, claim_idle_ms=50)
    b = StreamConsumer(client, "s", "g", "b", batch=10, claim_idle_ms=50)
    await a.ensure_group()
    got_a = await a.read()  # a takes three and dies without acknowledging
    assert [e for e, _ in got_a] == ids[:3]
    got_b = await b.read()  # nothing idle long enough yet: b takes the two new ones
    assert [e for e, _ in got_b] == ids[3:]
    await b.ack([e for e, _ in got_b])
    await asyncio.sleep(0.1)
    again = await b.read()  # now a's three are idle: b takes them over
    assert [e for e, _ in again] == ids[:3]
    await b.ack([e for e, _ in again])
    assert (await client.xpending("s", "g"))["pending"] == 0
    assert await b.read() == []


async def test_trimming_never_drops_what_a_group_has_not_acknowledged(client: aioredis.Redis) -> None:
    ids = [await client.xadd("s", {"n": str(i)}) for i in range(10)]
    fast = StreamConsumer(client, "s", "fast", "f", batch=10)
    slow = StreamConsumer(client, "s", "slow", "s", batch=4)
    await fast.ensure_group()
    await slow.ensure_group()
    await fast.ack([e for e, _ in await fast.read()])
    got = await slow.read()  # the slow group has read 4 and acknowledged 2
    await slow.ack([e for e, _ in got[:2]])
    removed = await safe_trim(client, "s", maxlen=1)
    assert removed == 2
    first, _ = (await client.xrange("s", count=1))[0]
    assert first == ids[2]  # the slow group's oldest pending entry is still there
    await slow.ack([e for e, _ in got[2:]])
    assert await safe_trim(client, "s", maxlen=1) == 2  # up to what the slow group was not delivered
    assert (await client.xrange("s", count=1))[0][0] == ids[4]
    await client.xgroup_destroy("s", "slow")
    assert await safe_trim(client, "s", maxlen=1) == 5  # no group holds anything back now
    assert await client.xlen("s") == 1


async def test_the_log_writer_trims_without_losing_unread_entries(client: aioredis.Redis) -> None:
    reader = StreamConsumer(client, KEYS.decision_stream, "exporter", "e")
    await reader.ensure_group()
    writer = LogWriter(client, KEYS, Metrics(), flush_seconds=0.001, maxlen=1000, trim_seconds=0.0)
    writer.start()
    for i in range(1500):
        writer._put((KEYS.decision_stream, {"v": "1", "r": json.dumps({"i": i})}, None))
    await writer.close()
    assert await client.xlen(KEYS.decision_stream) == 1500  # nothing acknowledged: nothing trimmed


@pytest.fixture
async def decided(nbo: Harness, redis_url: str) -> AsyncIterator[list[str]]:
    """Three decisions with offers: accepted (and then converted), declined, no response."""
    ids = []
    for customer, outcome in (("vip", pb.ACCEPTED), ("vip2", pb.DECLINED), ("regular", None)):
        r = await nbo.decide(customer, pb.WEB, context={"cart_value": 40.0})
        ids.append(r.decision_id)
        if outcome is not None:
            await nbo.report(r.decision_id, r.offers[0].offer_id, outcome)
    await nbo.report(ids[0], "o_adhoc", pb.CONVERTED)
    sync = redis.Redis.from_url(redis_url)
    for _ in range(300):
        if sync.xlen(KEYS.decision_stream) >= 3 and sync.xlen(KEYS.outcome_stream) >= 3:
            break
        await asyncio.sleep(0.01)
    sync.close()
    yield ids


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
async def test_export_joins_decisions_and_outcomes_in_the_dataset_schema(
    decided: list[str], redis_url: str, tmp_path: Path, suffix: str
) -> None:
    sync = redis.Redis.from_url(redis_url)
    out = tmp_path / f"log{suffix}"
    # a redelivered outcome entry changes nothing
    _, fields = sync.xrange(KEYS.outcome_stream, count=1)[0]
    sync.xadd(KEYS.outcome_stream, fields)
    window = 30 * 86400.0
    now = 1_800_000_000.0 + window + 1  # the harness clock's decisions are all past their window
    summary = export(sync, KEYS, out, window_seconds=window, now=now)
    assert (summary.rows, summary.decisions, summary.accepted, summary.duplicates) == (3, 3, 1, 1)
    table = read_dataset(out)
    rows = {r["decision_id"]: r for r in table.to_pylist()}
    assert [rows[d]["outcome"] for d in decided] == [1, 0, 0]
    assert [rows[d]["value"] for d in decided] == [100.0, 0.0, 0.0]  # o_adhoc's catalog value
    assert [rows[d]["offer_id"] for d in decided] == ["o_adhoc", "o_adhoc", "o_life"]
    assert {rows[d]["selection_probability"] for d in decided} == {1.0}
    assert rows[decided[0]]["tier"] == "A" and rows[decided[0]]["tenure_months"] == 40.0
    assert rows[decided[2]]["tier"] == "B"
    assert rows[decided[0]]["ctx_cart_value"] == 40.0
    assert math.isnan(rows[decided[1]]["churn_risk"]) is False
    # inside the window nothing is final yet
    early = export(sync, KEYS, tmp_path / f"open{suffix}", window_seconds=window, now=1_800_000_100.0)
    assert (early.rows, early.open) == (0, 3)
    sync.close()
