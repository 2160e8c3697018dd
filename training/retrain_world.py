"""A synthetic world's history written into Redis as the server writes it, for `nbo retrain`.

`nbo retrain` reads the decision and outcome streams. To exercise it (tests, the measured
example in docs/learning.md) without driving thousands of gRPC calls, `setup_world` loads a
world's customers and catalog through the real feature store and catalog store, and
`log_history` appends its simulated decisions (training.world.World.simulate_log) to the streams
as the server's own records: the feature vector as the feature store encodes it, the awarded
offer with its logged selection probability, and an ACCEPTED outcome a minute later for every
accepted row. `training.scenarios.drifted` gives a world whose offers respond differently, so a
history can drift halfway.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import redis

from server.features.schema import FeatureSchema
from server.state.catalog_store import current_schema, publish
from server.state.feature_store import FeatureStore, read_feature_file
from server.state.keys import Keys
from server.state.records import Candidates, DecisionRecord, OutcomeRecord
from training.dataset import CONTEXT_PREFIX
from training.ope_data import LoggedData
from training.population import CATEGORICAL
from training.world import CONTEXT_KEYS, World

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
