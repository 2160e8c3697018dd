"""Budgets under concurrency: two server processes, one Redis, 200 concurrent clients, one budget.

`nbo serve --workers 2` runs as a subprocess against the test Redis with a catalog whose top offer
`o_budget` has a budget of 1,000 awards (at most 1 per customer, with a cost, so spend is
counted too) and whose next offer `o_free` is unbudgeted, so once the budget is gone the ranked
walk falls through to `o_free` in the same call. Each run replays a seeded sequence of requests
with repeated customers (bursts of the same customer race on the per-customer cap) and repeated
request ids (sent twice at once: the repeat must never count twice), then checks that exactly
1,000 awards were made — in the responses, in the counters and in the decision log — with no
overspend and no customer over the cap.

Every run goes against a single Redis and against the 3-master test cluster. On the cluster the
budgets are spread: `promo`'s counters and the web channel's hourly capacity live on two different
masters (checked), so each award of `o_budget` reserves on two shards and commits on the
customer's.

`NBO_BUDGET_RUNS` sets the number of seeded runs (default 2, for CI); the issue's full check is
`NBO_BUDGET_RUNS=20 .venv/bin/pytest -q tests/integration/test_budget_concurrency.py`.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from loadtest.faults.env import consecutive_free_ports
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.gen.nbo.v1 import decisioning_pb2_grpc as pb_grpc
from server.state.embedded_redis import EmbeddedRedis
from server.state.keys import Keys
from server.state.records import record_data
from tests.integration.harness import load_customers, terminate
from tests.redis_cluster import LocalCluster, is_cluster, sync_redis

RUNS = int(os.environ.get("NBO_BUDGET_RUNS", "2"))
BUDGET = 1000
COST_CENTS = 250
N_CUSTOMERS = 2000
N_REQUESTS = 3000
CLIENTS = 200
KEYS = Keys()
NBO = [sys.executable, "-m", "server.cli"]

# o_budget (ad hoc) ranks above o_free (lifecycle). Nine checks per o_budget reservation: the
# offer's total/spend/day counters, the campaign's, and the web channel's hourly capacity (set
# far above the traffic, so it only counts and o_free's awards show up in a counter too).
CATALOG = f"""\
name: budget-concurrency
timezone: UTC
channels:
  web: {{capacity_per_hour: 100000000}}
contact_policy:
  window_hours: 24
campaigns:
  - id: promo
    type: ad_hoc
    priority: 90
    channels: [web]
    budget: {{total_spend: 1000000, daily_awards: 1000000}}
  - id: base
    type: lifecycle
    channels: [web]
offers:
  - id: o_budget
    campaign: promo
    title: Budgeted
    value: 100
    cost: {COST_CENTS / 100}
    prior_propensity: 0.2
    budget: {{total_awards: {BUDGET}, per_customer: 1, total_spend: 100000}}
  - id: o_free
    campaign: base
    title: Free
    value: 10
    prior_propensity: 0.2
