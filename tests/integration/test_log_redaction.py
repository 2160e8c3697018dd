"""No tokens, and no customer ids unless log_customer_ids, in any log line of a real decision flow.

The flow is made to log the lines that carry ids: a learner skipping an outcome record that names
its decision, an internal error whose trace names a customer's Redis key, and a library logging
the Authorization header it was sent.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from server import redact
from server.api.status import status_of
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.learning.learner import Learner
from server.metrics import Metrics
from server.state.keys import Keys
from tests.integration.conftest import CUSTOMERS
from tests.integration.harness import Clock, Harness, load_customers, publish_text
from tests.integration.test_auth import write_tokens
from tests.unit.catalog_fixtures import BASE

CUSTOMER = "zq-cust-90210"


async def flow(redis_url: str, tmp_path: Path, *, log_customer_ids: bool) -> tuple[str, str]:
    """Decide and report over gRPC and HTTP with a token, then the id-carrying log lines; the
    customer's decision id and the token used."""
    load_customers(redis_url, {**CUSTOMERS, CUSTOMER: CUSTOMERS["vip"]}, tmp_path)
    publish_text(redis_url, BASE)
    tokens = write_tokens(tmp_path / "tokens.txt")
    token = tokens["root"]
    settings = {"auth_tokens_file": tmp_path / "tokens.txt", "log_customer_ids": log_customer_ids, "log_level": "DEBUG"}
    nbo = Harness(redis_url, Clock(), http_port=0, **settings)
    await nbo.start()
    client = aioredis.Redis.from_url(redis_url)
    try:
        metadata = (("authorization", f"Bearer {token}"),)
        decision = await nbo.stub.Decide(
            pb.DecideRequest(customer_id=CUSTOMER, channel=pb.WEB), timeout=5, metadata=metadata
        )
        assert [o.offer_id for o in decision.offers] == ["o_adhoc"]
        report = pb.ReportOutcomeRequest(decision_id=decision.decision_id, offer_id="o_adhoc", outcome=pb.ACCEPTED)
        assert (await nbo.stub.ReportOutcome(report, timeout=5, metadata=metadata)).recorded
        async with aiohttp.ClientSession() as session:
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
            body = json.dumps({"customerId": CUSTOMER, "channel": "CALL_CENTRE"}).encode()
            async with session.post(
                f"http://127.0.0.1:{nbo.worker.http_port}/v1/decide", data=body, headers=headers
            ) as r:
                assert r.status == 200
        # an outcome record the learner cannot read, naming the decision
        keys = Keys()
        bad = {"decision_id": decision.decision_id, "offer_id": "o_adhoc", "outcome": "ACCEPTED", "ts": "soon"}
        bad["event_id"] = f"{decision.decision_id}:o_adhoc:ACCEPTED"
        await client.xadd(keys.outcome_stream, {"r": json.dumps(bad)})
        learner = Learner(client, keys, Metrics(), nbo.settings)
        await learner.start()
        await learner.step()
        await learner.stop()
        # a bug whose message names the customer's key, logged with its trace
        try:
            raise RuntimeError(f"cannot read {keys.features(CUSTOMER)}")
        except RuntimeError as err:
            assert status_of(err).code.value == "INTERNAL"
        # a library that logs the headers it was sent
        logging.getLogger("aiohttp.server").warning("request headers %s", {"Authorization": f"Bearer {token}"})
        logging.getLogger("grpc").debug("metadata %r", (("authorization", token),))
    finally:
        await client.aclose()
        await nbo.stop()
    return decision.decision_id, token


async def test_no_token_and_no_customer_id_in_any_log_line(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    decision_id, token = await flow(redis_url, tmp_path, log_customer_ids=False)
    lines = [r.getMessage() for r in caplog.records]
    assert any("outcome" in line and "skipped" in line for line in lines), lines
    assert any(r.exc_text and "RuntimeError" in r.exc_text for r in caplog.records)
    text = caplog.text
    for secret in (token, CUSTOMER):
        assert secret not in text
        assert not any(secret in line for line in lines)
    # the key tag was there, replaced by its keyed hash; a decision id is sealed (no customer id
    # in it) and stays as it is, so lines about one decision still correlate
    hashed = redact.customer(CUSTOMER)
    assert CUSTOMER not in decision_id
    assert f"{decision_id}:o_adhoc:ACCEPTED" in text
    assert "{c:" + hashed + "}:features" in text
    assert "Bearer <redacted>" in text and "nbo_<redacted>" in text


async def test_customer_ids_are_logged_only_when_the_setting_allows(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    try:
        decision_id, token = await flow(redis_url, tmp_path, log_customer_ids=True)
    finally:
        redact.install(log_customer_ids=False)  # the process's policy, for the tests after this one
    assert f"{decision_id}:o_adhoc:ACCEPTED" in caplog.text
    assert "{c:" + CUSTOMER + "}:features" in caplog.text
    assert token not in caplog.text  # never, whatever the setting


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer <redacted>"),
        ("{'authorization': 'bearer xyz'}", "{'authorization': 'bearer <redacted>'}"),
        ("token nbo_" + "A" * 43 + " leaked", "token nbo_<redacted> leaked"),
        ("key nbo:{c:alice}:req:r1 failed", "key nbo:{c:#H}:req:r1 failed"),
        ("nothing to hide in offer o_adhoc", "nothing to hide in offer o_adhoc"),
        ("nbo_log_records_dropped_total went up", "nbo_log_records_dropped_total went up"),
    ],
)
def test_what_is_cleaned_from_text(text: str, cleaned: str) -> None:
    redact.install(log_customer_ids=False)
    assert redact.clean(text) == cleaned.replace("#H", redact.customer("alice"))
    assert redact.clean(redact.clean(text)) == redact.clean(text)  # cleaning twice changes nothing
