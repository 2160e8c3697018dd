"""`nbo train --dask`: lightgbm.dask on a LocalCluster (2 workers, in this process) trains from a
partitioned export the model single-machine training makes from the same rows: the same input
spec and split, a model that publishes (checksum, reference scores) and an AUC on held-out data
within 0.01 of the single-machine model's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from server.models.registry import booster_predict, read_artifact, verify_scores
from training import evaluate as ev
from training.dataset import read_dataset, write_dataset
from training.dataset_writer import PartitionedWriter
from training.train import TrainingError, encode, load_catalog, train
from training.train_dask import best_iteration, connect, train_dask
from training.world import World

ROUNDS = 300


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("dask")
    world = World.create(n_customers=3000, seed=3)
    (tmp / "catalog.yaml").write_text(world.catalog_yaml())
    log = world.simulate_log(20_000, seed=11, days=10)
    write_dataset(tmp / "log.parquet", log)
    writer = PartitionedWriter(tmp / "parts")
    for rows in np.array_split(np.arange(20_000), 5):  # as nbo export writes: chunks into days
        writer.write({k: np.asarray(v)[rows] for k, v in log.items()})
    writer.commit()
    # held out: later decisions of the same world, seen by neither model
    later = world.simulate_log(6000, seed=12, start_ts=float(log["timestamp"][-1]) + 1, days=3)
    write_dataset(tmp / "holdout.parquet", later)
    return tmp


def test_dask_training_matches_single_machine_training(data: Path, tmp_path: Path) -> None:
    catalog = data / "catalog.yaml"
    single = train(data / "log.parquet", tmp_path / "single", catalog=catalog, num_boost_round=ROUNDS, progress=False)
    with connect("local", 2, processes=False) as client:
        dist = train_dask(data / "parts", tmp_path / "dask", client, catalog=catalog, num_boost_round=ROUNDS)
    assert dist.spec == single.spec  # one feature preparation: the same inputs, levels and order
    assert (dist.n_train, dist.n_valid) == (single.n_train, single.n_valid) == (16_000, 4000)
    assert dist.metrics["dask_workers"] == 2 and dist.metrics["rounds_fitted"] == ROUNDS
    assert 0 < dist.best_iteration < ROUNDS  # truncated where early stopping would have stopped
    assert dist.metrics["seed"] == single.metrics["seed"] == 7

    # both publish the same way: checksummed, and the saved model scores its reference rows as recorded
    artifact = read_artifact(dist.out)
    verify_scores(artifact, booster_predict(artifact.model_text))
    meta = json.loads((dist.out / "metadata.json").read_text())
    assert meta["training_data_sha256"] and meta["metrics"]["best_iteration"] == dist.best_iteration

    holdout = read_dataset(data / "holdout.parquet")
    offers = load_catalog(catalog)
    x = encode(holdout, single.spec, offers)
    y = holdout.column("outcome").to_numpy().astype(float)
    auc = {r.out.name: ev.auc(y, _predict(r.out, x)) for r in (single, dist)}
    assert auc["single"] > 0.7
    print(f"held-out AUC: {auc}")
    assert abs(auc["dask"] - auc["single"]) <= 0.01, auc


def _predict(out: Path, x: np.ndarray) -> np.ndarray:
    return np.asarray(booster_predict((out / "model.txt").read_text())(x), dtype=float)


def test_the_early_stopping_rule() -> None:
    # lgb.early_stopping(2): stops once 2 rounds pass without a new minimum, keeps the minimum
    assert best_iteration([5.0, 4.0, 3.0, 3.5, 3.2, 1.0], 2) == 3
    assert best_iteration([5.0, 4.0, 3.0, 3.5, 2.9, 1.0], 2) == 6
    assert best_iteration([5.0, 4.0, 3.0], 50) == 3


def test_dask_reads_parquet_only(data: Path, tmp_path: Path) -> None:
    write_dataset(tmp_path / "log.csv", World.create(100, seed=1).simulate_log(10))
    with connect("local", 1, processes=False) as client, pytest.raises(TrainingError, match="--dask reads Parquet"):
        train_dask(tmp_path / "log.csv", tmp_path / "m", client)


def test_the_command(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from server.cli.main import main

    argv = ["train", "--data", str(data / "parts"), "--out", str(tmp_path / "m"), "--rounds", "30"]
    argv += ["--catalog", str(data / "catalog.yaml"), "--dask", "local", "--dask-workers", "1"]
    assert main([*argv, "--world-seed", "3"]) == 2
    assert capsys.readouterr().err == "error: --world-seed (oracle metrics) is not available with --dask\n"
    assert main(argv) == 0
    assert "AUC" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert (metrics["dask_workers"], metrics["rounds_fitted"], metrics["n_train"]) == (1, 30, 16_000)
