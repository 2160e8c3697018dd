"""Training and offline evaluation: metrics on hand-made arrays, the training error table, seeded
determinism, the reference rows, and train/serve encoding parity."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pytest

from server.features.schema import FeatureSchema, FeatureSpec
from server.models.inputs import OfferAttributes, build_rows
from training import evaluate as ev
from training.dataset import FIXED_COLUMNS, write_dataset
from training.train import TrainingError, TrainResult, main, train

OFFERS = {  # id: (campaign, value, cost, prior)
    "o_alpha": ("c_adhoc", 10.0, 1.0, 0.10),
    "o_beta": ("c_adhoc", 20.0, 0.0, 0.25),
    "o_gamma": ("c_trigger", 30.0, 3.0, 0.15),
    "o_delta": ("c_life", 5.0, 0.5, 0.30),
}
CATALOG = """
campaigns:
  - {id: c_adhoc, type: ad_hoc, channels: [web, call_centre]}
  - {id: c_trigger, type: trigger, channels: [web], events: [cart]}
  - {id: c_life, type: lifecycle, channels: [web, call_centre]}
offers:
""" + "".join(
    f"  - {{id: {o}, campaign: {c}, title: t, value: {v}, cost: {k}, prior_propensity: {p}}}\n"
    for o, (c, v, k, p) in OFFERS.items()
    if o != "o_delta"  # one logged offer missing from the catalog: NaN attributes
)


def _true_p(cols: dict[str, Any]) -> np.ndarray[Any, np.dtype[np.float64]]:
    offer = np.asarray(cols["offer_id"])
    tier = np.asarray(cols["tier"])
    logit = (
        -1.6
        + 1.2 * np.nan_to_num(np.asarray(cols["engagement"], dtype=np.float64))
        + 0.8 * (tier == "A")
        - 0.6 * (tier == "C")
        + np.where(offer == "o_gamma", 0.02 * np.nan_to_num(np.asarray(cols["ctx_cart_value"], dtype=float)), 0.0)
        - 0.8 * (offer == "o_delta")
        + 0.5 * (np.asarray(cols["channel"]) == "web") * (offer == "o_beta")
    )
    return np.asarray(1.0 / (1.0 + np.exp(-logit)), dtype=np.float64)


def _columns(n: int, seed: int = 3, outcome: int | None = None) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    offers = np.array(sorted(OFFERS))
    cart = rng.exponential(40.0, n)
    cart[rng.random(n) < 0.3] = np.nan
    engagement = rng.normal(size=n)
    engagement[rng.random(n) < 0.02] = np.nan
    cols: dict[str, Any] = {
        "decision_id": [f"d{i}" for i in range(n)],
        "timestamp": 1.7e9 + np.sort(rng.uniform(0, 86400 * 30, n)),
        "customer_id": [f"C{i % 997:05d}" for i in range(n)],
        "channel": np.array(["web", "call_centre"])[rng.integers(0, 2, n)],
        "placement": ["home"] * n,
        "offer_id": offers[rng.integers(0, len(offers), n)],
        "selection_probability": np.full(n, 0.25),
        "value": np.zeros(n),
        "tier": np.array(["A", "B", "C"])[rng.integers(0, 3, n)],
        "engagement": engagement,
        "ctx_cart_value": cart,
    }
    p = _true_p(cols)
    cols["outcome"] = np.full(n, outcome) if outcome is not None else (rng.random(n) < p).astype(np.int64)
    return cols


def _oracle(table: pa.Table) -> np.ndarray[Any, np.dtype[np.float64]]:
    return _true_p({c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names})


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    path.write_text(CATALOG)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "log.parquet"
    write_dataset(path, _columns(6000))
    return path


@pytest.fixture(scope="module")
def trained(dataset: Path, catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train(dataset, tmp_path_factory.mktemp("model"), catalog=catalog, progress=False, oracle=_oracle)


# -- evaluate on hand-made arrays --------------------------------------------------------------
def test_auc_exact_values() -> None:
    assert ev.auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert ev.auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert ev.auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # ties count one half
    assert ev.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert ev.auc([0, 1, 1], [0.3, 0.3, 0.9]) == 0.75  # one tied pair, one won pair
    assert math.isnan(ev.auc([1, 1], [0.2, 0.3]))


def test_auc_matches_pairwise_count() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = rng.integers(0, 20, 300) / 20  # many ties
    pos, neg = p[y == 1], p[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert ev.auc(y, p) == pytest.approx(pairs / (pos.size * neg.size), abs=1e-12)


def test_log_loss_and_brier_exact_values() -> None:
    assert ev.log_loss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert ev.log_loss([1, 0], [1.0, 0.0]) == pytest.approx(0.0, abs=1e-12)
    assert ev.log_loss([1], [0.0]) == pytest.approx(-math.log(1e-15))  # clipped, finite
    assert ev.brier([1, 0], [0.8, 0.4]) == pytest.approx(0.1)
    assert ev.brier([1, 0, 1], [1.0, 0.0, 1.0]) == 0.0


def test_expected_calibration_error_exact_values() -> None:
    # perfectly calibrated bins: 0.25 -> 1 of 4 accepted, 0.75 -> 3 of 4
    y = [1, 0, 0, 0, 1, 1, 1, 0]
    p = [0.25] * 4 + [0.75] * 4
    assert ev.expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-15)
    assert ev.expected_calibration_error([1, 0], [0.9, 0.9]) == pytest.approx(0.4)
    # bins weighted by rows: 2 rows off by 0.4, 2 rows exact -> 0.2
    assert ev.expected_calibration_error([1, 0, 0, 0], [0.9, 0.9, 0.05, 0.05]) == pytest.approx(
        (2 * 0.4 + 2 * 0.05) / 4
    )
    # p == 1.0 falls in the last bin rather than an eleventh
    assert ev.expected_calibration_error([1, 1], [1.0, 0.95]) == pytest.approx(0.025)


def test_lift_by_decile() -> None:
    y = np.array([1] * 8 + [0] * 12)
    p = np.linspace(1.0, 0.05, 20)  # a perfect ranking, best first
    baseline = np.r_[np.full(10, 0.1), np.full(10, 0.3)]  # ranks the second half first; ties keep row order
    lift = ev.lift_by_decile(y, p, baseline)
    assert lift["overall_rate"] == pytest.approx(0.4)
    model = lift["model"]
    assert [r["decile"] for r in model] == [float(d) for d in range(1, 11)]
    assert [r["n"] for r in model] == [2.0] * 10
    assert [r["rate"] for r in model] == [1.0] * 4 + [0.0] * 6
    assert [r["lift"] for r in model] == pytest.approx([2.5] * 4 + [0.0] * 6)
    assert [r["rate"] for r in lift["baseline"]] == [0.0] * 5 + [1.0] * 4 + [0.0]
    assert lift["baseline"][0]["mean_score"] == pytest.approx(0.3)


# -- training ------------------------------------------------------------------------------------
def test_training_beats_the_prior_and_approaches_the_oracle(trained: TrainResult) -> None:
    m = trained.metrics
    assert m["auc"] > m["prior_auc"] + 0.1
    assert m["auc"] > m["oracle_auc"] - 0.03
    assert m["ece"] < 0.05
    assert trained.n_train == 4800 and trained.n_valid == 1200
    assert 0 < trained.best_iteration < 2000


def test_artifacts_written(trained: TrainResult) -> None:
    names = {p.name for p in trained.out.iterdir()}
    assert {"model.txt", "inputs.json", "metrics.json", "reference.json"} <= names
    assert {"calibration.png", "lift.png", "importance.png"} <= names
    saved = json.loads(trained.metrics_path.read_text())
    for key in ("auc", "log_loss", "brier", "ece", "prior_auc", "n_train", "n_valid", "best_iteration"):
        assert saved[key] == trained.metrics[key]
    assert saved["oracle_auc"] == trained.metrics["oracle_auc"]
    assert "oracle_log_loss" in saved
    inputs = json.loads(trained.inputs_path.read_text())
    assert [c["name"] for c in inputs] == [
        "tier",
        "engagement",
        "ctx_cart_value",
        "offer_id",
        "channel",
        "offer_value",
        "offer_cost",
        "offer_prior",
        "campaign_type",
    ]
    assert inputs[0]["levels"] == ["A", "B", "C"]
    assert inputs[3]["levels"] == sorted(OFFERS)


def test_reference_rows_score_identically(trained: TrainResult) -> None:
    ref = json.loads(trained.reference_path.read_text())
    x = np.array([[math.nan if v is None else v for v in row] for row in ref["rows"]], dtype=np.float64)
    assert x.shape == (200, len(trained.spec.columns))
    assert ref["columns"] == trained.spec.names
    booster = lgb.Booster(model_file=str(trained.model_path))
    assert np.array_equal(booster.predict(x), np.array(ref["scores"]))
    assert np.isnan(x).any()  # missing context and features survive the round trip as null


def test_serving_rows_equal_training_rows(trained: TrainResult, dataset: Path, catalog: Path) -> None:
    """`server.models.inputs.build_rows` on a logged row gives the reference matrix's row."""
    from training.dataset import read_dataset

    spec = trained.spec
    schema = FeatureSchema(
        1,
        tuple(
            FeatureSpec(c.name, "categorical" if c.categorical else "numeric", c.levels)
            for c in spec.columns
            if c.source == "feature"
        ),
    )
    table = read_dataset(dataset)
    ts = table.column("timestamp").to_numpy()
    first_valid = np.argsort(ts, kind="stable")[trained.n_train : trained.n_train + 50]
    ref = json.loads(trained.reference_path.read_text())
    for k, i in enumerate(first_valid):
        row = {c: table.column(c)[int(i)].as_py() for c in table.column_names}
        customer = np.array(
            [
                (
                    f.levels.index(row[f.name])
                    if f.kind == "categorical"
                    else (math.nan if row[f.name] is None else row[f.name])
                )
                for f in schema.features
            ],
            dtype=np.float32,
        )
        oid = row["offer_id"]
        camp, value, cost, prior = OFFERS[oid] if oid != "o_delta" else ("", math.nan, math.nan, math.nan)
        ctype = {"c_adhoc": "ad_hoc", "c_trigger": "trigger", "c_life": "lifecycle"}.get(camp, "")
        ctx = {} if row["ctx_cart_value"] is None else {"cart_value": row["ctx_cart_value"]}
        served = build_rows(
            spec,
            schema,
            customer,
            ctx,
            row["channel"],
            OfferAttributes([oid], np.array([value]), np.array([cost]), np.array([prior]), [ctype]),
        )[0]
        expected = np.array([math.nan if v is None else v for v in ref["rows"][k]])
        np.testing.assert_array_equal(served, expected)


