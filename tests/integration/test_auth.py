"""Callers and roles over real gRPC and real HTTP: every refusal happens before the handler.

A server with a tokens file of three clients (decide only, report only, admin) is called with
each credential on each method over each transport; a spy around the DecisionService's methods
records every call that reached it, and with which client name.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server.api.tokens import format_line, new_token, token_digest
from server.gen.nbo.v1 import decisioning_pb2 as pb
from tests.integration.conftest import CUSTOMERS
from tests.integration.harness import Clock, Harness, load_customers, publish_text
from tests.unit.catalog_fixtures import BASE

ROLES = {"decider": {"decide"}, "reporter": {"report"}, "root": {"admin"}, "agent": {"decide", "report"}}


@dataclass
class Spy:
    """Records (method, caller) for every call that reached the service."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    def wrap(self, method: str, real: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def spy(*args: Any, caller: str = "", **kwargs: Any) -> Any:
            self.calls.append((method, caller))
            return await real(*args, caller=caller, **kwargs)

        return spy


@dataclass
class Secured:
    nbo: Harness
    session: aiohttp.ClientSession
    tokens: dict[str, str]
    spy: Spy
    decision_id: str  # a real decision with offer o_adhoc, for ReportOutcome

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.nbo.worker.http_port}"

    def metadata(self, credential: str) -> tuple[tuple[str, str], ...]:
        value = self.authorization(credential)
        return () if value is None else (("authorization", value),)

    def authorization(self, credential: str) -> str | None:
        if credential == "none":
            return None
        if credential == "bad":
            return "Bearer " + new_token()  # well-formed, but in no tokens file
        return "Bearer " + self.tokens[credential]


def write_tokens(path: Path) -> dict[str, str]:
    tokens = {name: new_token() for name in ROLES}
    lines = ["# test clients", *(format_line(n, frozenset(ROLES[n]), token_digest(t)) for n, t in tokens.items())]
    path.write_text("\n".join(lines) + "\n")
    return tokens


async def secured_harness(redis_url: str, tmp_path: Path, **settings: Any) -> tuple[Harness, dict[str, str]]:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    publish_text(redis_url, BASE)
    tokens = write_tokens(tmp_path / "tokens.txt")
    nbo = Harness(redis_url, Clock(), http_port=0, auth_tokens_file=tmp_path / "tokens.txt", **settings)
    await nbo.start()
    return nbo, tokens


@pytest.fixture
async def secured(redis_url: str, tmp_path: Path) -> AsyncIterator[Secured]:
    nbo, tokens = await secured_harness(redis_url, tmp_path)
    first = await nbo.stub.Decide(
        pb.DecideRequest(customer_id="vip", channel=pb.WEB),
        timeout=5,
        metadata=(("authorization", f"Bearer {tokens['root']}"),),
    )
    assert [o.offer_id for o in first.offers] == ["o_adhoc"]
    spy = Spy()
    service = nbo.worker.service
    service.decide = spy.wrap("Decide", service.decide)  # type: ignore[method-assign]
    service.report_outcome = spy.wrap("ReportOutcome", service.report_outcome)  # type: ignore[method-assign]
    async with aiohttp.ClientSession() as session:
        yield Secured(nbo, session, tokens, spy, first.decision_id)
    await nbo.stop()


