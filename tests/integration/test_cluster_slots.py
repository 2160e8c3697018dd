"""Every Lua script call and every MULTI/EXEC transaction stays in one Redis Cluster slot.

Generic on purpose: the calls are recorded where they leave the cluster client (its
execute_command), during real decisions, budget reservations, outcomes, conversions and learning
steps for hypothesis-drawn customer and campaign ids, so a script or key added later is covered
without naming it here. Transactions are checked by running every publishing path on the
3-master cluster, where redis-py refuses a transaction across slots before sending it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.cluster import key_slot
from redis.exceptions import RedisClusterException

from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.learning.learner import Learner
from server.metrics import Metrics
from server.models.champion import clear_challenger, promote, set_challenger
from server.models.registry import publish as publish_model
from server.models.registry import rollback
from server.state.catalog_store import current_schema
from server.state.conversions import SCRIPT as CONVERSION
from server.state.keys import Keys
from server.state.redis_store import RedisStateStore
from server.state.script_client import LuaScript
from tests.integration.harness import Clock, Harness, load_customers, publish_text
from tests.integration.test_decide import republish
from tests.model_fixtures import make_artifact
from tests.redis_cluster import async_redis, sync_redis
from tests.unit.catalog_fixtures import BASE

KEYS = Keys()
IDS = st.from_regex(r"[A-Za-z0-9_.@-]{1,24}", fullmatch=True)
CAMPAIGNS = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
FEATURES = {"tier": "A", "tenure_months": 10, "churn_risk": 0.2, "consent_web": 1, "consent_call": 1}
SCRIPT_NAMES = {
    LuaScript.load(name).sha: name for name in ("read.lua", "commit.lua", "outcome.lua", "learn.lua", "reserve.lua")
} | {CONVERSION.sha: "conversion"}


def catalog(campaign: str) -> str:
    """BASE with the ad-hoc campaign renamed, a budget of every kind on its offer, a channel's
    hourly capacity, and the bandit on (so the learner has arms to learn)."""
    text = BASE.replace("  max_per_window: {web: 2}\n", "")
    text = text.replace("campaigns:\n", "bandit:\n  seed: 5\n  samples: 64\ncampaigns:\n")
    text = text.replace("  - id: adhoc\n", f"  - id: c_{campaign}\n    budget: {{total_awards: 100000}}\n")
    text = text.replace("    campaign: adhoc\n", f"    campaign: c_{campaign}\n")
    budget = "{total_awards: 100000, daily_awards: 100000, total_spend: 1000000, per_customer: 1000}"
    text = text.replace("    cost: 1\n", f"    cost: 1\n    budget: {budget}\n")
    return text + "channels: {call_centre: {capacity_per_hour: 100000}}\n"


def record_script_calls(client: Any, calls: list[tuple[str, list[str]]]) -> None:
    """Record (sha, keys) of every script call `client` (a RedisCluster) sends from now on."""
    inner: Callable[..., Any] = client.execute_command

    async def recording(*args: Any, **options: Any) -> Any:
        if str(args[0]).upper() in ("EVALSHA", "EVAL"):
            calls.append((str(args[1]), [str(k) for k in args[3 : 3 + int(args[2])]]))
        return await inner(*args, **options)

    client.execute_command = recording


def record_store_scripts(store: RedisStateStore, calls: list[tuple[str, list[str]]]) -> None:
    """Record (sha, keys) of every script call of the hot path's store (its own connections)."""
    scripts = store._scripts
    inner = scripts.run

    async def recording(script: LuaScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        calls.append((script.sha, list(keys)))
        return await inner(script, keys, args)

    scripts.run = recording  # type: ignore[method-assign]


def test_every_script_call_touches_one_slot_for_any_customer_and_campaign(cluster_url: str, tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    clock = Clock()
    load_customers(cluster_url, {"vip": FEATURES}, tmp_path)
    publish_text(cluster_url, catalog("first"))
    calls: list[tuple[str, list[str]]] = []
    nbo, learner, learner_client = loop.run_until_complete(_started(cluster_url, clock))
    record_script_calls(nbo.worker.client, calls)
    record_store_scripts(nbo.worker.store, calls)
    record_script_calls(learner_client, calls)
    rounds = [0]

    @settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(customer=IDS, campaign=CAMPAIGNS)
    def one_round(customer: str, campaign: str) -> None:
        rounds[0] += 1
        customer = f"{customer}-{rounds[0]}"  # each round a fresh customer, whatever was drawn
        clock.now += 3600  # the next hour: a new hourly capacity key
        load_customers(cluster_url, {customer: FEATURES}, tmp_path)
        loop.run_until_complete(_decide_report_convert_learn(nbo, learner, customer, campaign))

    try:
        one_round()
    finally:
        loop.run_until_complete(learner.stop())
        loop.run_until_complete(learner_client.aclose())
        loop.run_until_complete(nbo.stop())
        loop.close()
    crossing = [
        (SCRIPT_NAMES.get(sha, sha), keys) for sha, keys in calls if len({key_slot(k.encode()) for k in keys}) > 1
    ]
    assert crossing == []
    seen = {SCRIPT_NAMES.get(sha, sha) for sha, _ in calls}
    assert {"read.lua", "commit.lua", "outcome.lua", "learn.lua", "conversion"} <= seen
    assert len(calls) >= 12 * 5


async def _started(url: str, clock: Clock) -> tuple[Harness, Learner, Any]:
    """A server and a learner, made inside the test's event loop (gRPC binds to it)."""
    nbo = Harness(url, clock, learner_claim_idle_seconds=0.05)
    await nbo.start()
    client = async_redis(url)
    learner = Learner(client, KEYS, Metrics(), nbo.settings)
    await learner.start()
    return nbo, learner, client


async def _decide_report_convert_learn(nbo: Harness, learner: Learner, customer: str, campaign: str) -> None:
    await republish(nbo, nbo.settings.redis_url or "", catalog(campaign))
    resp = await nbo.decide(customer, pb.CALL_CENTRE, request_id=f"r-{customer}")
    assert [o.offer_id for o in resp.offers] == ["o_adhoc"], resp
    assert resp.offers[0].campaign_id == f"c_{campaign}"
    assert (await nbo.report(resp.decision_id, "o_adhoc", pb.ACCEPTED)).recorded
    converted = await nbo.stub.RecordConversion(
        pb.RecordConversionRequest(customer_id=customer, kind="purchase", value=5.0, event_id=f"e-{customer}"),
        timeout=5,
    )
    assert converted.recorded
    for _ in range(50):  # the outcome reaches the stream after the log writer's next flush
        if await learner.step():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the learner learned nothing from the outcome")


def test_every_transaction_stays_in_one_slot_on_a_3_master_cluster(cluster_url: str, tmp_path: Path) -> None:
    """Catalog, feature schema and model publication, rollback and the challenger are MULTI/EXEC
    transactions: on a cluster each must be over keys of one slot, or redis-py refuses it."""
    client = sync_redis(cluster_url)
    with pytest.raises(RedisClusterException, match=r"same slot|CROSSSLOT"):  # the guard relied on
        pipe = client.pipeline(transaction=True)
        pipe.set("a", 1).set("b", 2).execute()
    load_customers(cluster_url, {"vip": FEATURES}, tmp_path)
    publish_text(cluster_url, BASE)
    assert publish_text(cluster_url, catalog("x")) != publish_text(cluster_url, BASE)
    schema = current_schema(client, KEYS)
    assert schema is not None
    versions = []
    for seed in (1, 2):
        make_artifact(tmp_path / f"m{seed}", schema, ["o_adhoc", "o_trig"], seed=seed)
        versions.append(publish_model(client, KEYS, tmp_path / f"m{seed}", schema))
    set_challenger(client, KEYS, versions[0], 0.5, "salt")
    assert clear_challenger(client, KEYS) is not None
    assert rollback(client, KEYS) == versions[0]
    assert promote(client, KEYS, versions[1]) == versions[1]
    client.close()