def test_training_is_deterministic_under_a_seed(
    trained: TrainResult, dataset: Path, catalog: Path, tmp_path: Path
) -> None:
    again = train(dataset, tmp_path, catalog=catalog, progress=False, oracle=_oracle)
    strip = {"train_seconds"}
    assert {k: v for k, v in again.metrics.items() if k not in strip} == {
        k: v for k, v in trained.metrics.items() if k not in strip
    }
    assert again.model_path.read_text() == trained.model_path.read_text()


def test_live_schema_fixes_categorical_level_order(dataset: Path, tmp_path: Path) -> None:
    live = FeatureSchema(4, (FeatureSpec("tier", "categorical", ("C", "Z", "A")), FeatureSpec("engagement", "numeric")))
    result = train(dataset, tmp_path, progress=False, num_boost_round=5, live_schema=live)
    assert result.spec.columns[0].levels == ("C", "Z", "A", "B")


def test_without_catalog_offer_attributes_are_unknown(dataset: Path, tmp_path: Path) -> None:
    result = train(dataset, tmp_path, progress=False, num_boost_round=30)
    assert result.metrics["prior_auc"] is None
    assert json.loads(result.metrics_path.read_text())["prior_auc"] is None
    assert "oracle_auc" not in result.metrics


def test_small_world_beats_the_prior_and_reports_oracle_metrics(tmp_path: Path) -> None:
    from training.world import World

    world = World.create(n_customers=2000, seed=3)
    write_dataset(tmp_path / "log.parquet", world.simulate_log(15_000))
    (tmp_path / "catalog.yaml").write_text(world.catalog_yaml())
    result = train(
        tmp_path / "log.parquet",
        tmp_path / "model",
        catalog=tmp_path / "catalog.yaml",
        oracle=world.oracle_for_log,
        progress=False,
    )
    m = result.metrics
    assert m["auc"] > m["prior_auc"] + 0.05
    assert m["oracle_auc"] >= m["auc"] - 0.01
    assert m["oracle_log_loss"] < m["log_loss"] + 0.01
    assert m["ece"] < 0.03