# credential -> method -> expected code (OK: the call reached the service). The decision reported
# on was made by "root": a reporter has the role, but only the deciding caller or an admin may
# report a decision's outcomes, which the service checks (FORBIDDEN: PERMISSION_DENIED after the
# call reached the service)
EXPECTED = {
    "none": {"Decide": "UNAUTHENTICATED", "ReportOutcome": "UNAUTHENTICATED"},
    "bad": {"Decide": "UNAUTHENTICATED", "ReportOutcome": "UNAUTHENTICATED"},
    "decider": {"Decide": "OK", "ReportOutcome": "PERMISSION_DENIED"},
    "reporter": {"Decide": "PERMISSION_DENIED", "ReportOutcome": "FORBIDDEN"},
    "root": {"Decide": "OK", "ReportOutcome": "OK"},
    "agent": {"Decide": "OK", "ReportOutcome": "FORBIDDEN"},
}
HTTP = {"OK": 200, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "FORBIDDEN": 403}
FORBIDDEN = "decision_id: outcomes of this decision may be reported only by the caller that made it"
MESSAGES = {
    ("none", "UNAUTHENTICATED"): "no credential: send 'authorization: Bearer <token>' (gRPC metadata or HTTP header)",
    ("bad", "UNAUTHENTICATED"): "unknown or revoked token",
    (
        "decider",
        "PERMISSION_DENIED",
    ): "client 'decider' may not call ReportOutcome: it needs role 'report' (has decide)",
    ("reporter", "PERMISSION_DENIED"): "client 'reporter' may not call Decide: it needs role 'decide' (has report)",
}


async def call_grpc(s: Secured, method: str, credential: str) -> tuple[str, str]:
    metadata = s.metadata(credential)
    try:
        if method == "Decide":
            await s.nbo.stub.Decide(pb.DecideRequest(customer_id="vip", channel=pb.WEB), timeout=5, metadata=metadata)
        else:
            request = pb.ReportOutcomeRequest(decision_id=s.decision_id, offer_id="o_adhoc", outcome=pb.PRESENTED)
            await s.nbo.stub.ReportOutcome(request, timeout=5, metadata=metadata)
    except grpc.aio.AioRpcError as err:
        return err.code().name, err.details() or ""
    return "OK", ""


