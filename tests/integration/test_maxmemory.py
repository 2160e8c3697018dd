"""The recommended Redis memory setting (docs/operations.md, "Redis memory"): `maxmemory` with
`maxmemory-policy noeviction`. A full Redis refuses writes and evicts nothing, so budget counters
and contact history stay whole and decisions degrade (send nothing) rather than spend budget they
cannot count; once memory is back, decisions are exact again. A redis-server of its own, filled
for real."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis

from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.state.embedded_redis import EmbeddedRedis
from server.state.keys import Keys
from tests.integration.conftest import CUSTOMERS
from tests.integration.harness import Clock, Harness, load_customers, publish_text
from tests.integration.test_budgets import budgeted

KEYS = Keys()
FILL = b"x" * 10_000


@pytest.fixture
async def full(tmp_path: Path) -> AsyncIterator[tuple[Harness, redis.Redis]]:
    with EmbeddedRedis(tmp_path / "redis", persist=False) as server:
        client = redis.Redis.from_url(server.url)
        client.config_set("maxmemory-policy", "noeviction")
        load_customers(server.url, CUSTOMERS, tmp_path)
        publish_text(server.url, budgeted("{total_awards: 100}"))
        harness = Harness(server.url, Clock(), breaker_failures=1000)  # every call tries Redis
        await harness.start()
        try:
            yield harness, client
        finally:
            await harness.stop()
            client.close()


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def fill_up(client: redis.Redis) -> int:
    """Cap memory a little above what is used, then write until Redis refuses: what a log or a
    flood that outgrew its budget does. Returns the limit set. A Redis at its limit lets a write
    through whenever memory dips under it (a freed client buffer is enough), and such a write is
    a whole decision, counted; for every write to be refused the limit then goes under what is
    used."""
    limit = used(client) + 2_000_000
    client.config_set("maxmemory", limit)
    for i in range(1000):
        try:
            client.set(f"fill:{i}", FILL)
        except redis.exceptions.OutOfMemoryError:
            client.config_set("maxmemory", used(client) - 500_000)
            return limit
    raise AssertionError("maxmemory was never reached")


def state(client: redis.Redis) -> dict[str, bytes | None]:
    keys = [KEYS.budget_total("adhoc"), KEYS.contacts("vip"), KEYS.channel_contacts("vip", "call_centre")]
    return {k: client.dump(k) for k in keys}


async def test_a_full_redis_evicts_no_budget_or_contact_state_and_decisions_degrade(
    full: tuple[Harness, redis.Redis],
) -> None:
    nbo, client = full
    d = await nbo.decide("vip", pb.CALL_CENTRE)
    assert [o.offer_id for o in d.offers] == ["o_adhoc"]
    assert (await nbo.report(d.decision_id, "o_adhoc", pb.PRESENTED)).recorded
    await asyncio.sleep(0.1)  # the log writer's flush
    kept = state(client)
    assert all(kept.values()) and client.hget(KEYS.budget_total("adhoc"), "o:o_adhoc:n") == b"1"
    keys_before = client.dbsize()

    limit = fill_up(client)
    for customer in ("vip2", "vip"):  # both would get the budgeted ad hoc offer
        r = await nbo.decide(customer, pb.CALL_CENTRE)
        assert (r.offers, r.degraded, r.no_offer_reason) == ([], True, pb.DEGRADED), customer
    flood = await nbo.decide("nobody", request_id="r-1")
    assert (flood.degraded, flood.no_offer_reason) == (True, pb.DEGRADED)  # nothing kept for it
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await nbo.report(d.decision_id, "o_adhoc", pb.ACCEPTED)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the caller retries later
    assert state(client) == kept  # nothing evicted, nothing half-written
    assert client.hget(KEYS.budget_total("adhoc"), "o:o_adhoc:n") == b"1"
    assert not client.exists(KEYS.request("nobody", "r-1"))

    client.delete(*[f"fill:{i}" for i in range(1000)])  # memory is back
    client.config_set("maxmemory", limit)
    again = await nbo.decide("vip2", pb.CALL_CENTRE)
    assert [o.offer_id for o in again.offers] == ["o_adhoc"] and not again.degraded
    assert client.hget(KEYS.budget_total("adhoc"), "o:o_adhoc:n") == b"2"  # exactly the awards made
    assert (await nbo.report(d.decision_id, "o_adhoc", pb.ACCEPTED)).recorded
    await nbo.worker.writer.close()  # the log records held back while Redis was full are written
    nbo.worker.writer.start()
    assert client.xlen(KEYS.decision_stream) == 5  # every answer, degraded ones flagged
    assert client.dbsize() > keys_before
