"""Malformed requests, health, reflection, catalog hot reload and degraded operation."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server.catalog.spec import CatalogInvalid
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.state.embedded_redis import EmbeddedRedis
from server.state.keys import Keys
from tests.integration.conftest import CUSTOMERS
from tests.integration.harness import Clock, Harness, load_customers, publish_text
from tests.integration.test_decide import wait_for_catalog
from tests.unit.catalog_fixtures import BASE

INVALID = grpc.StatusCode.INVALID_ARGUMENT
MALFORMED = [
    pytest.param({"customer_id": ""}, "customer_id: must not be empty", id="empty-customer"),
    pytest.param({"customer_id": "a{b}"}, "customer_id: contains '{'", id="hash-tag-in-id"),
    pytest.param({"customer_id": "x" * 65}, "customer_id: must be at most 64 characters, got 65", id="long-id"),
    pytest.param({"channel": pb.CHANNEL_UNSPECIFIED}, "channel: must be set", id="no-channel"),
    pytest.param({"channel": 42}, "channel: unknown channel 42", id="unknown-channel"),
    pytest.param({"max_offers": 26}, "max_offers: must be at most 25, got 26", id="too-many-offers"),
    pytest.param({"max_offers": -1}, "max_offers: must be >= 0, got -1", id="negative-offers"),
    pytest.param({"context": {"Cart": 1.0}}, "context['Cart']: keys are lower_snake_case", id="context-key"),
    pytest.param({"context": {"cart_value": float("nan")}}, "context['cart_value']: must be finite", id="context-nan"),
    pytest.param({"events": ["ok", "bad event"]}, "events[1]: contains ' '", id="event-name"),
    pytest.param({"placement": "home/top"}, "placement: contains '/'", id="placement"),
    pytest.param({"request_id": "r" * 129}, "request_id: must be at most 128 characters", id="request-id"),
]


@pytest.mark.parametrize(("fields", "message"), MALFORMED)
async def test_malformed_requests_are_invalid_argument_naming_the_field(
    nbo: Harness, fields: dict[str, object], message: str
) -> None:
    request = {"customer_id": "vip", "channel": pb.WEB, **fields}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await nbo.stub.Decide(pb.DecideRequest(**request), timeout=5)
    assert info.value.code() == INVALID
    assert message in (info.value.details() or "")
    field = message.split(":", maxsplit=1)[0].split("[", maxsplit=1)[0]
    counted = nbo.worker.metrics.registry.get_sample_value("nbo_invalid_requests_total", {"field": field})
    assert counted is not None and counted >= 1


async def test_every_refused_outcome_is_counted_by_its_field(nbo: Harness) -> None:
    registry = nbo.worker.metrics.registry
    cases = [(nbo.unknown_decision_id(), "o_adhoc", grpc.StatusCode.NOT_FOUND, "decision_id")]
    cases.append(("not-an-id", "o_adhoc", INVALID, "decision_id"))
    cases.append((nbo.unknown_decision_id(), "", INVALID, "offer_id"))
    for decision_id, offer_id, code, field in cases:
        before = registry.get_sample_value("nbo_invalid_requests_total", {"field": field}) or 0.0
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await nbo.report(decision_id, offer_id, pb.ACCEPTED)
        assert info.value.code() == code
        assert registry.get_sample_value("nbo_invalid_requests_total", {"field": field}) == before + 1


async def test_a_call_with_too_little_time_left_awards_nothing(redis_url: str, tmp_path: Path) -> None:
    """Below deadline_margin_seconds the server starts no Redis call and no award: whatever the
    caller sees (DEADLINE or DEADLINE_EXCEEDED), no budget is spent and no contact recorded."""
    load_customers(redis_url, CUSTOMERS, tmp_path)
    version = publish_text(redis_url, BASE.replace("    cost: 1\n", "    cost: 1\n    budget: {total_awards: 100}\n"))
    nbo = Harness(redis_url, Clock())
    await nbo.start()
    try:
        await wait_for_catalog(nbo, version)
        answers = []
        for _ in range(20):
            try:
                answers.append(
                    await nbo.stub.Decide(pb.DecideRequest(customer_id="vip", channel=pb.WEB), timeout=0.003)
                )
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert {a.no_offer_reason for a in answers} <= {pb.DEADLINE}
        normal = await nbo.decide("vip")
    finally:
        await nbo.stop()
    assert [o.offer_id for o in normal.offers] == ["o_adhoc"]  # the one award of the test
    client = redis.Redis.from_url(redis_url)
    assert client.hget(Keys().budget_total("adhoc"), "o:o_adhoc:n") == b"1"
    client.close()


# field 1 (customer_id) as a length-delimited string holding a byte that is not UTF-8; and a
# lone tag byte with no value
UNDECODABLE = [pytest.param(b"\x0a\x01\xff", id="bad-utf8"), pytest.param(b"\x9c", id="truncated")]


@pytest.mark.parametrize("raw", UNDECODABLE)
@pytest.mark.parametrize(
    ("method", "message"),
    [("Decide", "nbo.v1.DecideRequest"), ("ReportOutcome", "nbo.v1.ReportOutcomeRequest")],
)
async def test_undecodable_bytes_are_invalid_argument(nbo: Harness, raw: bytes, method: str, message: str) -> None:
    assert nbo.channel is not None
    call = nbo.channel.unary_unary(f"/nbo.v1.Decisioning/{method}", request_serializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(raw, timeout=5)
    assert info.value.code() == INVALID
    assert info.value.details() == f"request: not a valid {message} message"
    counted = nbo.worker.metrics.registry.get_sample_value("nbo_invalid_requests_total", {"field": "request"})
    assert counted is not None and counted >= 1


async def test_health_and_reflection(nbo: Harness) -> None:
    assert nbo.channel is not None
    health = health_pb2_grpc.HealthStub(nbo.channel)
    for service in ("", "nbo.v1.Decisioning"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(nbo.channel)

    async def ask() -> list[str]:
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        await call.done_writing()
        return sorted(s.name for s in reply.list_services_response.service)

    assert await ask() == ["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "nbo.v1.Decisioning"]


async def test_catalog_hot_reload_and_an_invalid_catalog_is_never_published(nbo: Harness, redis_url: str) -> None:
    before = await nbo.decide("vip", pb.CALL_CENTRE)
    text = BASE.replace("title: Ad hoc", "title: Ad hoc v2")
    version = publish_text(redis_url, text)
    await wait_for_catalog(nbo, version)
    after = await nbo.decide("vip2", pb.CALL_CENTRE)
    assert after.catalog_version == version != before.catalog_version
    assert after.offers[0].title == "Ad hoc v2"
    with pytest.raises(CatalogInvalid):
        publish_text(redis_url, text.replace("type: ad_hoc", "type: adhoc"))
    client = redis.Redis.from_url(redis_url)
    assert int(client.get(Keys().catalog_current) or 0) == int(version.split("-")[0])
    client.close()
    await asyncio.sleep(0.3)
    assert (await nbo.decide("regular", pb.WEB)).catalog_version == version


async def test_a_catalog_that_no_longer_compiles_keeps_the_old_one_serving(nbo: Harness, redis_url: str) -> None:
    """A schema change that breaks the live catalog must not take the catalog down."""
    client = redis.Redis.from_url(redis_url)
    live = nbo.worker.service.live
    assert live is not None
    # forge a schema v2 without `churn_risk`, which the catalog's segment uses
    from server.features.schema import FeatureSchema

    broken = FeatureSchema(2, tuple(f for f in live.schema.features if f.name != "churn_risk"))
    client.set(Keys().schema(2), broken.to_json())
    client.set(Keys().schema_current, 2)
    client.close()
    await asyncio.sleep(0.5)
    assert nbo.worker.service.live is live
    assert (await nbo.decide("vip", pb.CALL_CENTRE)).offers


async def test_redis_loss_degrades_to_send_nothing(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "r", persist=False) as own:
        load_customers(own.url, CUSTOMERS, tmp_path)
        publish_text(own.url, BASE)
        harness = Harness(own.url, Clock(), redis_timeout_seconds=0.2)
        await harness.start()
        try:
            assert (await harness.decide("vip")).offers
            own.stop()
            r = await harness.decide("vip")
            assert (list(r.offers), r.no_offer_reason, r.degraded) == ([], pb.DEGRADED, True)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await harness.report(r.decision_id, "o_adhoc", pb.ACCEPTED)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await harness.stop()


async def test_no_catalog_yet_is_degraded(redis_url: str) -> None:
    harness = Harness(redis_url, Clock())
    await harness.start()
    try:
        r = await harness.decide("vip")
        assert (r.no_offer_reason, r.degraded) == (pb.DEGRADED, True)
    finally:
        await harness.stop()


async def test_calls_beyond_the_concurrency_bound_are_shed_and_every_answer_is_counted(
    redis_url: str, tmp_path: Path
) -> None:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    version = publish_text(redis_url, BASE)
    # gRPC's own pending queue large enough for the burst: only the worker's bound sheds here
    nbo = Harness(redis_url, Clock(), max_concurrent_rpcs=2, max_pending_rpcs=1000)
    await nbo.start()
    try:
        await wait_for_catalog(nbo, version)
        service = nbo.worker.service
        decide = service.decide

        async def slow(*args: Any, **kwargs: Any) -> Any:
            # hold each admitted call a while: the worker takes calls one per turn of its loop, so
            # calls as fast as a bare decision would rarely overlap on a loaded machine
            await asyncio.sleep(0.05)
            return await decide(*args, **kwargs)

        service.decide = slow  # type: ignore[method-assign]
        calls = [nbo.stub.Decide(pb.DecideRequest(customer_id="vip", channel=pb.WEB), timeout=5) for _ in range(60)]
        results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await nbo.stop()
    shed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert shed, "60 calls at once against a bound of 2 must shed some"
    assert {r.code() for r in shed} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    ok = len(results) - len(shed)
    assert ok >= 2
    registry = nbo.worker.metrics.registry
    labels = {"grpc_type": "unary", "grpc_service": "nbo.v1.Decisioning", "grpc_method": "Decide"}
    assert registry.get_sample_value("grpc_server_handled_total", {**labels, "grpc_code": "OK"}) == ok
    assert registry.get_sample_value("grpc_server_handled_total", {**labels, "grpc_code": "RESOURCE_EXHAUSTED"}) == len(
        shed
    )
    assert registry.get_sample_value("nbo_shed_requests_total", {"method": "Decide"}) == len(shed)
    assert {r.details() for r in shed} == {
        "server busy: 2 calls in flight on this worker (max_concurrent_rpcs); retry with backoff"
    }
