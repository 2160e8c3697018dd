"""Redis over TLS (rediss://) with AUTH and an ACL user limited to the key prefix: a real
redis-server with TLS only, started by the tests (tests/redis_tls.py), certificates made by them.

The ACL user is created with the very `ACL SETUSER` line of docs/operations.md, so the line the
operators copy is the line that is tested: the server decides and records outcomes with it, the
learner learns with it, and it can touch no key outside the prefix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import redis

from server.config import Settings
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.learning.learner import Learner
from server.metrics import Metrics
from server.state.keys import Keys
from server.state.redis_client import RedisAccessError, async_client, check_access, redacted, sync_client
from server.state.streams import safe_trim
from server.supervisor import run_server
from tests.certs import Certs
from tests.integration.harness import Clock, Harness, load_customers, publish_text
from tests.redis_tls import TlsRedis
from tests.unit.catalog_fixtures import BASE

CUSTOMER = {"vip": {"tier": "A", "tenure_months": 40, "churn_risk": 0.1, "consent_web": 1, "consent_call": 1}}
PASSWORD = "nbo-user-secret"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _documented_acl() -> list[str]:
    """The arguments of the documented `ACL SETUSER nbo ...` line, with our password."""
    line = re.search(r"^ACL SETUSER nbo (.+)$", DOCS.read_text(), re.MULTILINE)
    assert line, f"no `ACL SETUSER nbo` line in {DOCS}"
    return ["ACL", "SETUSER", "nbo", *line.group(1).replace("<password>", PASSWORD).split()]


@pytest.fixture
def acl_url(tls_redis_server: TlsRedis) -> str:
    """The rediss:// URL of the ACL user, on an emptied Redis."""
    with tls_redis_server.admin() as admin:
        admin.flushall()
        assert admin.execute_command(*_documented_acl()) == b"OK"
        admin.set("other:secret", "not for nbo")
    return tls_redis_server.url("nbo", PASSWORD)


def _tls_files(certs: Certs) -> dict[str, Path]:
    """The CA of the Redis certificate, and a client certificate (Redis asks for one, optionally)."""
    return {
        "redis_tls_ca_file": certs.ca,
        "redis_tls_cert_file": certs.client_cert,
        "redis_tls_key_file": certs.client_key,
    }


def _settings(url: str, certs: Certs, **extra: Any) -> Settings:
    return Settings(redis_url=url, **_tls_files(certs), **extra)


async def test_the_server_decides_and_learns_over_rediss_as_the_acl_user(
    acl_url: str, certs: Certs, tls_redis_server: TlsRedis, tmp_path: Path
) -> None:
    # the test's own set-up speaks rediss:// too, with redis-py's URL options
    seed_url = f"{acl_url}?ssl_ca_certs={certs.ca}"
    load_customers(seed_url, CUSTOMER, tmp_path)
    publish_text(seed_url, BASE)
    settings = _settings(acl_url, certs)
    nbo = Harness(acl_url, Clock(), **_tls_files(certs))
    await nbo.start()
    try:
        decision = await nbo.decide("vip", pb.WEB)
        assert decision.offers and not decision.degraded, decision
        result = await nbo.report(decision.decision_id, decision.offers[0].offer_id, pb.ACCEPTED, event_id="e1")
        assert result.recorded, result
    finally:
        await nbo.stop()  # flushes the decision log
    client = async_client(acl_url, settings)
    try:
        learner = Learner(client, Keys(), Metrics(), settings)
        await learner.start()
        assert await learner.step() == 1
        # the log writer's trim (a Lua script over XINFO, XPENDING, XRANGE, XTRIM) is allowed too
        assert await safe_trim(client, Keys().decision_stream, 1000) == 0
    finally:
        await client.aclose()
    with tls_redis_server.admin() as admin:
        assert admin.xlen(Keys().decision_stream) == 1
        assert admin.xlen(Keys().outcome_stream) == 1


def test_the_acl_user_cannot_touch_keys_outside_the_prefix(acl_url: str, certs: Certs) -> None:
    with sync_client(acl_url, _settings(acl_url, certs)) as client:
        assert client.ping()
        client.set("nbo:mine", "1")
        for command in (("GET", "other:secret"), ("SET", "other:x", "1"), ("EVAL", "return 1", 1, "other:secret")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
        for command in (("KEYS", "*"), ("FLUSHALL",), ("CONFIG", "GET", "*"), ("ACL", "LIST")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)


def test_a_wrong_password_stops_nbo_serve_at_start_up(
    acl_url: str, certs: Certs, tls_redis_server: TlsRedis, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tls_redis_server.url("nbo", "not-the-password")
    assert run_server(_settings(wrong, certs, port=0, workers=1)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Redis at {redacted(wrong)} refused the user or password"), err
    assert "not-the-password" not in err


def test_a_redis_certificate_from_an_untrusted_ca_is_refused(acl_url: str, certs: Certs) -> None:
    untrusted = Settings(redis_url=acl_url, redis_tls_ca_file=certs.other_ca)
    with pytest.raises(RedisAccessError, match=r"^TLS with Redis at rediss://nbo:\*\*\*@127\.0\.0\.1:\d+/0 failed"):
        check_access(acl_url, untrusted)
