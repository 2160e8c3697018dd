"""The dashboard's log tail and `/api/live` on a real Redis: what the window reads back at start,
what it follows after, and the API's refusals (the page itself: test_dashboard_browser.py)."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from server.cli import main as cli
from server.dashboard.live import LiveState
from server.dashboard.tail import LogTail
from server.dashboard.web import Dashboard
from server.dashboard.window import RollingWindow
from server.state.keys import Keys
from tests.integration.conftest import CUSTOMERS
from tests.integration.harness import load_customers, publish_text
from tests.redis_cluster import async_redis, redis_url_on_both, sync_redis
from tests.unit.test_dashboard_window import decision, outcome

# every test here runs on a single Redis and on the 3-master cluster
redis_url = redis_url_on_both

KEYS = Keys()
SEQUENCE = itertools.count()
CATALOG = """\
name: two campaigns
campaigns:
  - {id: a, type: lifecycle, channels: [web]}
  - {id: b, type: lifecycle, channels: [web]}
offers:
  - {id: o_a1, campaign: a, title: A1, value: 5, prior_propensity: 0.1}
  - {id: o_a2, campaign: a, title: A2, value: 5, prior_propensity: 0.1}
  - {id: o_b, campaign: b, title: B, value: 5, prior_propensity: 0.1}
"""


def xadd_at(client: redis.Redis, stream: str, fields: dict[Any, Any], epoch: float) -> None:
    """An entry whose id says it was appended at `epoch` (as the log writer's would); ids of one
    stream must grow, so calls go in time order."""
    client.xadd(stream, fields, id=f"{int(epoch * 1000)}-{next(SEQUENCE)}")


@pytest.fixture
async def dashboard(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[Dashboard, redis.Redis]]:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    publish_text(redis_url, CATALOG)
    client = async_redis(redis_url)
    blocking = sync_redis(redis_url)
    live = LiveState(client, blocking, KEYS)
    assert await live.reloader.check()
    tail = LogTail(client, KEYS, RollingWindow(600), live.campaign_of, block_ms=50)
    try:
        yield Dashboard(tail, live), blocking
    finally:
        await client.aclose()
        blocking.close()


async def test_the_window_is_read_back_then_followed(dashboard: tuple[Dashboard, redis.Redis]) -> None:
    board, client = dashboard
    now = time.time()
    old, recent = now - 700, now - 100
    # before the window (600 s): neither read nor counted
    xadd_at(client, KEYS.decision_stream, decision(1, old, chosen=("o_a1",)).to_fields(), old)
    xadd_at(client, KEYS.outcome_stream, outcome(1, "o_a1", "accepted", old).to_fields(), old)
    for n, chosen in ((2, "o_a1"), (3, "o_b")):
        xadd_at(client, KEYS.decision_stream, decision(n, recent, chosen=(chosen,)).to_fields(), recent)
    # a repeat of the same record (the writer's retry), and a record of an unknown version
    xadd_at(client, KEYS.decision_stream, decision(3, recent, chosen=("o_b",)).to_fields(), recent + 0.5)
    xadd_at(client, KEYS.decision_stream, {"v": "9", "r": "{}"}, recent + 0.6)
    xadd_at(client, KEYS.outcome_stream, outcome(2, "o_a1", "accepted", recent + 1).to_fields(), recent + 1)

    await board.tail.backfill()
    totals = board.tail.window.totals(int(now))
    assert (totals.decisions, totals.awards, totals.acceptances) == (2, 2, 1)
    assert (board.tail.stats.decisions, board.tail.stats.unreadable, board.tail.window.repeats) == (4, 1, 1)
    assert board.tail.stats.first_unreadable.startswith(f"{KEYS.decision_stream} ")

    # what the servers append after the start arrives through XREAD
    client.xadd(KEYS.decision_stream, decision(4, time.time(), chosen=("o_a2",), offers=("o_a2", "o_b")).to_fields())
    client.xadd(KEYS.outcome_stream, outcome(4, "o_a2", "converted", time.time()).to_fields())
    client.xadd(KEYS.outcome_stream, outcome(3, "o_b", "declined", time.time()).to_fields())
    read = 0
    for _ in range(20):
        read += await board.tail.step()
        if read == 3:
            break
    assert read == 3
    async with TestClient(TestServer(board.app())) as http:
        response = await http.get("/api/live")
        assert response.status == 200
        data = await response.json()
    assert data["totals"]["decisions"] == 3
    assert data["outcomes"] == {"accepted": 1, "converted": 1, "declined": 1}
    assert [
        (c["id"], c["decisions"], c["awards"], c["acceptances"], c["acceptance_rate"]) for c in data["campaigns"]
    ] == [
        ("a", 3, 2, 2, 1.0),
        ("b", 3, 1, 0, 0.0),
    ]
    assert data["budgets"]["scopes"] == []
    assert data["versions"]["catalog"].startswith("1-")
    assert data["versions"]["bandit"] == "off"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("at=soon", "at: 'soon' is not a whole number of epoch seconds"),
        ("at=1.5", "at: '1.5' is not a whole number of epoch seconds"),
        ("at=0", "at: 0 is not within the window held, "),
        ("at=+3600", "is not within the window held"),
    ],
)
async def test_a_bad_at_is_refused(dashboard: tuple[Dashboard, redis.Redis], query: str, message: str) -> None:
    board, _ = dashboard
    if query == "at=+3600":
        query = f"at={int(time.time()) + 3600}"
    async with TestClient(TestServer(board.app())) as http:
        response = await http.get("/api/live?" + query)
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert message in error["message"]


async def test_the_page_loads_nothing_from_elsewhere(dashboard: tuple[Dashboard, redis.Redis]) -> None:
    board, _ = dashboard
    async with TestClient(TestServer(board.app())) as http:
        response = await http.get("/")
        page = await response.text()
    assert response.status == 200
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'; connect-src 'self';")
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert " src=" not in page and "<link" not in page


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "--host 0.0.0.0 is not a loopback address"),
        (["--window", "30"], "must be at least 60 seconds, got 30"),
        (["--window", "1h"], "not a whole number of seconds: '1h'"),
    ],
)
def test_dashboard_flags_refused(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(cli.main(["dashboard", "--redis-url", "redis://127.0.0.1:1", *args]))
    assert exited.value.code == 2
    assert message in " ".join(capsys.readouterr().err.split())


async def test_redis_away_is_503_and_says_so() -> None:
    # a port nothing listens on (1 is privileged and unused here)
    client = aioredis.Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=1)
    blocking = redis.Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=1)
    live = LiveState(client, blocking, KEYS)
    board = Dashboard(LogTail(client, KEYS, RollingWindow(600), live.campaign_of), live)
    try:
        async with TestClient(TestServer(board.app())) as http:
            response = await http.get("/api/live")
            assert response.status == 503
            error = (await response.json())["error"]
    finally:
        await client.aclose()
        blocking.close()
    assert error["code"] == "UNAVAILABLE"
    assert error["message"].startswith("cannot read Redis: ")
