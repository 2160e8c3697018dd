"""The decision log across a Redis outage: a real redis-server killed and restarted on its port.
No record may be lost: they wait in memory, then in the spill file, and reach the stream once
Redis is back, also when the worker that spilled them stopped first."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from server.metrics import Metrics
from server.state.embedded_redis import EmbeddedRedis
from server.state.keys import Keys
from server.state.log_writer import LogWriter
from server.state.records import OutcomeRecord

KEYS = Keys()


def _outcome(i: int) -> OutcomeRecord:
    return OutcomeRecord(f"e{i}", f"d{i}", f"c{i}", "o1", "ACCEPTED", 1.0, 1_700_000_000.0 + i, "web", 0.2, 0.5)


def _count(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name + "_total")
    return 0.0 if value is None else value


@pytest.fixture
async def outage(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedRedis, aioredis.Redis]]:
    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    client = aioredis.Redis.from_url(server.url, socket_timeout=0.2, socket_connect_timeout=0.2)
    try:
        yield server, client
    finally:
        await client.aclose()
        server.stop()


def _kill(server: EmbeddedRedis) -> None:
    assert server._proc is not None
    os.kill(server._proc.pid, signal.SIGKILL)
    server._proc.wait()


async def _until(check: object, seconds: float = 20.0) -> None:
    assert callable(check)
    for _ in range(int(seconds / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_records_written_while_redis_is_down_reach_the_stream_when_it_returns(
    outage: tuple[EmbeddedRedis, aioredis.Redis], tmp_path: Path
) -> None:
    server, client = outage
    metrics = Metrics()
    writer = LogWriter(
        client, KEYS, metrics, flush_seconds=0.001, maxlen=10_000, spill_dir=tmp_path / "spill", spill_at=50
    )
    writer.start()
    try:
        _kill(server)
        for i in range(300):
            writer.outcome(_outcome(i))
            if i % 50 == 0:
                await asyncio.sleep(0.2)  # several failed attempts, so the queue spills
        spilled = list((tmp_path / "spill").glob("*.spill"))
        assert spilled, "beyond spill_at the records must move to disk"
        assert _count(metrics, "nbo_log_records_spilled") > 0
        server.start()

        async def all_written() -> bool:
            return int(await client.xlen(KEYS.outcome_stream)) >= 300

        await _until(all_written)
    finally:
        await writer.close()
    entries = await client.xrange(KEYS.outcome_stream)
    event_ids = {f[b"r"].decode().split('"event_id":"')[1].split('"')[0] for _, f in entries}
    assert event_ids == {f"e{i}" for i in range(300)}
    assert _count(metrics, "nbo_log_records_dropped") == 0
    assert _count(metrics, "nbo_log_records_replayed") == _count(metrics, "nbo_log_records_spilled")
    assert not list((tmp_path / "spill").glob("*.spill*")), "replayed files are removed"


async def test_a_worker_stopped_during_the_outage_leaves_its_records_to_the_next(
    outage: tuple[EmbeddedRedis, aioredis.Redis], tmp_path: Path
) -> None:
    server, client = outage
    spill = tmp_path / "spill"
    first = LogWriter(client, KEYS, Metrics(), flush_seconds=0.001, maxlen=10_000, spill_dir=spill)
    first.start()
    _kill(server)
    for i in range(120):
        first.outcome(_outcome(i))
    await asyncio.sleep(0.3)
    await first.close(wait_seconds=0.5)  # Redis is still down: nothing can be written
    assert sum(len(p.read_text().splitlines()) for p in spill.glob("*.spill")) == 120

    server.start()
    metrics = Metrics()
    second = LogWriter(client, KEYS, metrics, flush_seconds=0.001, maxlen=10_000, spill_dir=spill)
    second.start()
    try:

        async def replayed() -> bool:
            return int(await client.xlen(KEYS.outcome_stream)) == 120

        await _until(replayed)
    finally:
        await second.close()
    assert _count(metrics, "nbo_log_records_replayed") == 120
    assert not list(spill.iterdir())


async def test_without_a_spill_directory_a_shutdown_during_the_outage_counts_what_it_lost(
    outage: tuple[EmbeddedRedis, aioredis.Redis],
) -> None:
    server, client = outage
    metrics = Metrics()
    writer = LogWriter(client, KEYS, metrics, flush_seconds=0.001, maxlen=10_000)
    writer.start()
    _kill(server)
    for i in range(40):
        writer.outcome(_outcome(i))
    await asyncio.sleep(0.2)
    await writer.close(wait_seconds=0.3)
    assert _count(metrics, "nbo_log_records_dropped") == 40
