"""The one log reader (server.state.log_reader) and the one catalog-version loader
(server.state.catalog_store.stored_catalog) on a real Redis."""

from __future__ import annotations

import dataclasses
import json

import pytest
import redis

from server.state.catalog_store import CatalogNotStored, compile_stored, publish, stored_catalog
from server.state.keys import Keys
from server.state.log_reader import LogReader
from server.state.records import DecisionRecord, OutcomeRecord
from tests.records import decision_record
from tests.redis_cluster import redis_url_on_both
from tests.unit.catalog_fixtures import BASE, SCHEMA

# every test here runs on a single Redis and on the 3-master cluster
redis_url = redis_url_on_both

KEYS = Keys("tenant-a:")  # not the default prefix: the reader must read this deployment's streams

DECISION = decision_record(
    decision_id="d0",
    customer_id="c1",
    context={"cart_value": 40.0},
    no_offer_reason="unknown_customer",
    model_version="prior",
    catalog_version="1-abcdef12",
)
OUTCOME = OutcomeRecord("e0", "d0", "c1", "o1", "accepted", 5.0, 1_800_000_001.0, "web", 0.1, 0.4)


def _decision(i: int) -> DecisionRecord:
    return dataclasses.replace(DECISION, decision_id=f"d{i}", ts=DECISION.ts + i)


def test_each_record_once_in_log_order_across_chunks(redis_client: redis.Redis) -> None:
    stream = KEYS.decision_stream
    for i in range(5):
        redis_client.xadd(stream, _decision(i).to_fields())
    # the writer's retry of a half-written batch: d1 and d3 appended again
    redis_client.xadd(stream, _decision(1).to_fields())
    redis_client.xadd(stream, _decision(3).to_fields())
    redis_client.xadd(stream, {"v": "3", "r": json.dumps({"decision_id": "future"})})
    redis_client.xadd(stream, {"v": "1", "r": "{not json"})
    redis_client.xadd(Keys().decision_stream, _decision(99).to_fields())  # another deployment's log

    reader = LogReader(redis_client, KEYS, chunk=2)
    assert [r.decision_id for r in reader.decisions()] == ["d0", "d1", "d2", "d3", "d4"]
    stats = reader.decision_stats
    assert (stats.entries, stats.duplicates, stats.unreadable) == (9, 2, 2)
    entry_id = redis_client.xrange(stream)[7][0].decode()
    assert stats.first_unreadable == f"{entry_id}: record version '3'; this reader reads version '1', '2'"
    # a second pass reads afresh
    assert len(list(reader.decisions())) == 5 and reader.decision_stats.duplicates == 2


def test_outcomes_are_read_once_per_event(redis_client: redis.Redis) -> None:
    for rec in (OUTCOME, OUTCOME, dataclasses.replace(OUTCOME, event_id="e1", outcome="converted")):
        redis_client.xadd(KEYS.outcome_stream, rec.to_fields())
    redis_client.xadd(KEYS.outcome_stream, {"r": json.dumps({"decision_id": "d0"})})  # no version field
    reader = LogReader(redis_client, KEYS)
    assert [(r.event_id, r.outcome) for r in reader.outcomes()] == [("e0", "accepted"), ("e1", "converted")]
    assert (reader.outcome_stats.duplicates, reader.outcome_stats.unreadable) == (1, 1)
    assert reader.outcome_stats.first_unreadable.endswith("record version None; this reader reads version '1'")
    assert list(LogReader(redis_client, Keys()).outcomes()) == []


def test_a_stored_catalog_is_found_by_the_version_decisions_name(redis_client: redis.Redis) -> None:
    redis_client.set(KEYS.schema(1), SCHEMA.to_json())
    redis_client.set(KEYS.schema_current, 1)
    version = publish(redis_client, KEYS, BASE).version
    stored = stored_catalog(redis_client, KEYS, version)
    assert (stored.seq, stored.version, stored.text, stored.schema_version) == (1, version, BASE, 1)
    assert compile_stored(redis_client, KEYS, stored).version == version
    seq, _, digest = version.partition("-")
    # a Redis rebuilt from scratch reuses sequence numbers: the same number with other content is not it
    other = f"{seq}-{'0' * len(digest)}"
    with pytest.raises(CatalogNotStored, match=f"catalog v1 holds {version}, not {other}"):
        stored_catalog(redis_client, KEYS, other)
    with pytest.raises(CatalogNotStored, match="catalog v2 is not stored"):
        stored_catalog(redis_client, KEYS, "2-" + digest)
    with pytest.raises(CatalogNotStored, match="not a stored catalog version"):
        stored_catalog(redis_client, KEYS, "live")