async def call_http(s: Secured, method: str, credential: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Content-Type": "application/json"}
    if (value := s.authorization(credential)) is not None:
        headers["Authorization"] = value
    if method == "Decide":
        path, body = "/v1/decide", {"customerId": "vip", "channel": "WEB"}
    else:
        path, body = "/v1/outcomes", {"decisionId": s.decision_id, "offerId": "o_adhoc", "outcome": "PRESENTED"}
    async with s.session.post(s.base + path, data=json.dumps(body).encode(), headers=headers) as r:
        return r.status, await r.json(), dict(r.headers)


@pytest.mark.parametrize("method", ["Decide", "ReportOutcome"])
@pytest.mark.parametrize("credential", list(EXPECTED))
async def test_each_credential_on_each_method_and_transport(secured: Secured, credential: str, method: str) -> None:
    expected = EXPECTED[credential][method]
    name = credential if credential in ROLES else ""

    code, details = await call_grpc(secured, method, credential)
    assert code == ("PERMISSION_DENIED" if expected == "FORBIDDEN" else expected), details
    status, body, headers = await call_http(secured, method, credential)
    assert status == HTTP[expected], body

    if expected in ("OK", "FORBIDDEN"):
        # the service ran, once per transport, told who called
        assert secured.spy.calls == [(method, name), (method, name)]
        if expected == "FORBIDDEN":
            assert details == FORBIDDEN
            assert body == {"error": {"code": "PERMISSION_DENIED", "message": FORBIDDEN, "field": "decision_id"}}
        return
    assert secured.spy.calls == [], "a refused call must never reach the handler"
    assert body == {"error": {"code": expected, "message": details}}  # the same message on both transports
    assert details == MESSAGES.get((credential, expected), details)
    assert (headers.get("WWW-Authenticate") == 'Bearer realm="nbo"') == (expected == "UNAUTHENTICATED")
    refusals = secured.nbo.worker.metrics.registry.get_sample_value(
        "nbo_auth_refusals_total", {"method": method, "code": expected}
    )
    assert refusals == 2
    # the token is never echoed
    assert all(token not in details for token in secured.tokens.values())


@pytest.mark.parametrize(
    "value",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "token-without-scheme"],
)
async def test_a_malformed_authorization_is_unauthenticated_and_never_echoed(secured: Secured, value: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await secured.nbo.stub.Decide(
            pb.DecideRequest(customer_id="vip", channel=pb.WEB), timeout=5, metadata=(("authorization", value),)
        )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert info.value.details() == (
        "the authorization value is not 'Bearer <token>': "
        "send 'authorization: Bearer <token>' (gRPC metadata or HTTP header)"
    )
    assert secured.spy.calls == []


async def test_health_stays_open_and_reflection_is_for_admins(secured: Secured) -> None:
    channel = secured.nbo.channel
    assert channel is not None
    health = health_pb2_grpc.HealthStub(channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def services(credential: str) -> list[str]:
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        call = stub.ServerReflectionInfo(iter([request]), timeout=5, metadata=secured.metadata(credential))
        return [s.name for response in [r async for r in call] for s in response.list_services_response.service]

    for credential, code in (("none", "UNAUTHENTICATED"), ("bad", "UNAUTHENTICATED"), ("decider", "PERMISSION_DENIED")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await services(credential)
        assert info.value.code().name == code
    assert "nbo.v1.Decisioning" in await services("root")


async def test_the_caller_name_reaches_the_service_and_an_unauthenticated_server_is_open(
    redis_url: str, tmp_path: Path
) -> None:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    publish_text(redis_url, BASE)
    nbo = Harness(redis_url, Clock(), http_port=0)
    assert not nbo.settings.auth_enabled
    await nbo.start()
    try:
        spy = Spy()
        nbo.worker.service.decide = spy.wrap("Decide", nbo.worker.service.decide)  # type: ignore[method-assign]
        # no tokens file: no credential needed, and one sent is not looked at
        assert (await nbo.decide("vip")).offers
        await nbo.stub.Decide(
            pb.DecideRequest(customer_id="vip", channel=pb.WEB), timeout=5, metadata=(("authorization", "junk"),)
        )
        assert spy.calls == [("Decide", ""), ("Decide", "")]
    finally:
        await nbo.stop()


async def test_nbo_decide_sends_the_token_of_its_flag_or_of_nbo_token(redis_url: str, tmp_path: Path) -> None:
    nbo, tokens = await secured_harness(redis_url, tmp_path)
    try:
        target = f"127.0.0.1:{nbo.worker.port}"

        async def nbo_decide(*flags: str, env: dict[str, str] | None = None) -> tuple[int, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "server.cli", "decide", "vip", "--target", target, *flags,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            return proc.returncode or 0, out.decode()

        plain = {k: v for k, v in os.environ.items() if k != "NBO_TOKEN"} | {"COLUMNS": "200"}
        code, out = await nbo_decide(env=plain)
        assert code == 1 and "UNAUTHENTICATED" in out
        code, out = await nbo_decide("--token", tokens["decider"], env=plain)
        assert code == 0 and "o_adhoc" in out, out
        code, out = await nbo_decide(env=plain | {"NBO_TOKEN": tokens["reporter"]})
        assert code == 1 and "PERMISSION_DENIED" in out
    finally:
        await nbo.stop()


async def test_only_the_deciding_caller_or_an_admin_reports_a_decisions_outcomes(secured: Secured) -> None:
    """A decision id taken from elsewhere is of no use to another client, even one allowed to report."""
    agent = (("authorization", f"Bearer {secured.tokens['agent']}"),)
    mine = await secured.nbo.stub.Decide(
        pb.DecideRequest(customer_id="vip", channel=pb.CALL_CENTRE), timeout=5, metadata=agent
    )
    [offer] = [o.offer_id for o in mine.offers]
    report = pb.ReportOutcomeRequest(decision_id=mine.decision_id, offer_id=offer, outcome=pb.DECLINED)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await secured.nbo.stub.ReportOutcome(report, timeout=5, metadata=secured.metadata("reporter"))
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.PERMISSION_DENIED, FORBIDDEN)
    answer = await secured.nbo.stub.ReportOutcome(report, timeout=5, metadata=agent)
    assert answer.recorded
    admin = pb.ReportOutcomeRequest(decision_id=mine.decision_id, offer_id=offer, outcome=pb.ACCEPTED)
    assert (await secured.nbo.stub.ReportOutcome(admin, timeout=5, metadata=secured.metadata("root"))).recorded