def test_main_rebuilds_the_world_for_oracle_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.world import World

    world = World.create(n_customers=1500, seed=5)
    write_dataset(tmp_path / "log.parquet", world.simulate_log(3000))
    argv = ["--data", str(tmp_path / "log.parquet"), "--out", str(tmp_path / "m"), "--quiet", "--rounds", "40"]
    assert main([*argv, "--world-seed", "5", "--world-customers", "1500"]) == 0
    out = capsys.readouterr().out
    assert "oracle    AUC" in out
    assert "oracle_auc" in json.loads((tmp_path / "m" / "metrics.json").read_text())


# -- the error table -------------------------------------------------------------------------------
def _write(tmp_path: Path, cols: dict[str, Any], name: str = "log.csv") -> Path:
    path = tmp_path / name
    write_dataset(path, cols)
    return path


def test_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    cols = _columns(1500)
    del cols["outcome"]
    pa_table = pa.table({k: np.asarray(v) for k, v in cols.items()})
    import pyarrow.csv as pa_csv

    pa_csv.write_csv(pa_table, str(path))
    with pytest.raises(TrainingError) as err:
        train(path, tmp_path / "out", progress=False)
    assert str(err.value) == f"{path}: missing column 'outcome' (required: {', '.join(FIXED_COLUMNS)})"


