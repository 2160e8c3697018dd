"""The HTTP/JSON front over real HTTP: a real server in-process (and as `nbo serve`), real Redis.

Its requests are the gRPC tests' requests in the proto's JSON mapping; its answers must be the
gRPC answers: the same decisions from the same DecisionService, the same error messages.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import redis
from google.protobuf import json_format

from server.gen.nbo.v1 import decisioning_pb2 as pb
from tests.integration.conftest import CUSTOMERS
from tests.integration.harness import Clock, Harness, load_customers, publish_text
from tests.integration.test_api_edges import MALFORMED
from tests.integration.test_cli import GOOD, NBO
from tests.unit.catalog_fixtures import BASE

JSON = {"Content-Type": "application/json"}


class Http:
    """A harness whose worker also serves HTTP, with a client session to it."""

    def __init__(self, nbo: Harness, session: aiohttp.ClientSession) -> None:
        self.nbo = nbo
        self.session = session
        self.base = f"http://127.0.0.1:{nbo.worker.http_port}"

    async def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.session.post(self.base + path, data=data, headers=JSON if headers is None else headers) as r:
            assert r.content_type == "application/json"
            return r.status, await r.json()

    async def decide(self, **fields: Any) -> Any:
        status, body = await self.post("/v1/decide", fields)
        assert status == 200, body
        return body


@pytest.fixture
async def http(redis_url: str, tmp_path: Path) -> AsyncIterator[Http]:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    publish_text(redis_url, BASE)
    harness = Harness(redis_url, Clock(), http_port=0)
    await harness.start()
    async with aiohttp.ClientSession() as session:
        yield Http(harness, session)
    await harness.stop()


async def test_a_decision_in_json_names_with_every_field(http: Http) -> None:
    body = await http.decide(customerId="vip", channel="CALL_CENTRE", maxOffers=2)
    assert set(body) == {
        "decisionId",
        "offers",
        "noOfferReason",
        "modelVersion",
        "catalogVersion",
        "degraded",
        "suppressed",
        "replayed",
    }
    assert [o["offerId"] for o in body["offers"]] == ["o_adhoc"]
    assert body["offers"][0]["campaignType"] == "ad_hoc"
    assert body["offers"][0]["selectionProbability"] == 1.0
    assert (body["noOfferReason"], body["degraded"], body["replayed"]) == ("NO_OFFER_REASON_UNSPECIFIED", False, False)
    # the proto's original names are accepted too, and enums by number
    again = await http.decide(customer_id="regular", channel=pb.WEB, max_offers=1)
    assert http.nbo.worker.service.ids is not None
    assert http.nbo.worker.service.ids.open(again["decisionId"]) == "regular"
    nothing = await http.decide(customerId="no_web", channel="WEB")
    assert (nothing["offers"], nothing["noOfferReason"]) == ([], "OPTED_OUT")


async def test_an_outcome_is_recorded_once(http: Http) -> None:
    d = await http.decide(customerId="vip", channel="CALL_CENTRE")
    report = {"decisionId": d["decisionId"], "offerId": "o_adhoc", "outcome": "CONVERTED", "value": 12.5}
    assert await http.post("/v1/outcomes", report) == (200, {"recorded": True, "duplicate": False})
    assert await http.post("/v1/outcomes", report) == (200, {"recorded": False, "duplicate": True})


@pytest.mark.parametrize(("fields", "message"), MALFORMED)
async def test_invalid_requests_answer_400_with_the_grpc_message(
    http: Http, fields: dict[str, object], message: str
) -> None:
    request = pb.DecideRequest(**{"customer_id": "vip", "channel": pb.WEB, **fields})
    status, body = await http.post("/v1/decide", json_format.MessageToDict(request))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await http.nbo.stub.Decide(request, timeout=5)
    assert status == 400
    assert body["error"]["code"] == "INVALID_ARGUMENT" == info.value.code().name
    assert body["error"]["message"] == info.value.details()
    assert message in body["error"]["message"]
    assert body["error"]["field"] == message.split(":", maxsplit=1)[0]


async def test_outcome_errors_map_to_their_http_status(http: Http) -> None:
    d = await http.decide(customerId="vip", channel="CALL_CENTRE")
    cases = [
        (
            http.nbo.unknown_decision_id(),
            "o_adhoc",
            "ACCEPTED",
            404,
            "NOT_FOUND",
            "decision_id",
            "decision_id: no decision",
        ),
        ("garbage", "o_adhoc", "ACCEPTED", 400, "INVALID_ARGUMENT", "decision_id", "decision_id: not a decision id"),
        (
            d["decisionId"],
            "o_life",
            "ACCEPTED",
            400,
            "INVALID_ARGUMENT",
            "offer_id",
            "offer_id: offer 'o_life' was not",
        ),
        (d["decisionId"], "o_adhoc", "OUTCOME_UNSPECIFIED", 400, "INVALID_ARGUMENT", "outcome", "outcome: must be set"),
        ("", "o_adhoc", "ACCEPTED", 400, "INVALID_ARGUMENT", "decision_id", "decision_id: must not be empty"),
    ]
    for decision_id, offer_id, outcome, status, code, field, message in cases:
        report = {"decisionId": decision_id, "offerId": offer_id, "outcome": outcome}
        got, body = await http.post("/v1/outcomes", report)
        assert (got, body["error"]["code"], body["error"].get("field")) == (status, code, field), body
        assert body["error"]["message"].startswith(message), body


async def test_a_request_id_replays_the_decision_across_transports(http: Http) -> None:
    first = await http.decide(customerId="vip", channel="CALL_CENTRE", requestId="r-1")
    again = await http.decide(customerId="vip", channel="CALL_CENTRE", requestId="r-1")
    assert (first["replayed"], again["replayed"]) == (False, True)
    assert {**again, "replayed": False} == first
    by_grpc = await http.nbo.decide("vip", pb.CALL_CENTRE, request_id="r-1")
    assert by_grpc.replayed and by_grpc.decision_id == first["decisionId"]


async def test_reused_ids_are_409_already_exists_naming_the_field(http: Http) -> None:
    first = await http.decide(customerId="vip", channel="CALL_CENTRE", requestId="r-1")
    status, body = await http.post("/v1/decide", {"customerId": "vip", "channel": "WEB", "requestId": "r-1"})
    assert (status, body["error"]["code"], body["error"]["field"]) == (409, "ALREADY_EXISTS", "request_id")
    assert body["error"]["message"] == (
        "request_id: 'r-1' was already used for a different request (channel differs); use a new request_id"
    )
    report = {"decisionId": first["decisionId"], "offerId": "o_adhoc", "outcome": "PRESENTED", "eventId": "ev-1"}
    assert (await http.post("/v1/outcomes", report))[0] == 200
    status, body = await http.post("/v1/outcomes", {**report, "outcome": "DECLINED"})
    assert (status, body["error"]["code"], body["error"]["field"]) == (409, "ALREADY_EXISTS", "event_id")
    assert body["error"]["message"].startswith("event_id: 'ev-1' was already used for a different outcome")


async def test_grpc_and_http_decide_the_same(http: Http, redis_url: str, tmp_path: Path) -> None:
    """The same request on the same state gives the same decision on both transports."""
    by_grpc = await http.nbo.decide("regular", pb.WEB, max_offers=3, explain=True, context={"cart_value": 3})
    client = redis.Redis.from_url(redis_url)
    client.flushall()  # back to the state the gRPC decision met: no contact history, no budget used
    client.close()
    load_customers(redis_url, CUSTOMERS, tmp_path)
    publish_text(redis_url, BASE)
    request = {"customerId": "regular", "channel": "WEB", "maxOffers": 3, "explain": True}
    by_http = await http.decide(**request, context={"cart_value": 3})  # map keys are data: not renamed
    expected = json_format.MessageToDict(by_grpc, always_print_fields_with_no_presence=True)
    assert by_http["decisionId"] != expected["decisionId"]
    assert {**by_http, "decisionId": ""} == {**expected, "decisionId": ""}
    assert [o["offerId"] for o in by_http["offers"]] == ["o_life"]
    assert [s["offerId"] for s in by_http["suppressed"]] == ["o_adhoc", "o_trig"]


async def test_unknown_and_doubly_named_fields_are_refused(http: Http) -> None:
    status, body = await http.post("/v1/decide", {"customerId": "vip", "channel": "WEB", "customerID": "x"})
    assert (status, body["error"]["field"]) == (400, "customerID")
    assert body["error"]["message"] == (
        "customerID: unknown field; DecideRequest has customerId, channel, context, events, placement, "
        "maxOffers, requestId, explain"
    )
    status, body = await http.post("/v1/decide", {"customerId": "vip", "customer_id": "vip2", "channel": "WEB"})
    assert (status, body["error"]["message"]) == (400, "customer_id: given twice, as customerId and customer_id")
    status, body = await http.post("/v1/outcomes", {"decisionId": "x", "offerId": "o", "outcome": 2, "extra": 1})
    assert (status, body["error"]["field"]) == (400, "extra")


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (b'{"customerId": "vip",', "body", "body: invalid JSON at line 1 column 22 (char 21): Expecting property name"),
        (b'{"customerId":\n  vip}', "body", "body: invalid JSON at line 2 column 3 (char 17): Expecting value"),
        (b"", "body", "body: invalid JSON at line 1 column 1 (char 0): Expecting value"),
        (b"\xff{}", "body", "body: not UTF-8: invalid start byte at byte 0"),
        (b'["vip"]', "body", "body: must be a JSON object, got an array"),
        (b'{"context": {"x": NaN}}', "body", 'body: invalid JSON: NaN is not a JSON value (send "NaN" as a string)'),
        (b'{"customerId": "vip", "channel": "FAX"}', "channel", "channel: Invalid enum value FAX for enum type"),
        (b'{"customerId": "vip", "maxOffers": 1.5}', "max_offers", "max_offers: Couldn't parse integer: 1.5"),
        (b'{"customerId": 7}', "customer_id", "customer_id: expected string or bytes-like object, got 'int'"),
        (b'{"events": "login"}', "events", "events: repeated field events must be in [] which is login"),
    ],
)
async def test_malformed_bodies_are_400_with_the_position_or_field(
    http: Http, body: bytes, field: str, message: str
) -> None:
    status, answer = await http.post("/v1/decide", body)
    assert (status, answer["error"]["code"], answer["error"]["field"]) == (400, "INVALID_ARGUMENT", field)
    assert answer["error"]["message"].startswith(message), answer


async def test_media_type_method_path_and_size_are_refused_in_the_error_shape(http: Http) -> None:
    request = {"customerId": "vip", "channel": "WEB"}
    for headers in ({"Content-Type": "text/plain"}, {}, {"Content-Type": "application/json; charset=latin-1"}):
        status, body = await http.post("/v1/decide", request, headers=headers)
        assert (status, body["error"]["code"]) == (415, "UNSUPPORTED_MEDIA_TYPE"), headers
    status, _ = await http.post("/v1/decide", request, headers={"Content-Type": "application/json; charset=UTF-8"})
    assert status == 200
    async with http.session.get(http.base + "/v1/decide") as r:
        assert (r.status, r.headers["Allow"], (await r.json())["error"]["code"]) == (405, "POST", "METHOD_NOT_ALLOWED")
    status, body = await http.post("/v1/decisions", request)
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND")
    padding = "x" * (1 << 20)
    status, body = await http.post("/v1/decide", {**request, "placement": padding})
    assert (status, body["error"]) == (
        413,
        {"code": "PAYLOAD_TOO_LARGE", "message": "body: larger than the limit of 1048576 bytes"},
    )
    sample = http.nbo.worker.metrics.registry.get_sample_value
    assert sample("nbo_http_requests_total", {"path": "/v1/decide", "status": "415"}) == 3
    assert sample("nbo_http_requests_total", {"path": "other", "status": "404"}) == 1
    assert sample("nbo_decisions_total", {"channel": "web", "reason": "none"}) == 1


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=JSON, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_nbo_serve_http_port_with_two_workers(redis_url: str, tmp_path: Path) -> None:
    customers = tmp_path / "c.csv"
    customers.write_text(GOOD)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(BASE)
    env = {**os.environ, "REDIS_URL": redis_url}
    load = [*NBO, "features", "load", str(customers), "--categorical", "tier"]
    assert subprocess.run(load, check=False, capture_output=True, env=env, cwd=tmp_path, timeout=60).returncode == 0
    serve = [*NBO, "serve", "--workers", "2", "--port", "0", "--http-port", "0", "--catalog", str(catalog)]
    proc = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        assert "with 2 worker" in proc.stdout.readline()
        match = re.fullmatch(r"HTTP/JSON on (http://127\.0\.0\.1:\d+)\n", proc.stdout.readline())
        assert match
        url = match.group(1) + "/v1/decide"
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = _post(url, {"customerId": "vip", "channel": "CALL_CENTRE"})
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert (status, [o["offerId"] for o in body["offers"]]) == (200, ["o_adhoc"])
        # each urlopen is a new connection, which the kernel spreads over the workers
        answers = [_post(url, {"customerId": "regular", "channel": "WEB", "explain": True}) for _ in range(20)]
        assert {status for status, _ in answers} == {200}
        assert _post(url, {"customerId": "regular"})[1]["error"]["message"] == "channel: must be set"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
