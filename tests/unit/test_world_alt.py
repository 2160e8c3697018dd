"""The second synthetic world, response drift and the arm inputs of the simulation's catalog."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from server.catalog.compiler import parse_catalog
from server.features.file import merged_schema, read_feature_file
from training.closed_loop_catalog import arm_input_stats, catalog_text
from training.population import CATEGORICAL
from training.scenarios import MIN_SLOPE, RESPONSE_SLOPE, changed_offers, response_drifted
from training.world import WORLDS, World
from training.world_alt import ALT

SEED = 5


@pytest.fixture(scope="module")
def alt() -> World:
    return World.create(n_customers=1000, seed=SEED, spec=ALT)


def _digest(world: World, decisions: int) -> str:
    h = hashlib.sha256(world.catalog_yaml().encode())
    for name, values in world.simulate_log(decisions, seed=11).items():
        h.update(name.encode())
        h.update(np.asarray(values).tobytes())
    return h.hexdigest()


def test_the_default_world_is_unchanged() -> None:
    # the digest of the default world's catalog and log before worlds were parametrised
    world = World.create(n_customers=1000, seed=SEED)
    assert world.spec is WORLDS["default"] and world.n_offers == 30
    assert _digest(world, 2000) == "f95198768a70ecf374b52744e5989e5c0eb9e76c6b16607226cf7beec11c14bc"
    assert not world.slopes.any() and world.slopes.shape == (30, 2)


def test_the_alt_world_is_exact_under_its_seed(alt: World) -> None:
    assert alt.n_offers == 24 and alt.offer_ids[:4] == ("bundle_01", "device_02", "retention_03", "payment_plan_04")
    assert alt.population.customer_ids[:2] == ["K0000000", "K0000001"]
    assert alt.population.columns["age"][:5].tolist() == [43.0, 37.0, 44.0, 47.0, 36.0]
    assert alt.offer_value[:6].tolist() == [55.0, 39.0, 78.0, 111.0, 54.0, 117.0]
    assert alt.intercept[:4].tolist() == [-2.96972, -5.144485, -4.806972, -3.04429]
    assert alt.slopes[:3].tolist() == [[0.0, 0.9024], [-1.0413000000000001, 0.0], [0.0, -0.985]]
    billing = {"call_reason_billing": np.array([1.0, 0.0, 1.0])}
    p = alt.oracle(np.array([0, 1, 2]), np.array([3, 3, 2]), "call_centre", billing)
    assert p.tolist() == [0.08442714601687913, 0.008294108973173241, 0.038872479888953426]
    log = alt.simulate_log(2000, seed=11)
    assert log["offer_id"][:3].tolist() == ["insurance_07", "streaming_17", "retention_15"]
    assert int(log["outcome"].sum()) == 236
    assert _digest(alt, 2000) == _digest(World.create(n_customers=1000, seed=SEED, spec=ALT), 2000)
    assert _digest(alt, 2000) != _digest(World.create(n_customers=1000, seed=SEED + 1, spec=ALT), 2000)


def test_the_alt_world_differs_and_its_catalog_is_valid(alt: World, tmp_path: Path) -> None:
    default = World.create(n_customers=1000, seed=SEED)
    assert set(alt.population.columns) - set(default.population.columns) >= {"age", "satisfaction", "household_size"}
    assert {c.type for c in ALT.campaigns} == {"ad_hoc", "trigger", "lifecycle"}
    alt.write_features(tmp_path / "customers.csv")
    schema = merged_schema(read_feature_file(tmp_path / "customers.csv", CATEGORICAL), None)
    catalog = parse_catalog(catalog_text(alt, 1), schema)
    assert len(catalog.offers) == 24
    # the eligibility rules in numpy are the catalog's: device offers need a contract ending soon
    mask = alt.eligible(np.arange(alt.n_customers), "web", {"cart_value": np.full(alt.n_customers, 50.0)})
    device = alt.offer_ids.index("device_02")
    left = alt.population.columns["contract_months_left"]
    assert np.array_equal(mask[:, device], left <= 6)
    # intercepts calibrate each offer to its base rate, as in the default world
    log = alt.simulate_log(20_000, seed=3)
    assert 0.05 < float(np.mean(log["outcome"])) < 0.25


def _slope(world: World, offer: int, feature: str) -> float:
    """Least-squares slope of the true log-odds on the feature, over the customers (web, fixed context)."""
    n = world.n_customers
    p = world.oracle(np.arange(n), np.full(n, offer), "web", {"cart_value": np.full(n, 60.0)})
    x = world.population.columns[feature]
    return float(np.polyfit(x, np.log(p / (1 - p)), 1)[0])


@pytest.mark.parametrize("name", ["default", "alt"])
def test_response_drift_changes_how_offers_respond_to_features(name: str) -> None:
    world = World.create(n_customers=3000, seed=SEED, spec=WORLDS[name])
    drifted = response_drifted(world, seed=1)
    assert drifted.slopes.shape == world.slopes.shape
    changed = changed_offers(world, drifted)
    assert len(changed) == 8
    features = world.spec.drift_features
    moved = [j for j, o in enumerate(world.offer_ids) if o in changed]
    kept = [j for j, o in enumerate(world.offer_ids) if o not in changed]
    assert np.array_equal(world.intercept[kept], drifted.intercept[kept])
    assert not np.array_equal(world.intercept[moved], drifted.intercept[moved])  # recalibrated to the base rate
    assert np.array_equal(drifted.slopes, response_drifted(world, seed=1).slopes)  # seeded
    assert not np.array_equal(drifted.slopes, response_drifted(world, seed=2).slopes)
    for offer in changed:
        j = world.offer_ids.index(offer)
        (f,) = np.flatnonzero(world.slopes[j] != drifted.slopes[j])
        old, new = world.slopes[j, f], drifted.slopes[j, f]
        assert new in (-old, 2 * old) if abs(old) >= MIN_SLOPE else abs(new) == RESPONSE_SLOPE
        # the true probability's dependence on the feature is another one after the drift
        before, after = _slope(world, j, features[f]), _slope(drifted, j, features[f])
        assert after - before == pytest.approx((new - old) / world.slope_scale[f], rel=0.05)
        assert abs(after - before) > 0.25 / world.slope_scale[f]
    assert np.array_equal(world.slopes[kept], drifted.slopes[kept])
    # the levels stay: every changed offer's mean response over the customers is about what it was
    n = world.n_customers
    for j in moved:
        means = [
            w.oracle(np.arange(n), np.full(n, j), "web", {"cart_value": np.full(n, 60.0)}).mean()
            for w in (world, drifted)
        ]
        assert means[1] == pytest.approx(means[0], rel=0.25), world.offer_ids[j]


def test_the_catalog_declares_standardised_arm_inputs(alt: World) -> None:
    text = catalog_text(alt, 3, arm_inputs=["age", "satisfaction"])
    bandit = yaml.safe_load(text)["bandit"]
    assert bandit["seed"] == 3
    age, satisfaction = (alt.population.columns[f] for f in ("age", "satisfaction"))
    assert bandit["inputs"] == [
        {"feature": "age", "center": round(float(age.mean()), 4), "scale": round(float(age.std()), 4)},
        {
            "feature": "satisfaction",
            "center": round(float(satisfaction.mean()), 4),
            "scale": round(float(satisfaction.std()), 4),
        },
    ]
    assert arm_input_stats(alt, ["age"]) == bandit["inputs"][:1]
    assert "inputs" not in yaml.safe_load(catalog_text(alt, 3))["bandit"]
    with pytest.raises(ValueError, match="not a numeric customer feature"):
        catalog_text(alt, 3, arm_inputs=["tier"])
    with pytest.raises(ValueError, match="need the bandit"):
        catalog_text(alt, 3, bandit=False, arm_inputs=["age"])
    # another bandit section in place of the simulation's, with the inputs added to it
    settings = "bandit:\n  seed: 7\n  prior_sd: 0.5\n  channels:\n    web: {exploration: 1.0, epsilon: 0.05}\n"
    other = yaml.safe_load(catalog_text(alt, 3, arm_inputs=["age"], bandit_yaml=settings))["bandit"]
    assert other == {
        "seed": 7,
        "prior_sd": 0.5,
        "channels": {"web": {"exploration": 1.0, "epsilon": 0.05}},
        "inputs": bandit["inputs"][:1],
    }
    with pytest.raises(ValueError, match="one key is `bandit`"):
        catalog_text(alt, 3, bandit_yaml="seed: 7\n")
    # a feature with gaps: the mean and sd of the known values
    bill = alt.population.columns["monthly_bill"]
    assert np.isnan(bill).any()
    assert arm_input_stats(alt, ["monthly_bill"])[0]["center"] == round(float(np.nanmean(bill)), 4)
