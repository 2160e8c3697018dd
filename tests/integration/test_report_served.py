"""`nbo report` over the log a real server wrote (tests/integration/harness.py): decisions with a
universal control group and a campaign holdout, outcomes and conversions reported over gRPC.
The report must read the groups the pipeline assigned (its salted hashes) from the records."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.pipeline.control_groups import in_holdout
from server.reporting import build_report
from server.reporting.html import render_html
from server.state.catalog_store import live_catalog
from server.state.keys import Keys
from tests.integration.harness import Clock, Harness, load_customers, publish_text
from tests.unit.catalog_fixtures import BASE

KEYS = Keys()
N = 200
CUSTOMERS = {
    f"c{i:03d}": {"tier": "BC"[i % 2], "tenure_months": 12, "churn_risk": 0.1, "consent_web": 1, "consent_call": 1}
    for i in range(N)
}
UNDECIDED = {"vip": {"tier": "A"}}  # never decided for: its tier makes level A, which the catalog's rules name
CATALOG = BASE.replace("campaigns:\n", "control_group: {fraction: 0.3, salt: report-test}\ncampaigns:\n").replace(
    "  - id: life\n", "  - id: life\n    holdout: 0.3\n"
)


@pytest.fixture
async def served(redis_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    load_customers(redis_url, {**CUSTOMERS, **UNDECIDED}, tmp_path)
    publish_text(redis_url, CATALOG)
    harness = Harness(redis_url, Clock())
    await harness.start()
    yield harness
    await harness.stop()


async def test_report_of_a_served_log(served: Harness, redis_client: redis.Redis) -> None:
    catalog = live_catalog(redis_client, KEYS)
    life = next(c for c in catalog.campaigns if c.id == "life")
    universal = {c for c in CUSTOMERS if in_holdout(catalog.control_salt, c, catalog.control_fraction)}
    held = {c for c in CUSTOMERS if c not in universal and in_holdout(life.holdout_salt, c, life.holdout)}
    treated = set(CUSTOMERS) - universal - held
    awarded = {}
    for customer in CUSTOMERS:
        answer = await served.decide(customer, pb.WEB)
        if answer.offers:
            awarded[customer] = answer.decision_id
    assert set(awarded) == treated  # every treated customer got o_life; nobody else got anything
    accepted = sorted(awarded)[:20]
    for customer in accepted:
        assert (await served.report(awarded[customer], "o_life", pb.ACCEPTED, event_id=customer)).recorded
    t0 = served.clock.now
    served.clock.now = t0 + 3600.0
    buyers = {c for i, c in enumerate(sorted(CUSTOMERS)) if i % 3 == 0}
    for customer in sorted(buyers):
        request = pb.RecordConversionRequest(customer_id=customer, kind="purchase", value=30.0, event_id=customer)
        assert (await served.stub.RecordConversion(request, timeout=5)).recorded
    for _ in range(500):
        if redis_client.xlen(KEYS.decision_stream) >= N and redis_client.xlen(KEYS.outcome_stream) >= 20:
            break
        await asyncio.sleep(0.01)

    report = build_report(redis_client, KEYS, now=t0 + 7200.0)
    programme, campaign = report.lift
    assert (programme.treatment.customers, programme.control.customers) == (N - len(universal), len(universal))
    assert programme.treatment.converted == len(buyers - universal)
    assert programme.control.converted == len(buyers & universal)
    assert programme.treatment.revenue == 30.0 * len(buyers - universal)
    assert (campaign.name, campaign.treatment.customers, campaign.control.customers) == (
        "life",
        len(treated),
        len(held),
    )
    assert (campaign.treatment.converted, campaign.control.converted) == (len(buyers & treated), len(buyers & held))
    assert programme.enough_data and programme.rate_difference is not None
    expected = len(buyers - universal) / (N - len(universal)) - len(buyers & universal) / len(universal)
    assert programme.rate_difference.value == pytest.approx(expected, abs=1e-12)
    row = next(r for r in report.kpis if (r.dimension, r.key) == ("campaign", "life"))
    assert (row.decisions, row.control_group, row.awards, row.accepted) == (
        N - len(universal),
        len(universal),
        len(treated),
        20,
    )
    assert row.cost == 0.0 and row.roi is None  # o_life costs nothing
    reasons = {r.reason: r.decisions for r in report.no_offer_reasons}
    assert reasons == {"control_group": len(universal) + len(held)}
    assert report.coverage.decisions_in_period == N and report.coverage.conversions_counted == len(buyers)
    assert render_html(report).count('src="data:image/png;base64,') == 3  # no budget in this catalog
