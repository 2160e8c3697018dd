"""Per-client rate limits: token buckets in a real redis-server, under a controlled clock."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import grpc
import redis
import redis.asyncio as aioredis

from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.state.embedded_redis import EmbeddedRedis
from server.state.keys import Keys
from server.state.rate_limit import RateLimiter, anonymous_bucket
from tests.integration.conftest import CUSTOMERS
from tests.integration.harness import Clock, Harness, load_customers, publish_text
from tests.integration.test_auth import Spy, write_tokens
from tests.unit.catalog_fixtures import BASE

T0 = 1_800_000_000.0


async def test_a_bucket_gives_its_burst_then_refuses_then_refills_at_the_rate(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        limiter = RateLimiter(client, Keys(), rate=2.0, burst=3)
        assert [await limiter.take("a", T0) for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]
        assert await limiter.take("b", T0) == 0.0  # another client's bucket is its own
        assert await limiter.take("a", T0 + 0.25) == 0.25  # half a token back: not enough
        assert await limiter.take("a", T0 + 0.5) == 0.0  # one token back, taken
        assert await limiter.take("a", T0 + 0.5) == 0.5
        # a long pause refills to the burst, never beyond it
        assert [await limiter.take("a", T0 + 100) for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]
        # a replica whose clock is behind refills nothing, and takes no time back
        assert await limiter.take("a", T0 + 99) == 0.5
        key = Keys().rate_bucket("a")
        assert key == "nbo:{r:a}:bucket"
        ttl = await client.pttl(key)
        assert 0 < ttl <= 2500  # as long as a refill takes (1.5 s) and a second
    finally:
        await client.aclose()


def test_anonymous_buckets_are_addresses_made_safe_for_keys() -> None:
    assert anonymous_bucket("10.0.0.7") == "@10.0.0.7"
    assert anonymous_bucket("::1") == "@__1"
    assert anonymous_bucket("{evil}:x") == "@_evil__x"


async def decide(nbo: Harness, token: str | None) -> str:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        await nbo.stub.Decide(pb.DecideRequest(customer_id="vip", channel=pb.WEB), timeout=5, metadata=metadata)
    except grpc.aio.AioRpcError as err:
        return f"{err.code().name}: {err.details()}"
    return "OK"


async def test_each_client_has_its_own_limit_on_both_transports(redis_url: str, tmp_path: Path) -> None:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    publish_text(redis_url, BASE)
    tokens = write_tokens(tmp_path / "tokens.txt")
    clock = Clock(T0)
    settings = {"auth_tokens_file": tmp_path / "tokens.txt", "rate_limit_per_second": 1.0, "rate_limit_burst": 2}
    nbo = Harness(redis_url, clock, http_port=0, **settings)
    await nbo.start()
    spy = Spy()
    nbo.worker.service.decide = spy.wrap("Decide", nbo.worker.service.decide)  # type: ignore[method-assign]
    try:
        assert [await decide(nbo, tokens["decider"]) for _ in range(2)] == ["OK", "OK"]
        refused = await decide(nbo, tokens["decider"])
        assert refused == (
            "RESOURCE_EXHAUSTED: rate limit: client 'decider' may make 1 calls/s in bursts of up to 2; retry in 1000 ms"
        )
        assert len(spy.calls) == 2, "a refused call must never reach the handler"
        assert await decide(nbo, tokens["root"]) == "OK"  # another client: its own bucket

        # HTTP takes from the same bucket
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{nbo.worker.http_port}/v1/decide"
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {tokens['decider']}"}
            body = json.dumps({"customerId": "vip", "channel": "WEB"}).encode()
            async with session.post(url, data=body, headers=headers) as r:
                assert r.status == 429
                assert (await r.json())["error"]["code"] == "RESOURCE_EXHAUSTED"
            clock.now += 1.0
            async with session.post(url, data=body, headers=headers) as r:
                assert r.status == 200
        assert await decide(nbo, tokens["decider"]) == (
            "RESOURCE_EXHAUSTED: rate limit: client 'decider' may make 1 calls/s in bursts of up to 2; retry in 1000 ms"
        )
        assert [c for c, _ in spy.calls] == ["Decide"] * 4
        # counted by RPC name on both transports
        assert nbo.worker.metrics.registry.get_sample_value("nbo_rate_limited_total", {"method": "Decide"}) == 3
    finally:
        await nbo.stop()


async def test_anonymous_callers_are_limited_by_address(redis_url: str, tmp_path: Path) -> None:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    publish_text(redis_url, BASE)
    nbo = Harness(redis_url, Clock(T0), rate_limit_per_second=0.5)  # burst: one second's worth, 1
    await nbo.start()
    try:
        assert nbo.settings.rate_limit_bucket == 1
        assert [await decide(nbo, None) for _ in range(2)] == [
            "OK",
            "RESOURCE_EXHAUSTED: rate limit: calls from this address may make 0.5 calls/s in bursts of up to 1; "
            "retry in 2000 ms",
        ]
        client = redis.Redis.from_url(redis_url)
        assert client.exists("nbo:{r:@127.0.0.1}:bucket") == 1
        client.close()
    finally:
        await nbo.stop()


async def test_without_a_limit_no_bucket_is_touched(redis_url: str, tmp_path: Path) -> None:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    publish_text(redis_url, BASE)
    nbo = Harness(redis_url, Clock(T0))
    await nbo.start()
    try:
        for _ in range(5):
            assert await decide(nbo, None) == "OK"
        client = redis.Redis.from_url(redis_url)
        assert list(client.scan_iter(match="nbo:{r:*")) == []
        client.close()
    finally:
        await nbo.stop()


async def test_rate_limits_fail_open_while_redis_is_away(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis", persist=False) as own:
        load_customers(own.url, CUSTOMERS, tmp_path)
        publish_text(own.url, BASE)
        # the degraded decisions' records spill at stop: into a directory of this test's own, or
        # the next worker started in the working directory would replay them into its Redis
        nbo = Harness(
            own.url,
            Clock(T0),
            rate_limit_per_second=1.0,
            rate_limit_burst=1,
            redis_timeout_seconds=0.2,
            log_spill_dir=tmp_path / "spill",
        )
        await nbo.start()
        registry = nbo.worker.metrics.registry
        try:
            assert await decide(nbo, None) == "OK"
            assert (await decide(nbo, None)).startswith("RESOURCE_EXHAUSTED")
            own.stop()
            # Redis is away: the call goes on (and the decision degrades, as it does without Redis)
            for breaker_open in (False, True):
                r = await nbo.stub.Decide(pb.DecideRequest(customer_id="vip", channel=pb.WEB), timeout=5)
                assert (r.no_offer_reason, r.degraded) == (pb.DEGRADED, True)
                # once the breaker is open the bucket is not even tried
                assert registry.get_sample_value("nbo_redis_errors_total", {"op": "rate_limit"}) == 1
                if not breaker_open:
                    for _ in range(nbo.settings.breaker_failures):
                        nbo.worker.service.services.breaker.failure()
        finally:
            await nbo.stop()
