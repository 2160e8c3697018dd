"""The learner's lag gauges against a real Redis stream: how many outcomes wait, and how far (in
entry-id time) the newest is ahead of the newest this learner applied."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from server.config import Settings
from server.learning import learner as learner_module
from server.learning.learner import Learner
from server.metrics import Metrics
from server.state.keys import Keys
from tests.redis_cluster import async_redis, redis_url_on_both

# every test here runs on a single Redis and on the 3-master cluster
redis_url = redis_url_on_both

KEYS = Keys()
T0 = 1_700_000_000_000  # entry ids carry their time in ms: the lag is read from them


@pytest.fixture
async def learner(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Learner]:
    monkeypatch.setattr(learner_module, "LAG_EVERY_SECONDS", 0.0)  # refresh on every call
    client = async_redis(redis_url)
    learner = Learner(client, KEYS, Metrics(), Settings(), consumer="lag-test")
    learner.consumer.block_ms = 10
    await learner.start()
    yield learner
    await client.aclose()


def gauges(learner: Learner) -> tuple[float | None, float | None]:
    sample = learner.metrics.registry.get_sample_value
    return sample("nbo_learner_pending_outcomes"), sample("nbo_learner_lag_seconds")


async def test_lag_follows_the_outcome_stream(learner: Learner) -> None:
    client = learner.client
    await learner.step()  # an empty stream: nothing waits
    assert gauges(learner) == (0, 0)
    # three entries the learner has not read (unreadable ones: skipped, but applied all the same)
    for offset_ms in (0, 20_000, 50_000):
        await client.xadd(KEYS.outcome_stream, {"junk": "1"}, id=f"{T0 + offset_ms}-0")
    await learner._observe_lag()
    assert gauges(learner) == (3, 50.0)  # the whole stream is behind: newest minus first
    assert await learner.step() == 0
    assert gauges(learner) == (0, 0)  # read, applied, acknowledged
    await client.xadd(KEYS.outcome_stream, {"junk": "1"}, id=f"{T0 + 80_000}-0")
    await learner._observe_lag()
    assert gauges(learner) == (1, 30.0)  # newest minus the newest applied
    await learner.step()
    assert gauges(learner) == (0, 0)
    assert learner.metrics.registry.get_sample_value("nbo_bandit_updates_total", {"result": "skipped"}) == 4
