from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.harness import Clock, Harness, load_customers, publish_text
from tests.unit.catalog_fixtures import BASE

CUSTOMERS = {
    "vip": {"tier": "A", "tenure_months": 40, "churn_risk": 0.1, "consent_web": 1, "consent_call": 1},
    "vip2": {"tier": "A", "tenure_months": 12, "churn_risk": 0.7, "consent_web": 1, "consent_call": 1},
    "regular": {"tier": "B", "tenure_months": 5, "churn_risk": 0.2, "consent_web": 1, "consent_call": 1},
    "no_web": {"tier": "A", "tenure_months": 5, "churn_risk": 0.2, "consent_web": 0, "consent_call": 1},
    "no_consent_flag": {"tier": "A", "tenure_months": 5, "churn_risk": 0.2, "consent_call": 1},
}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def nbo(redis_url: str, tmp_path: Path, clock: Clock) -> AsyncIterator[Harness]:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    publish_text(redis_url, BASE)
    harness = Harness(redis_url, clock)
    await harness.start()
    yield harness
    await harness.stop()
