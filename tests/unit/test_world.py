"""The synthetic world: determinism, the oracle, the logging policy and the generated catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.catalog.compiler import parse_catalog
from server.features.file import merged_schema, read_feature_file
from training.dataset import FIXED_COLUMNS, read_dataset, write_dataset
from training.population import CATEGORICAL
from training.world import CONTEXT_KEYS, World, main


@pytest.fixture(scope="module")
def world() -> World:
    return World.create(n_customers=2000, n_offers=30, seed=7)


@pytest.fixture(scope="module")
def log(world: World) -> dict[str, Any]:
    return world.simulate_log(20_000, seed=11)


def test_same_seed_same_world_and_log(world: World, log: dict[str, Any]) -> None:
    again = World.create(n_customers=2000, n_offers=30, seed=7)
    np.testing.assert_array_equal(again.intercept, world.intercept)
    assert again.catalog_yaml() == world.catalog_yaml()
    log2 = again.simulate_log(20_000, seed=11)
    assert list(log2) == list(log)
    for name, values in log.items():
        np.testing.assert_array_equal(log2[name], values, err_msg=name)
    other = world.simulate_log(20_000, seed=12)
    assert not np.array_equal(other["offer_id"], log["offer_id"])


def test_log_schema(world: World, log: dict[str, Any]) -> None:
    names = list(log)
    assert names[: len(FIXED_COLUMNS)] == list(FIXED_COLUMNS)
    assert names[len(FIXED_COLUMNS) :] == [*world.population.columns, "ctx_cart_value", "ctx_call_reason_billing"]
    assert log["decision_id"][0] == "D000000000"
    assert len(set(log["decision_id"])) == 20_000
    ts = log["timestamp"]
    assert np.all(np.diff(ts) >= 0)
    assert ts[0] >= 1767225600 and ts[-1] <= 1767225600 + 60 * 86400
    assert set(log["channel"]) == {"web", "call_centre"}
    web = log["channel"] == "web"
    assert 0.58 < web.mean() < 0.62
    assert np.all(np.isnan(log["ctx_cart_value"][~web])) and np.all(log["ctx_cart_value"][web] > 0)
    assert np.all(np.isnan(log["ctx_call_reason_billing"][web]))
    assert set(np.unique(log["ctx_call_reason_billing"][~web])) == {0.0, 1.0}
    assert np.all(log["consent_web"][web] == 1) and np.all(log["consent_call"][~web] == 1)
    accepted = log["outcome"] == 1
    assert np.all(log["value"][~accepted] == 0)
    index = {o: j for j, o in enumerate(world.offer_ids)}
    offers = np.array([index[o] for o in log["offer_id"][accepted]])
    np.testing.assert_array_equal(log["value"][accepted], world.offer_value[offers])


def test_oracle_is_a_probability_and_the_log_has_none(world: World, log: dict[str, Any]) -> None:
    p = world.oracle_for_log(log)
    assert p.shape == (20_000,)
    assert np.all((p > 0) & (p < 1))
    assert p.min() < 0.01 and p.max() > 0.5  # the features matter
    assert not any("oracle" in n or "true" in n for n in log)
    # the realised rate matches the oracle's mean within sampling error
    assert abs(log["outcome"].mean() - p.mean()) < 3 * np.sqrt(p.mean() / 20_000)


def test_acceptance_rate_is_sane(log: dict[str, Any]) -> None:
    assert 0.05 < log["outcome"].mean() < 0.2


def test_base_rates_spread_from_rare_to_common(world: World) -> None:
    assert world.base_rate.min() == pytest.approx(0.01)
    assert world.base_rate.max() == pytest.approx(0.30)
    assert len(set(world.base_rate)) == 30
    # the prior is a noisy guess: correlated with the base rate but not equal to it
    assert np.corrcoef(np.log(world.base_rate), np.log(world.prior_propensity))[0, 1] > 0.5
    assert not np.allclose(world.base_rate, world.prior_propensity)


def test_calibrated_offers_hit_their_base_rate_on_average(world: World) -> None:
    log = world.simulate_log(60_000, seed=3)
    p = world.oracle_for_log(log)
    rates = {o: p[log["offer_id"] == o].mean() for o in world.offer_ids}
    rare = min(world.offer_ids, key=lambda o: world.base_rate[world.offer_ids.index(o)])
    common = max(world.offer_ids, key=lambda o: world.base_rate[world.offer_ids.index(o)])
    assert rates[rare] < 0.03 and rates[common] > 0.2


def test_interactions_move_the_oracle(world: World) -> None:
    ids = world.offer_ids
    n = world.n_customers
    customers = np.arange(n)
    billing = ids.index(next(o for o in ids if o.startswith("billing")))
    on = world.oracle(customers, billing, "call_centre", {"call_reason_billing": np.ones(n)})
    off = world.oracle(customers, billing, "call_centre", {"call_reason_billing": np.zeros(n)})
    assert np.all(on >= off) and on.mean() > 2 * off.mean()
    gift = ids.index(next(o for o in ids if o.startswith("gift")))
    birthday = np.asarray(world.population.columns["birthday_month"])
    jan = world.oracle(customers, gift, "web", {}, np.full(n, 1767225600.0))  # 2026-01-01
    assert jan[birthday == 1].mean() > 3 * jan[birthday != 1].mean()
    cart = ids.index(next(o for o in ids if o.startswith("cart")))
    mid = world.oracle(customers, cart, "web", {"cart_value": np.full(n, 80.0)})
    big = world.oracle(customers, cart, "web", {"cart_value": np.full(n, 500.0)})
    assert mid.mean() > 2 * big.mean()  # not monotone in cart value


def test_selection_probabilities_follow_the_policy(world: World, log: dict[str, Any]) -> None:
    index = {c: i for i, c in enumerate(world.population.customer_ids)}
    customers = np.array([index[c] for c in log["customer_id"]])
    context = {k: log["ctx_" + k] for k in CONTEXT_KEYS}
    probs = world.logging_policy(customers, log["channel"], context)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    offers = np.array([world.offer_ids.index(o) for o in log["offer_id"]])
    np.testing.assert_array_equal(log["selection_probability"], probs[np.arange(len(offers)), offers])
    eligible = probs > 0
    assert probs[eligible].min() > 0.01
    assert np.all(eligible == world.eligible(customers, log["channel"], context))
    # the empirical choice frequencies match the mean policy probability per offer
    expected = probs.mean(axis=0)
    observed = np.bincount(offers, minlength=world.n_offers) / len(offers)
    assert np.all(np.abs(observed - expected) < 5 * np.sqrt(expected / len(offers)) + 1e-9)
    # the policy softmaxes prior x value: a better-scoring offer is never less likely
    row = probs[0]
    score = (world.prior_propensity * world.offer_value)[row > 0]
    assert np.all(np.diff(row[row > 0][np.argsort(score)]) >= -1e-12)


def test_catalog_is_valid_against_the_feature_schema(world: World, tmp_path: Path) -> None:
    features = tmp_path / "customers.csv"
    world.write_features(features)
    table = read_feature_file(features, categorical=CATEGORICAL)
    schema = merged_schema(table, None)
    catalog = parse_catalog(world.catalog_yaml(), schema)
    assert [o.id for o in catalog.offers] == list(world.offer_ids)
    assert {c.type.value for c in catalog.campaigns} == {"ad_hoc", "trigger", "lifecycle"}
    assert catalog.context_keys == frozenset(CONTEXT_KEYS)
    assert catalog.min_expected_value == pytest.approx(0.1)
    text = world.catalog_yaml()
    assert text.count("prior_propensity:") == world.n_offers


def test_small_worlds_work(tmp_path: Path) -> None:
    small = World.create(n_customers=50, n_offers=3, seed=1)
    log = small.simulate_log(500, seed=2)
    assert set(log["offer_id"]) <= set(small.offer_ids)
    small.write_features(tmp_path / "c.csv")
    schema = merged_schema(read_feature_file(tmp_path / "c.csv", categorical=CATEGORICAL), None)
    assert len(parse_catalog(small.catalog_yaml(), schema).offers) == 3


def test_log_round_trips_through_the_dataset_and_the_oracle(world: World, log: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    write_dataset(path, log)
    table = read_dataset(path)
    assert table.num_rows == 20_000
    np.testing.assert_allclose(world.oracle_for_log(table), world.oracle_for_log(log))


def test_cli_writes_the_three_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "w"
    assert main(["--out", str(out), "--customers", "300", "--decisions", "2000", "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    assert "customers.csv (300 customers)" in printed and "acceptance rate" in printed
    assert read_dataset(out / "log.parquet").num_rows == 2000
    assert (out / "catalog.yaml").read_text().startswith("# Synthetic world catalog")
    assert (out / "customers.csv").read_text().splitlines()[0].startswith("customer_id,tier,")
