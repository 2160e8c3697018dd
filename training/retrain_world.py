"""A synthetic world's history written into Redis as the server writes it, for `nbo retrain`.

`nbo retrain` reads the decision and outcome streams. To exercise it (tests, the measured
example in docs/learning.md) without driving thousands of gRPC calls, `setup_world` loads a
world's customers and catalog through the real feature store and catalog store, and
`log_history` appends its simulated decisions (training.world.World.simulate_log) to the streams
as the server's own records: the feature vector as the feature store encodes it, the awarded
offer with its logged selection probability, and an ACCEPTED outcome a minute later for every
accepted row. `training.scenarios.drifted` gives a world whose offers respond differently, so a
history can drift halfway.

CLI (the measured example of docs/learning.md): `python -m training.retrain_world --redis-url URL
--out DIR` loads a world, 30 days of its history, a model trained on that history (published:
the champion), then 30 more days in which 8 offers respond differently (`drifted`).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import redis

from server.features.schema import FeatureSchema
from server.models.registry import publish as publish_model
from server.state.catalog_store import current_schema, publish
from server.state.feature_store import FeatureStore, read_feature_file
from server.state.keys import Keys
from server.state.records import Candidates, DecisionRecord, OutcomeRecord
from training.dataset import CONTEXT_PREFIX, write_dataset
from training.ope_data import LoggedData
from training.population import CATEGORICAL
from training.scenarios import changed_offers, drifted
from training.train import train
from training.world import CONTEXT_KEYS, DEFAULT_START_TS, World

RESPONSE_DELAY = 60.0  # seconds from a decision to its customer's answer
BATCH = 2_000


def setup_world(client: redis.Redis, keys: Keys, world: World, directory: Path) -> str:
    """Load the world's customers and publish its catalog; the catalog version decisions name."""
    directory.mkdir(parents=True, exist_ok=True)
    features = directory / "customers.csv"
    world.write_features(features)
    store = FeatureStore(client, keys)
    store.load(read_feature_file(features, CATEGORICAL, base=store.current_schema()), replace_schema=True)
    return publish(client, keys, world.catalog_yaml(), source="training.retrain_world").version


def log_history(client: redis.Redis, keys: Keys, columns: dict[str, Any], catalog_version: str) -> int:
    """Append a simulated log (World.simulate_log's columns) to the decision and outcome streams."""
    schema = current_schema(client, keys)
    if schema is None:
        raise RuntimeError("no feature schema in Redis: call setup_world first")
    table = pa.table({k: pa.array(np.asarray(v)) for k, v in columns.items()})
    vectors = LoggedData.from_table(table).vectors(schema)
    pipe = client.pipeline(transaction=False)
    for i in range(table.num_rows):
        decision, outcome = _records(columns, i, vectors[i], schema, catalog_version)
        pipe.xadd(keys.decision_stream, decision.to_fields())
        if outcome is not None:
            pipe.xadd(keys.outcome_stream, outcome.to_fields())
        if (i + 1) % BATCH == 0:
            pipe.execute()
    pipe.execute()
    return table.num_rows


def _records(
    columns: dict[str, Any], i: int, vector: Any, schema: FeatureSchema, catalog_version: str
) -> tuple[DecisionRecord, OutcomeRecord | None]:
    decision_id = str(columns["decision_id"][i])
    customer = str(columns["customer_id"][i])
    channel = str(columns["channel"][i])
    offer = str(columns["offer_id"][i])
    ts = float(columns["timestamp"][i])
    context = {
        key: float(columns[CONTEXT_PREFIX + key][i])
        for key in CONTEXT_KEYS
        if not math.isnan(float(columns[CONTEXT_PREFIX + key][i]))
    }
    candidates = Candidates(
        offer_id=[offer],
        campaign_id=[""],
        propensity=[math.nan],
        expected_value=[math.nan],
        score=[math.nan],
        selection_probability=[float(columns["selection_probability"][i])],
        status=["chosen"],
    )
    decision = DecisionRecord(
        decision_id=decision_id,
        ts=ts,
        customer_id=customer,
        channel=channel,
        placement=str(columns["placement"][i]),
        context=context,
        events=[],
        request_id=decision_id,
        schema_version=schema.version,
        features=[float(v) for v in vector],
        candidates=candidates,
        chosen=[offer],
        no_offer_reason="",
        model_version="",
        catalog_version=catalog_version,
        bandit_version="",
        degraded=False,
        control_group=False,
        would_offer=[],
    )
    if not int(columns["outcome"][i]):
        return decision, None
    outcome = OutcomeRecord(
        event_id=f"{decision_id}:{offer}:accepted",
        decision_id=decision_id,
        customer_id=customer,
        offer_id=offer,
        outcome="accepted",
        value=float(columns["value"][i]),
        ts=ts + RESPONSE_DELAY,
        channel=channel,
        propensity=math.nan,
        prior_sd=math.nan,
    )
    return decision, outcome


def drift_history(client: redis.Redis, keys: Keys, out: Path, opts: argparse.Namespace) -> list[str]:
    """Before: `days` of the world's history and a model trained on it, live. After: `days` more
    of the drifted world's. The offers whose response changed."""
    world = World.create(n_customers=opts.customers, n_offers=opts.offers, seed=opts.seed)
    after = drifted(world, opts.drift_seed)
    version = setup_world(client, keys, world, out)
    before_log = world.simulate_log(opts.before_decisions, seed=11, days=opts.days)
    log_history(client, keys, before_log, version)
    write_dataset(out / "before.parquet", before_log)
    (out / "catalog.yaml").write_text(world.catalog_yaml())
    schema = current_schema(client, keys)
    train(out / "before.parquet", out / "champion", catalog=out / "catalog.yaml", progress=False, live_schema=schema)
    publish_model(client, keys, out / "champion", schema)
    after_log = after.simulate_log(
        opts.decisions, seed=12, start_ts=DEFAULT_START_TS + opts.days * 86_400.0, days=opts.days
    )
    # the two simulated logs number their decisions alike; the log keeps one record per id
    after_log["decision_id"] = np.char.add("after-", after_log["decision_id"])
    log_history(client, keys, after_log, version)
    return changed_offers(world, after)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.retrain_world", description=__doc__.split("\n")[0])
    p.add_argument("--redis-url", required=True)
    p.add_argument("--out", type=Path, required=True, help="directory for the features, catalog and champion")
    p.add_argument("--customers", type=int, default=10_000)
    p.add_argument("--offers", type=int, default=30)
    p.add_argument("--seed", type=int, default=7, help="world seed")
    p.add_argument("--drift-seed", type=int, default=1)
    p.add_argument("--decisions", type=int, default=60_000, help="decisions after the drift")
    p.add_argument("--before-decisions", type=int, default=15_000, help="decisions before the drift")
    p.add_argument("--days", type=float, default=30.0, help="days before and again after the drift")
    opts = p.parse_args(argv)
    with redis.Redis.from_url(opts.redis_url) as client:
        changed = drift_history(client, Keys(), opts.out, opts)
    end = DEFAULT_START_TS + 2 * opts.days * 86_400.0
    print(
        f"logged {opts.decisions + opts.before_decisions:,} decisions; "
        f"drift at day {opts.days:g} changed {', '.join(changed)}"
    )
    print(f"history ends at {end:.0f} (epoch seconds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