"""


@dataclass(frozen=True)
class Served:
    target: str
    metrics_ports: tuple[int, int]
    redis_url: str


@dataclass
class Call:
    index: int
    customer_id: str
    request_id: str
    sent: float = 0.0
    received: float = 0.0
    response: Any = None
    error: str = ""


@pytest.fixture(scope="module", params=["single", "cluster"])
def module_redis_url(request: pytest.FixtureRequest, redis_server: EmbeddedRedis) -> str:
    """The test Redis, then the 3-master cluster, emptied once for this module (the
    function-scoped `redis_url` flushes before every test, which would pull the catalog from
    under the running server)."""
    if request.param == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        return cluster.url
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="module")
def served(module_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("budget_concurrency")
    rows = {
        f"k{i:05d}": {"tier": "ABC"[i % 3], "tenure_months": i % 60, "churn_risk": (i % 10) / 10}
        for i in range(N_CUSTOMERS)
    }
    load_customers(module_redis_url, rows, tmp)
    catalog = tmp / "catalog.yaml"
    catalog.write_text(CATALOG)
    metrics = consecutive_free_ports(3)  # the supervisor serves the combined metrics on it, worker i on +1+i
    # exact budgets under 200 concurrent callers is what this tests, not shedding (which has tests
    # of its own): bounds above the callers, so that a loaded machine cannot turn calls away
    env = {
        **os.environ,
        "REDIS_URL": module_redis_url,
        "NBO_REDIS_CLUSTER": "true" if is_cluster(module_redis_url) else "false",
        "NBO_LOG_LEVEL": "WARNING",
        "NBO_MAX_CONCURRENT_RPCS": "256",
        "NBO_MAX_PENDING_RPCS": "512",
    }
    stderr_path = tmp / "serve.stderr"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [*NBO, "serve", "--workers", "2", "--port", "0", "--catalog", str(catalog), "--metrics-port", str(metrics)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            cwd=tmp,
        )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        match = re.search(r"serving on (\S+) with 2 worker", banner)
        assert match, f"banner {banner!r}; stderr: {stderr_path.read_text()[-2000:]}"
        served = Served(match.group(1), (metrics + 1, metrics + 2), module_redis_url)
        _wait_ready(served, proc, stderr_path)
        yield served
    finally:
        terminate(proc)


def _wait_ready(served: Served, proc: subprocess.Popen[str], stderr_path: Path) -> None:
    """Both workers answer metrics and the catalog is live (a Decide returns o_budget's catalog)."""
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, f"nbo serve exited: {stderr_path.read_text()[-2000:]}"
        try:
            for port in served.metrics_ports:
                _scrape_decisions(port)
            with grpc.insecure_channel(served.target) as channel:
                stub = pb_grpc.DecisioningStub(channel)
                # an unknown customer touches no budget or history, but shows the catalog is live
                r = stub.Decide(pb.DecideRequest(customer_id="warmup", channel=pb.WEB), timeout=2)
                if r.catalog_version:
                    time.sleep(0.5)  # the warm-up's log record is written before the first run's reset
                    return
        except (OSError, grpc.RpcError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"nbo serve not ready: {stderr_path.read_text()[-2000:]}")
        time.sleep(0.2)


def _scrape_decisions(port: int) -> int:
    """The worker's `nbo_decisions_total`, summed over channel and reason."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    values = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith("nbo_decisions_total{")]
    return round(sum(float(v) for v in values))


def _reset(client: redis.Redis) -> None:
    """Forget every award: budget counters, per-customer history, decisions, request ids, logs."""
    doomed = list(client.scan_iter(match=KEYS.budget_pattern(), count=1000))
    doomed += client.scan_iter(match=KEYS.channel_hour_pattern(), count=1000)
    doomed += [
        key for key in client.scan_iter(match=f"{KEYS.prefix}{{c:*}}:*", count=1000) if not key.endswith(b":features")
    ]
    doomed += [KEYS.decision_stream, KEYS.outcome_stream]
    for i in range(0, len(doomed), 500):
        client.delete(*doomed[i : i + 500])


def _requests(seed: int) -> list[Call]:
    """~N_REQUESTS calls: mostly single customers, some bursts of one customer (racing on the
    per-customer cap) and some request ids sent twice back to back (so both are in flight)."""
    rng = random.Random(seed)
    customers = [f"k{i:05d}" for i in range(N_CUSTOMERS)]
    calls: list[Call] = []
    while len(calls) < N_REQUESTS:
        cid = rng.choice(customers)
        r = rng.random()
        if r < 0.15:
            repeats = rng.randint(2, 4)
            calls += [Call(len(calls) + i, cid, "") for i in range(repeats)]
        elif r < 0.25:
            rid = f"s{seed}-r{len(calls)}"
            calls += [Call(len(calls), cid, rid), Call(len(calls) + 1, cid, rid)]
        else:
            calls.append(Call(len(calls), cid, ""))
    return calls


async def _drive(target: str, calls: list[Call]) -> None:
    queue: asyncio.Queue[Call] = asyncio.Queue()
    for call in calls:
        queue.put_nowait(call)
    # a local subchannel pool per channel: otherwise gRPC shares one connection among them all
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(CLIENTS)]
    try:
        # connect every channel first: SO_REUSEPORT hands each connection to one worker
        await asyncio.gather(*(asyncio.wait_for(ch.channel_ready(), 10) for ch in channels))

        async def client(channel: grpc.aio.Channel) -> None:
            stub = pb_grpc.DecisioningStub(channel)
            while True:
                try:
                    call = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                call.sent = time.perf_counter()
                try:
                    call.response = await stub.Decide(
                        pb.DecideRequest(
                            customer_id=call.customer_id, channel=pb.WEB, max_offers=1, request_id=call.request_id
                        ),
                        timeout=10,
                    )
                except grpc.aio.AioRpcError as err:
                    call.error = f"{err.code().name}: {err.details()}"
                call.received = time.perf_counter()

        await asyncio.gather(*(client(ch) for ch in channels))
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))


def _decision_log(client: redis.Redis, expected: int) -> list[dict[str, Any]]:
    """Every decision record, once the servers have flushed `expected` of them."""
    deadline = time.monotonic() + 10
    while (n := client.xlen(KEYS.decision_stream)) < expected:
        assert time.monotonic() < deadline, f"decision stream has {n} of {expected} records after 10 s"
        time.sleep(0.05)
    time.sleep(0.2)  # a late extra record (which would be a bug) gets the chance to show up
    return [record_data(fields) for _, fields in client.xrange(KEYS.decision_stream)]


def _sum_field(client: redis.Redis, pattern: str, field: str) -> int:
    return sum(int(client.hget(key, field) or 0) for key in client.scan_iter(match=pattern, count=1000))


@pytest.mark.parametrize("seed", range(RUNS))
async def test_exactly_the_budget_is_awarded_under_concurrency(served: Served, seed: int) -> None:
    client = sync_redis(served.redis_url)
    try:
        if isinstance(client, redis.RedisCluster):
            campaign = client.get_node_from_key(KEYS.budget_total("promo"))
            channel = client.get_node_from_key(KEYS.budget_hour("web", "2027-01-15T10"))
            assert campaign.name != channel.name
        _reset(client)
        calls = _requests(seed)
        distinct = len({c.customer_id for c in calls})
        assert distinct >= BUDGET + 150, f"seed {seed}: only {distinct} customers, the budget might not run out"
        before = [_scrape_decisions(p) for p in served.metrics_ports]

        started = time.perf_counter()
        await _drive(served.target, calls)
        elapsed = time.perf_counter() - started

        # -- the responses ----------------------------------------------------------------------
        errors = [f"{c.customer_id}/{c.request_id}: {c.error}" for c in calls if c.error]
        assert not errors, errors[:10]
        assert not [c for c in calls if c.response.degraded], "degraded decisions: budgets were not checked"
        fresh = [c for c in calls if not c.response.replayed]
        replayed = [c for c in calls if c.response.replayed]
        awarded = {c.index: [o.offer_id for o in c.response.offers] for c in fresh}
        assert all(offers in (["o_budget"], ["o_free"]) for offers in awarded.values())
        budget_calls = [c for c in fresh if awarded[c.index] == ["o_budget"]]
        assert len(budget_calls) == BUDGET
        per_customer = Counter(c.customer_id for c in budget_calls)
        assert max(per_customer.values()) == 1, per_customer.most_common(3)

        # a request id sent twice: one decision, the repeat replays it and counts nothing
        by_request: dict[str, list[Call]] = {}
        for c in calls:
            if c.request_id:
                by_request.setdefault(c.request_id, []).append(c)
        for rid, pair in by_request.items():
            assert len(pair) == 2
            assert sorted(c.response.replayed for c in pair) == [False, True], rid
            assert pair[0].response.decision_id == pair[1].response.decision_id, rid
            assert [o.offer_id for o in pair[0].response.offers] == [o.offer_id for o in pair[1].response.offers]

        # once the 1,000th award has been answered, every later request falls through to o_free
        exhausted_at = max(c.received for c in budget_calls)
        later = [c for c in fresh if c.sent > exhausted_at]
        assert later, "the budget ran out only at the very end: nothing checks the fall-through"
        assert all(awarded[c.index] == ["o_free"] for c in later), [
            (c.customer_id, awarded[c.index]) for c in later if awarded[c.index] != ["o_free"]
        ][:5]

        # -- the decision log: one record per fresh decision, none for replays ------------------
        records = _decision_log(client, len(fresh))
        assert len(records) == len(fresh)
        assert {r["decision_id"] for r in records} == {c.response.decision_id for c in fresh}
        chosen = Counter(o for r in records for o in r["chosen"])
        assert chosen["o_budget"] == BUDGET
        assert set(chosen) <= {"o_budget", "o_free"}
        logged_per_customer = Counter(r["customer_id"] for r in records if "o_budget" in r["chosen"])
        assert max(logged_per_customer.values()) == 1
        # a decision that reserved o_budget but lost the per-customer race at commit released it
        # and was given the next offer in a second attempt
        lost = []
        for r in records:
            status = dict(zip(r["candidates"]["offer_id"], r["candidates"]["status"], strict=True))
            if status.get("o_budget") == "contact policy: per-customer limit of the offer reached":
                lost.append(r)
                assert r["chosen"] == ["o_free"], r

        # -- the counters: equal to the logged awards, no overspend -----------------------------
        total = {k.decode(): int(v) for k, v in client.hgetall(KEYS.budget_total("promo")).items()}
        assert total == {
            "o:o_budget:n": BUDGET,
            "o:o_budget:spend": BUDGET * COST_CENTS,
            "c:promo:n": BUDGET,
            "c:promo:spend": BUDGET * COST_CENTS,
        }
        day_pattern = KEYS.budget_day("promo", "*")
        assert _sum_field(client, day_pattern, "o:o_budget:n") == BUDGET
        assert _sum_field(client, day_pattern, "c:promo:n") == BUDGET
        assert _sum_field(client, day_pattern, "o:o_budget:spend") == BUDGET * COST_CENTS
        assert _sum_field(client, KEYS.budget_hour("web", "*"), "ch:web:n") == chosen.total()

        # -- per-customer state: nobody over the cap --------------------------------------------
        caps = [
            int(v)
            for key in client.scan_iter(match=f"{KEYS.prefix}{{c:*}}:contacts", count=1000)
            if (v := client.hget(key, "a:o:o_budget")) is not None
        ]
        assert len(caps) == BUDGET and set(caps) == {1}

        # -- both server processes served traffic -----------------------------------------------
        served_by = [_scrape_decisions(p) - b for p, b in zip(served.metrics_ports, before, strict=True)]
        assert sum(served_by) == len(calls)
        assert min(served_by) > 0, served_by

        print(
            f"\nseed {seed}: {len(calls)} calls ({len(replayed)} replayed) in {elapsed:.2f} s by {CLIENTS} clients; "
            f"o_budget {len(budget_calls)}, o_free {chosen['o_free']}, lost the per-customer race {len(lost)}, "
            f"after exhaustion {len(later)}; workers {served_by}"
        )
    finally:
        client.close()
