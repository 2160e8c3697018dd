"""Conversions: RecordConversion over gRPC and HTTP, and `nbo conversions import`, against a real
redis-server; each kept once per event id in the conversion log."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.state.conversions import ConversionRecord, event_digest
from server.state.keys import Keys
from server.state.log_reader import LogReader
from tests.integration.harness import Clock, Harness
from tests.integration.test_cli import run
from tests.redis_cluster import redis_url_on_both, sync_redis

# every test here runs on a single Redis and on the 3-master cluster
redis_url = redis_url_on_both

NOW = Clock().now
KEYS = Keys()


async def convert(nbo: Harness, **fields: Any) -> Any:
    request = {"customer_id": "vip", "kind": "purchase", "value": 25.0, "event_id": "order-1", **fields}
    return await nbo.stub.RecordConversion(pb.RecordConversionRequest(**request), timeout=5)


def logged(redis_url: str) -> list[ConversionRecord]:
    client = sync_redis(redis_url)
    try:
        return list(LogReader(client, KEYS).conversions())
    finally:
        client.close()


async def test_a_conversion_is_recorded_once_with_its_time(nbo: Harness, redis_url: str) -> None:
    first = await convert(nbo, occurred_at=NOW - 3600)
    again = await convert(nbo, occurred_at=NOW - 3600)
    assert (first.recorded, first.duplicate) == (True, False)
    assert (again.recorded, again.duplicate) == (False, True)
    now = await convert(nbo, event_id="order-2", value=0.0)
    assert now.recorded
    assert logged(redis_url) == [
        ConversionRecord("order-1", "vip", "purchase", 25.0, NOW - 3600, NOW, "grpc"),
        ConversionRecord("order-2", "vip", "purchase", 0.0, NOW, NOW, "grpc"),
    ]
    # the event id is remembered until the window (35 days) after the conversion happened
    client = sync_redis(redis_url)
    ttl = client.ttl(KEYS.conversion_event(event_digest("order-1")))
    client.close()
    assert 35 * 86_400 - 3600 - 5 <= ttl <= 35 * 86_400 - 3600
    registry = nbo.worker.metrics.registry
    assert registry.get_sample_value("nbo_conversions_total", {"result": "recorded"}) == 2
    assert registry.get_sample_value("nbo_conversions_total", {"result": "duplicate"}) == 1


async def test_an_event_id_reused_for_another_conversion_is_already_exists(nbo: Harness, redis_url: str) -> None:
    await convert(nbo)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await convert(nbo, value=30.0)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert info.value.details() == (
        "event_id: 'order-1' was already used for a different conversion (value differs); use a new event_id"
    )
    assert [r.value for r in logged(redis_url)] == [25.0]


BAD = [
    pytest.param({"customer_id": ""}, "customer_id: must not be empty", id="no-customer"),
    pytest.param({"kind": "Purchase"}, "kind: must be 1-32 of a-z, 0-9 and _ starting with a letter", id="kind"),
    pytest.param({"value": -1.0}, "value: must be finite and >= 0, got -1.0", id="negative"),
    pytest.param({"value": math.inf}, "value: must be finite and >= 0, got inf", id="infinite"),
    pytest.param({"event_id": ""}, "event_id: must be 1-128 printable ASCII characters", id="no-event-id"),
    pytest.param({"event_id": "a b"}, "event_id: must be 1-128 printable ASCII characters", id="space"),
    pytest.param({"occurred_at": NOW + 3600}, "occurred_at: is 3600 s in the future", id="future"),
    pytest.param({"occurred_at": NOW - 40 * 86_400}, "occurred_at: is older than the conversion window", id="old"),
]


@pytest.mark.parametrize(("fields", "message"), BAD)
async def test_bad_conversions_are_invalid_argument_and_write_nothing(
    nbo: Harness, redis_url: str, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await convert(nbo, **fields)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(message)
    assert logged(redis_url) == []
    assert nbo.worker.metrics.registry.get_sample_value("nbo_conversions_total", {"result": "invalid"}) == 1


async def test_http_records_conversions_in_json(redis_url: str) -> None:
    harness = Harness(redis_url, Clock(), http_port=0)
    await harness.start()
    try:
        url = f"http://127.0.0.1:{harness.worker.http_port}/v1/conversions"
        body = {"customerId": "vip", "kind": "signup", "value": 1.5, "eventId": "crm-7"}
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=json.dumps(body), headers={"Content-Type": "application/json"}) as r:
                assert (r.status, await r.json()) == (200, {"recorded": True, "duplicate": False})
            async with session.post(url, data=json.dumps(body), headers={"Content-Type": "application/json"}) as r:
                assert (r.status, await r.json()) == (200, {"recorded": False, "duplicate": True})
            bad = {**body, "eventId": "crm-8", "kind": "x y"}
            async with session.post(url, data=json.dumps(bad), headers={"Content-Type": "application/json"}) as r:
                answer = await r.json()
                assert r.status == 400
                assert answer["error"]["field"] == "kind"
    finally:
        await harness.stop()
    assert [(r.event_id, r.source) for r in logged(redis_url)] == [("crm-7", "http")]


def test_import_checks_the_whole_file_then_records_each_row_once(redis_url: str, tmp_path: Path) -> None:
    yesterday = datetime.fromtimestamp(time.time() - 86_400, UTC).replace(tzinfo=None).isoformat(timespec="seconds")
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "customer_id,kind,value,event_id,occurred_at\n"
        f"c1,purchase,10,e1,{yesterday}\n"
        "c2,purchase,ten,e2,\n"
        'c3,"Big Sale",5,e3,\n'
        "c4,purchase,5,e1,\n"
    )
    result = run(["conversions", "import", str(bad)], redis_url, tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{bad}:3:13: value: not a number: 'ten'",
        f"{bad}:4:4: kind: must be 1-32 of a-z, 0-9 and _ starting with a letter, got 'Big Sale'",
        f"{bad}:5:15: event_id: 'e1' repeats line 2",
        "3 problems; nothing imported",
    ]
    assert logged(redis_url) == []
    good = tmp_path / "orders.csv"
    good.write_text("customer_id,kind,value,event_id\nc1,purchase,10,e1\nc2,purchase,12.5,e2\n")
    first = run(["conversions", "import", str(good)], redis_url, tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"{good}: 2 conversions recorded, 0 duplicates" in first.stdout
    again = run(["conversions", "import", str(good)], redis_url, tmp_path)
    assert f"{good}: 0 conversions recorded, 2 duplicates" in again.stdout
    changed = tmp_path / "changed.csv"
    changed.write_text("customer_id,kind,value,event_id\nc1,purchase,11,e1\nc3,purchase,1,e3\n")
    conflict = run(["conversions", "import", str(changed)], redis_url, tmp_path)
    assert conflict.returncode == 1
    assert (
        f"{changed}:2:16: event_id: 'e1' was already used for a different conversion (value differs); "
        "use a new event_id" in conflict.stderr
    )
    records = logged(redis_url)
    assert [(r.customer_id, r.value, r.event_id, r.source) for r in records] == [
        ("c1", 10.0, "e1", "import"),
        ("c2", 12.5, "e2", "import"),
        ("c3", 1.0, "e3", "import"),
    ]
