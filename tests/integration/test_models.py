"""Model publishing, validation, rollback and hot swap against a running server."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import redis

from server.features.schema import FeatureSchema, FeatureSpec
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.models.forest import CompiledForest
from server.models.loader import compiled_predict
from server.models.registry import ModelRejected, booster_predict, publish, read_artifact, rollback
from server.state.catalog_store import current_schema
from server.state.keys import Keys
from tests.integration.conftest import CUSTOMERS
from tests.integration.harness import Clock, Harness, load_customers, publish_text
from tests.model_fixtures import make_artifact
from tests.unit.catalog_fixtures import BASE, SCHEMA

OFFERS = ["o_adhoc", "o_trig"]  # o_life is unknown to the models: it keeps its prior


@pytest.fixture
async def served(redis_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    publish_text(redis_url, BASE)
    harness = Harness(redis_url, Clock(), model_cache_dir=tmp_path / "cache")
    await harness.start()
    yield harness
    await harness.stop()


def live_schema(redis_url: str) -> FeatureSchema:
    client = redis.Redis.from_url(redis_url)
    schema = current_schema(client, Keys())
    client.close()
    assert schema is not None
    return schema


def publish_dir(redis_url: str, directory: Path) -> str:
    client = redis.Redis.from_url(redis_url)
    try:
        return publish(client, Keys(), directory, current_schema(client, Keys()))
    finally:
        client.close()


async def wait_for_model(nbo: Harness, version: str) -> None:
    """Until the version is served, in its final (compiled) form: a compile still running in the
    background would take CPU from whatever the test does next."""
    for _ in range(100):
        live = nbo.worker.service.live
        if live is not None and live.scorer.version == version and not nbo.worker.model_reloader.compiling:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"model {version} not live after 10 s")


async def test_publish_swaps_the_model_and_unknown_offers_keep_their_prior(
    served: Harness, redis_url: str, tmp_path: Path
) -> None:
    make_artifact(tmp_path / "m1", live_schema(redis_url), OFFERS)
    version = publish_dir(redis_url, tmp_path / "m1")
    await wait_for_model(served, version)
    r = await served.decide("regular", max_offers=1, explain=True)
    assert r.model_version == version
    # o_life is not known to the model: its propensity is still the catalog prior, said so
    assert [o.offer_id for o in r.offers] == ["o_life"]
    assert r.offers[0].propensity == pytest.approx(0.2)
    assert "Likelihood to accept: 20% (catalog estimate)" in r.offers[0].reasons
    r = await served.decide("vip", pb.CALL_CENTRE)
    expected = booster_predict(read_artifact(tmp_path / "m1").model_text)
    live = served.worker.service.live
    assert live is not None
    assert r.offers[0].propensity != pytest.approx(0.1)
    assert any(re.fullmatch(r"Likelihood to accept: \d+% \(model\)", x) for x in r.offers[0].reasons)
    assert callable(expected)


def test_corrupt_wrong_schema_and_nan_models_are_rejected(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    schema = live_schema(redis_url)
    good = tmp_path / "good"
    make_artifact(good, schema, OFFERS)
    live = publish_dir(redis_url, good)

    corrupt = tmp_path / "corrupt"
    make_artifact(corrupt, schema, OFFERS, seed=2)
    text = (corrupt / "model.txt").read_text()
    (corrupt / "model.txt").write_text(text.replace("leaf_value=", "leaf_value=1", 1))
    with pytest.raises(ModelRejected, match="checksum mismatch"):
        publish_dir(redis_url, corrupt)

    other = FeatureSchema(1, (*schema.features, FeatureSpec("shoe_size", "numeric")))
    wrong = tmp_path / "wrong"
    make_artifact(wrong, other, OFFERS)
    with pytest.raises(ModelRejected, match='feature "shoe_size" is not in the live schema'):
        publish_dir(redis_url, wrong)

    nan = tmp_path / "nan"
    make_artifact(nan, schema, OFFERS, seed=3)
    lines = (nan / "model.txt").read_text().splitlines()
    lines = [
        re.sub(r"^leaf_value=.*", lambda m: "leaf_value=" + " ".join(["nan"] * len(m.group(0).split())), ln)
        for ln in lines
    ]
    (nan / "model.txt").write_text("\n".join(lines) + "\n")
    from server.models.registry import finalize

    finalize(nan)
    # LightGBM either aborts on such a model or scores NaN; publish rejects both
    with pytest.raises(ModelRejected, match=r"crashed LightGBM|scored NaN"):
        publish_dir(redis_url, nan)

    assert redis_client.get("nbo:{g}:model:current") == live.encode()


async def test_rollback_and_a_swap_under_load_loses_no_request(served: Harness, redis_url: str, tmp_path: Path) -> None:
    make_artifact(tmp_path / "a", live_schema(redis_url), OFFERS, seed=1)
    first = publish_dir(redis_url, tmp_path / "a")
    await wait_for_model(served, first)
    make_artifact(tmp_path / "b", live_schema(redis_url), OFFERS, seed=5, favourite="o_trig")
    second = read_artifact(tmp_path / "b").version
    assert second != first

    async def hammer() -> list[str]:
        versions = []
        for _ in range(40):
            r = await served.decide("vip", pb.CALL_CENTRE, request_id="")
            versions.append(r.model_version)
        return versions

    load = [asyncio.create_task(hammer()) for _ in range(8)]
    await asyncio.sleep(0.05)
    assert publish_dir(redis_url, tmp_path / "b") == second
    results = await asyncio.gather(*load)  # any failed call would raise here
    seen = {v for vs in results for v in vs}
    assert seen <= {first, second} and len([v for vs in results for v in vs]) == 320
    await wait_for_model(served, second)

    client = redis.Redis.from_url(redis_url)
    assert rollback(client, Keys()) == first
    with pytest.raises(ModelRejected, match="nothing to roll back to"):
        rollback(client, Keys())
    client.close()
    await wait_for_model(served, first)


async def test_a_model_published_while_serving_is_served_at_once_and_compiled_meanwhile(
    served: Harness, redis_url: str, tmp_path: Path
) -> None:
    # 60 trees take a second or more to compile: far longer than Booster.predict takes to load
    make_artifact(tmp_path / "m", live_schema(redis_url), OFFERS, trees=60)
    version = publish_dir(redis_url, tmp_path / "m")
    forms = []
    for _ in range(600):
        live = served.worker.service.live
        if live is not None and live.scorer.version == version:
            r = await served.decide("vip", pb.CALL_CENTRE)
            assert r.model_version == version
            forms.append(live.scorer.compiled)
            if live.scorer.compiled:
                break
        await asyncio.sleep(0.05)
    assert forms[0] is False and forms[-1] is True, forms  # first Booster.predict, then compiled
    assert not served.worker.model_reloader.compiling
    # a worker started now finds the object file cached: it serves the compiled model from the start
    again = Harness(redis_url, Clock(), model_cache_dir=served.settings.model_cache_dir)
    await again.start()
    try:
        live = again.worker.service.live
        assert live is not None and live.scorer.version == version and live.scorer.compiled
    finally:
        await again.stop()


def test_compiled_and_plain_predictions_agree(tmp_path: Path) -> None:
    make_artifact(tmp_path / "m", SCHEMA, OFFERS, trees=60)
    artifact = read_artifact(tmp_path / "m")
    plain = booster_predict(artifact.model_text)
    compiled = compiled_predict(artifact, tmp_path / "cache")
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(500, len(artifact.spec.columns))) * 10 + 20
    for j in artifact.spec.categorical_indices:
        rows[:, j] = rng.integers(0, 3, size=500)
    rows[rng.random(rows.shape) < 0.1] = np.nan  # missing values take the default branch in both
    assert np.max(np.abs(compiled(rows) - plain(rows))) < 1e-9
    # the object file is cached beside the artifact: a restart does not recompile
    assert (tmp_path / "cache" / artifact.version / "model.o").is_file()
    assert json.loads((tmp_path / "m" / "metadata.json").read_text())["checksum_sha256"]


def test_compiled_forest_gives_the_bits_lleaves_predict_gives(tmp_path: Path) -> None:
    import lleaves

    make_artifact(tmp_path / "m", SCHEMA, OFFERS, trees=30)
    artifact = read_artifact(tmp_path / "m")
    forest = compiled_predict(artifact, tmp_path / "cache")
    assert isinstance(forest, CompiledForest)
    folder = tmp_path / "cache" / artifact.version
    model = lleaves.Model(model_file=str(folder / "model.txt"))
    model.compile(cache=str(folder / "model.o"))
    rng = np.random.default_rng(4)
    rows = rng.normal(size=(100, len(artifact.spec.columns))) * 10 + 20
    rows[rng.random(rows.shape) < 0.1] = np.nan
    want = model.predict(rows, n_jobs=1)
    assert forest(rows).tobytes() == want.tobytes()  # the direct call
    assert forest(rows[3:4]).tobytes() == want[3:4].tobytes()
    # what the direct call does not take goes through lleaves: same scores
    assert forest(np.asfortranarray(rows)).tobytes() == want.tobytes()
    assert forest(rows.astype(np.float32)).tobytes() == model.predict(rows.astype(np.float32), n_jobs=1).tobytes()
    assert forest(rows[:0]).shape == (0,)
