"""The Redis feature store against a real redis-server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

from server.features.schema import FeatureSchema, FeatureSpec, decode_vector
from server.state.feature_store import FeatureStore, FeatureStoreError, FeatureTable, SchemaMismatch, read_feature_file
from server.state.keys import Keys

KEYS = Keys()
HEADER = "customer_id,tier,tenure,churn\n"


def specs(levels: tuple[str, ...]) -> tuple[FeatureSpec, ...]:
    tier = FeatureSpec("tier", "categorical", levels)
    return (tier, FeatureSpec("tenure", "numeric"), FeatureSpec("churn", "numeric"))


def stored_vector(client: redis.Redis, customer_id: str) -> tuple[int, list[float]]:
    blob = client.get(KEYS.features(customer_id))
    assert isinstance(blob, bytes)
    version, vector = decode_vector(blob)
    return version, vector.tolist()


@pytest.fixture
def store(redis_client: redis.Redis) -> FeatureStore:
    return FeatureStore(redis_client, KEYS)


def table_of(tmp_path: Path, body: str, store: FeatureStore | None = None, header: str = HEADER) -> FeatureTable:
    path = tmp_path / f"f{len(list(tmp_path.iterdir()))}.csv"
    path.write_text(header + body)
    return read_feature_file(path, ["tier"], base=store.current_schema() if store else None)


def test_load_then_get(tmp_path: Path, store: FeatureStore, redis_client: redis.Redis) -> None:
    table = table_of(tmp_path, "vip,A,40,0.25\nregular,B,,0.5\nnew,,1,\n")
    result = store.load(table)
    assert (result.rows, result.schema_version, result.schema_changed) == (3, 1, True)
    assert result.seconds >= 0
    assert store.get("vip") == {"tier": "A", "tenure": 40.0, "churn": 0.25}
    assert store.get("regular") == {"tier": "B", "tenure": None, "churn": 0.5}
    assert store.get("new") == {"tier": None, "tenure": 1.0, "churn": None}
    assert store.get("nobody") is None
    assert redis_client.get(KEYS.schema_current) == b"1"
    assert store.current_schema() == FeatureSchema(1, specs(("A", "B")))
    assert stored_vector(redis_client, "vip") == (1, [0.0, 40.0, 0.25])
    with pytest.raises(ValueError, match="customer_id: contains"):
        store.get("a{b}")


def test_reloading_the_same_columns_keeps_the_schema_version(tmp_path: Path, store: FeatureStore) -> None:
    store.load(table_of(tmp_path, "c1,A,1,1\nc2,B,2,2\n"))
    again = store.load(table_of(tmp_path, "c1,B,5,5\n", store))
    assert (again.schema_version, again.schema_changed) == (1, False)
    assert store.get("c1") == {"tier": "B", "tenure": 5.0, "churn": 5.0}


def test_new_levels_make_version_2_and_old_vectors_stay_readable(
    tmp_path: Path, store: FeatureStore, redis_client: redis.Redis
) -> None:
    store.load(table_of(tmp_path, "old,B,1,1\nother,A,2,2\n"))
    result = store.load(table_of(tmp_path, "fresh,C,3,3\nother,AA,4,4\n", store))
    assert (result.schema_version, result.schema_changed) == (2, True)
    live = store.current_schema()
    v1 = store.schema(1)
    assert live is not None and v1 is not None
    assert live.features[0].levels == ("A", "B", "AA", "C") and live.extends(v1)
    assert stored_vector(redis_client, "old")[0] == 1
    assert store.get("old") == {"tier": "B", "tenure": 1.0, "churn": 1.0}
    assert store.get("fresh") == {"tier": "C", "tenure": 3.0, "churn": 3.0}
    assert store.get("other") == {"tier": "AA", "tenure": 4.0, "churn": 4.0}


def test_a_table_read_without_the_live_schema_is_fitted_to_it(tmp_path: Path, store: FeatureStore) -> None:
    store.load(table_of(tmp_path, "old,B,1,1\nold2,A,1,1\n"))
    # read without base: levels sorted (A, C) and columns in another order than the live schema
    table = table_of(tmp_path, "c9,3,C,9\n", header="customer_id,tenure,tier,churn\n")
    table2 = table_of(tmp_path, "c8,4,A,8\n", header="customer_id,tenure,tier,churn\n")
    assert table.specs[1].levels == ("C",)
    result = store.load(table)
    assert result.schema_version == 2
    store.load(table2)
    assert store.get("c9") == {"tier": "C", "tenure": 3.0, "churn": 9.0}
    assert store.get("c8") == {"tier": "A", "tenure": 4.0, "churn": 8.0}
    assert store.get("old") == {"tier": "B", "tenure": 1.0, "churn": 1.0}
    live = store.current_schema()
    assert live is not None and live.names == ("tier", "tenure", "churn") and live.version == 2


def test_layout_change_is_refused_without_replace(
    tmp_path: Path, store: FeatureStore, redis_client: redis.Redis
) -> None:
    store.load(table_of(tmp_path, "old,A,1,1\n"))
    other = table_of(tmp_path, "new,A,1,1\n", header="customer_id,tier,tenure,spend\n")
    with pytest.raises(SchemaMismatch) as info:
        store.load(other)
    assert "differ from feature schema v1: added spend; removed churn" in str(info.value)
    assert "--replace-schema" in str(info.value)
    assert redis_client.exists(KEYS.features("new")) == 0
    assert redis_client.get(KEYS.schema_current) == b"1"

    result = store.load(other, replace_schema=True)
    assert (result.schema_version, result.schema_changed) == (2, True)
    assert store.get("new") == {"tier": "A", "tenure": 1.0, "spend": 1.0}
    with pytest.raises(FeatureStoreError, match="v1, which the live v2 cannot read"):
        store.get("old")


def test_rows_with_errors_are_reported_and_nothing_is_written_until_load(
    tmp_path: Path, store: FeatureStore, redis_client: redis.Redis
) -> None:
    table = table_of(tmp_path, "good,A,1,1\nbad{,A,1,1\nworse,A,abc,1\n")
    assert [e.line for e in table.errors] == [3, 4]
    assert table.customer_ids == ["good"]
    assert redis_client.dbsize() == 0  # reading never writes; refusing is the caller's choice
    store.load(table)  # what --skip-invalid does: the good rows only
    assert store.get("good") is not None and store.get("worse") is None


def test_progress_is_reported_per_batch_and_schema_goes_live_last(
    tmp_path: Path, store: FeatureStore, redis_client: redis.Redis
) -> None:
    table = table_of(tmp_path, "".join(f"c{i},A,{i},0\n" for i in range(7)))
    seen: list[tuple[int, object, int]] = []

    def progress(n: int) -> None:
        seen.append((n, redis_client.get(KEYS.schema_current), int(redis_client.exists(KEYS.schema(1)))))

    result = store.load(table, batch_size=3, progress=progress)
    assert seen == [(3, None, 1), (6, None, 1), (7, None, 1)]
    assert result.rows == 7 and redis_client.get(KEYS.schema_current) == b"1"
    assert store.get("c6") == {"tier": "A", "tenure": 6.0, "churn": 0.0}


def test_many_rows_cross_mset_chunks(tmp_path: Path, store: FeatureStore, redis_client: redis.Redis) -> None:
    table = table_of(tmp_path, "".join(f"c{i},{'AB'[i % 2]},{i},0.5\n" for i in range(2_500)))
    assert store.load(table, batch_size=1_200).rows == 2_500
    assert redis_client.dbsize() == 2_500 + 2  # vectors, schema v1, pointer
    assert store.get("c2499") == {"tier": "B", "tenure": 2499.0, "churn": 0.5}


def test_an_unfinished_loads_schema_version_is_not_reused(
    tmp_path: Path, store: FeatureStore, redis_client: redis.Redis
) -> None:
    store.load(table_of(tmp_path, "c1,A,1,1\n"))
    # a load that stored v2 and died before naming it live (its vectors may be in Redis)
    orphan = FeatureSchema(2, specs(("A", "Z")))
    redis_client.set(KEYS.schema(2), orphan.to_json())
    result = store.load(table_of(tmp_path, "c2,B,2,2\n", store))
    assert result.schema_version == 3
    assert store.schema(2) == orphan
    assert store.get("c2") == {"tier": "B", "tenure": 2.0, "churn": 2.0}


def test_dangling_schema_pointer_is_an_error(store: FeatureStore, redis_client: redis.Redis) -> None:
    redis_client.set(KEYS.schema_current, 4)
    with pytest.raises(FeatureStoreError, match=re.escape("names feature schema v4 but nbo:{g}:schema:v4 is missing")):
        store.current_schema()