def test_wrong_type(tmp_path: Path) -> None:
    cols = _columns(1500)
    cols["ctx_cart_value"] = ["lots"] * 1500
    path = _write(tmp_path, cols)
    with pytest.raises(TrainingError, match=r"context column 'ctx_cart_value' must be numeric; line 2 has 'lots'"):
        train(path, tmp_path / "out", progress=False)


def test_single_outcome_class(tmp_path: Path) -> None:
    path = _write(tmp_path, _columns(1500, outcome=0))
    with pytest.raises(TrainingError) as err:
        train(path, tmp_path / "out", progress=False)
    assert str(err.value) == (
        "column 'outcome' has a single class (0 in all 1500 rows); training needs both accepted and not-accepted rows"
    )


def test_too_few_rows(tmp_path: Path) -> None:
    path = _write(tmp_path, _columns(999))
    with pytest.raises(TrainingError) as err:
        train(path, tmp_path / "out", progress=False)
    assert str(err.value) == "dataset has 999 rows; training needs at least 1000"


def test_too_few_validation_rows(tmp_path: Path) -> None:
    path = _write(tmp_path, _columns(1500))
    with pytest.raises(TrainingError) as err:
        train(path, tmp_path / "out", valid_fraction=0.1, progress=False)
    assert str(err.value) == "validation split has 150 rows (0.1 of 1500); it needs at least 200"
    assert not (tmp_path / "out").exists()


def test_main_prints_summary_and_reports_errors(
    dataset: Path, catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--data", str(dataset), "--out", str(tmp_path / "m"), "--catalog", str(catalog), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "model     AUC" in out and "prior     AUC" in out and str(tmp_path / "m") in out
    assert main(["--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x")]) == 2
    assert "no such file" in capsys.readouterr().err
    features = tmp_path / "customers.csv"
    features.write_text("customer_id,tier\nc1,A\n")
    argv = ["--data", str(dataset), "--out", str(tmp_path / "y"), "--features", str(features)]
    assert main([*argv, "--categorical", "region"]) == 2
    assert "error: --features: " in capsys.readouterr().err
    assert main([*argv, "--features", str(tmp_path / "none.csv")]) == 2
    assert "error: --features: " in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
