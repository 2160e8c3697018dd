"""`nbo train --dask`: the propensity model trained by LightGBM across a Dask cluster.

The same model as `nbo train` (training/train.py) from data that need not fit one machine: a
partitioned export (`nbo export --partitioned`, docs/dataset.md) read with dask.dataframe, one
task per Parquet row group (the export writes at most CHUNK_ROWS rows of one day in one).
Everything that decides what the model learns is the single-machine code, called per partition:
the dataset checks (`read_dataset`'s and training's), the input spec (`spec_from`, with each text
column's levels gathered from all partitions), the encoding
(`encode`), the time split (`split`), the parameters (`default_params`) and the seed. The
booster is fitted by `lightgbm.dask.DaskLGBMClassifier` (data-parallel: each worker builds
histograms of its partitions) and written by the same `write_artifacts`, so the directory is
published exactly as today's model is (`nbo model publish`).

Two differences, both because lightgbm.dask has no early stopping across workers:

* all `rounds` boosting rounds are fitted; the model is then truncated where early stopping
  would have stopped: the validation log loss of every iteration is summed per partition, and
  the same rule as `lgb.early_stopping` (no improvement for `early_stopping` rounds) picks the
  best iteration. Use a smaller `--rounds` than the single-machine default when that is enough.
* the client holds, per row, the timestamp and label (to split exactly as the single-machine
  path, ties in row order) and, per validation row, the label, probability and catalog prior
  (for the metrics): 16 bytes a row and 24 a validation row, never the features.

Dask is imported here only: the server never imports `training` (import-linter layers).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import dask.dataframe as dd
import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dask.delayed import Delayed, delayed
from distributed import Client, LocalCluster
from scipy.special import expit

from server.features.schema import FeatureSchema
from server.models.inputs import InputSpec
from training.dataset import DatasetError, check_table, partition_files
from training.train import (
    OfferTable,
    TrainingError,
    TrainResult,
    check_columns,
    check_labels,
    default_params,
    encode,
    live_schema,
    load_catalog,
    spec_from,
    split,
    summary,
)
from training.train_artifacts import REFERENCE_ROWS, Validation, write_artifacts

FloatArray = npt.NDArray[np.float64]
LOCAL = "local"


@contextmanager
def connect(address: str, workers: int, *, processes: bool = True) -> Iterator[Client]:
    """A client of the scheduler at `address`, or of a LocalCluster of `workers` workers ("local")."""
    if address != LOCAL:
        with Client(address) as client:
            yield client
        return
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=processes, dashboard_address=None, silence_logs=40
    )
    with cluster, Client(cluster) as client:
        yield client


def _files(data: Path) -> list[str]:
    files = partition_files(data) if data.is_dir() else [data]
    if not files:
        raise TrainingError(f"{data}: no Parquet file in the directory")
    if files[0].suffix.lower() not in (".parquet", ".pq"):
        raise TrainingError(f"{data}: --dask reads Parquet (nbo export --partitioned), not {files[0].suffix}")
    return [str(f) for f in files]


def _table(part: pd.DataFrame, where: str) -> pa.Table:
    """One partition with read_dataset's checks and canonical types, and training's column checks."""
    table = pa.Table.from_pandas(part, preserve_index=False)
    try:
        table = check_table(table, Path(where))
    except DatasetError as e:
        raise TrainingError(str(e)) from e
    check_columns(table)
    return table


def _summary(
    part: pd.DataFrame, where: str, text: Sequence[str]
) -> tuple[FloatArray, FloatArray, list[set[str]], pa.Schema]:
    """Timestamps, labels, each text column's values and the canonical column types of one partition."""
    table = _table(part, where)
    values = [{v for v in pc.unique(table.column(n)).to_pylist() if v} for n in text]
    ts = np.asarray(table.column("timestamp").to_numpy(), dtype=np.float64)
    y = np.asarray(table.column("outcome").to_numpy(), dtype=np.float64)
    return ts, y, values, table.schema


def _encoded(part: pd.DataFrame, where: str, spec: InputSpec, offers: OfferTable) -> FloatArray:
    return encode(_table(part, where), spec, offers)


def _rows(x: FloatArray, mask: npt.NDArray[np.bool_]) -> FloatArray:
    return x[mask]


def _logloss_sums(model: str, x: FloatArray, y: FloatArray, rounds: int) -> FloatArray:
    """Summed validation log loss after each of `rounds` iterations, on one partition's rows."""
    booster = lgb.Booster(model_str=model)
    raw = np.zeros(y.size)
    out = np.empty(rounds)
    for i in range(rounds):
        raw += booster.predict(x, raw_score=True, start_iteration=i, num_iteration=1)
        p = np.clip(expit(raw), 1e-15, 1 - 1e-15)  # LightGBM's binary_logloss clips the same way
        out[i] = -float(np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return out


def best_iteration(losses: Sequence[float], patience: int) -> int:
    """The iteration (1-based) `lgb.early_stopping(patience)` keeps for this validation loss curve."""
    best, best_i = float("inf"), 0
    for i, loss in enumerate(losses):
        if loss < best:
            best, best_i = loss, i
        elif i - best_i >= patience:
            break
    return best_i + 1


def _predict(model: lgb.Booster, x: FloatArray) -> FloatArray:
    return np.asarray(model.predict(x), dtype=np.float64)


def _array(pieces: Sequence[Delayed], sizes: Sequence[int], width: int) -> da.Array:
    """The row-stacked dask array of the non-empty delayed blocks."""
    blocks = [da.from_delayed(p, shape=(n, width), dtype=np.float64) for p, n in zip(pieces, sizes, strict=True) if n]
    return da.concatenate(blocks)


def _gather(pieces: Sequence[Delayed]) -> FloatArray:
    return np.concatenate([np.asarray(a, dtype=np.float64) for a in dask.compute(*pieces)])


def _column(x: FloatArray, j: int) -> FloatArray:
    return x[:, j]


def _text_columns(schema: pa.Schema) -> list[str]:
    """The columns whose values become levels: offer, channel and the text (categorical) features."""
    text = [
        n
        for n in schema.names
        if pa.types.is_string(schema.field(n).type)
        or pa.types.is_large_string(schema.field(n).type)
        or pa.types.is_dictionary(schema.field(n).type)
    ]
    return [n for n in text if n not in ("decision_id", "customer_id", "placement", "unavailable")]


@dataclass(frozen=True)
class _Prepared:
    """The encoded training and validation rows, on the workers, and their labels, here."""

    spec: InputSpec
    x_train: da.Array
    x_valid: da.Array
    y_train: FloatArray
    y_valid: FloatArray
    partitions: int


def _prepare(
    data: Path, client: Client, offers: OfferTable, valid_fraction: float, live_schema: FeatureSchema | None
) -> _Prepared:
    files = _files(data)
    schema = pq.read_schema(files[0])
    text = _text_columns(schema)
    # one task per row group: the export bounds those (CHUNK_ROWS), so a task's memory is bounded too
    parts = dd.read_parquet(files, columns=schema.names, split_row_groups=True).to_delayed()
    where = str(data)
    summaries = dask.compute(*[delayed(_summary)(p, where, text) for p in parts])
    y = np.concatenate([s[1] for s in summaries])
    check_labels(y)
    _, valid_idx = split(np.concatenate([s[0] for s in summaries]), y, valid_fraction)
    is_valid = np.zeros(y.size, dtype=bool)
    is_valid[valid_idx] = True
    levels = {n: tuple(sorted(set().union(*(s[2][k] for s in summaries)))) for k, n in enumerate(text)}
    # the types read_dataset gives (a column missing everywhere in the file reads as numeric)
    spec = spec_from(summaries[0][3], lambda name: levels[name], offers, live_schema)
    # each partition read and encoded once, its rows kept on the workers for the fit and the validation
    masks = np.split(is_valid, np.cumsum([len(s[1]) for s in summaries])[:-1])
    encoded = [delayed(_encoded)(p, where, spec, offers) for p in parts]
    width = len(spec.columns)
    x_train = _array(
        [delayed(_rows)(e, ~m) for e, m in zip(encoded, masks, strict=True)], [int((~m).sum()) for m in masks], width
    )
    x_valid = _array(
        [delayed(_rows)(e, m) for e, m in zip(encoded, masks, strict=True)], [int(m.sum()) for m in masks], width
    )
    x_train, x_valid = client.persist([x_train, x_valid])
    return _Prepared(spec, x_train, x_valid, y[~is_valid], y[is_valid], len(parts))


def _best(
    booster: lgb.Booster, blocks: Sequence[Delayed], y_valid: FloatArray, chunks: Sequence[int], patience: int
) -> int:
    """The iteration early stopping would have kept, judged on the whole validation set."""
    y_blocks = np.split(y_valid, np.cumsum(chunks)[:-1])
    text, rounds = booster.model_to_string(), booster.current_iteration()
    sums = dask.compute(*[delayed(_logloss_sums)(text, b, yb, rounds) for b, yb in zip(blocks, y_blocks, strict=True)])
    return best_iteration(np.sum(sums, axis=0) / y_valid.size, patience)


def train_dask(
    data: Path,
    out: Path,
    client: Client,
    *,
    catalog: Path | None = None,
    seed: int = 7,
    valid_fraction: float = 0.2,
    num_boost_round: int = 2000,
    early_stopping: int = 50,
    params: Mapping[str, Any] | None = None,
    live_schema: FeatureSchema | None = None,
) -> TrainResult:
    """Train on the partitioned dataset at `data` through `client`'s cluster (module doc)."""
    started = time.perf_counter()
    offers = load_catalog(Path(catalog)) if catalog is not None else OfferTable.empty()
    prep = _prepare(Path(data), client, offers, valid_fraction, live_schema)
    p: dict[str, Any] = {**default_params(seed), **(params or {})}
    # each worker uses its own threads (lightgbm.dask ignores, and warns about, a thread count)
    p.pop("num_threads", None)
    model = lgb.DaskLGBMClassifier(client=client, n_estimators=num_boost_round, **p)
    y_train = da.from_array(prep.y_train, chunks=(prep.x_train.chunks[0],))
    model.fit(prep.x_train, y_train, feature_name=prep.spec.names, categorical_feature=prep.spec.categorical_indices)
    booster: lgb.Booster = model.booster_
    blocks = list(prep.x_valid.to_delayed().ravel())
    best = _best(booster, blocks, prep.y_valid, prep.x_valid.chunks[0], early_stopping)
    validation = Validation(
        y=prep.y_valid,
        prior=_gather([delayed(_column)(b, prep.spec.names.index("offer_prior")) for b in blocks]),
        head=np.asarray(prep.x_valid[:REFERENCE_ROWS].compute(), dtype=np.float64),
        predict=lambda saved: _gather([delayed(_predict)(saved, b) for b in blocks]),
    )
    workers = len(client.scheduler_info()["workers"])
    return write_artifacts(
        Path(out),
        booster,
        best,
        prep.spec,
        validation,
        train_labels=prep.y_train,
        seed=seed,
        params=p,
        fit_seconds=time.perf_counter() - started,
        data=Path(data),
        extra={
            "dask_workers": workers,
            "dask_partitions": prep.partitions,
            "rounds_fitted": booster.current_iteration(),
        },
    )


# -- command line (`nbo train --dask`, dispatched by server/cli/train.py) -----------------------
def run(args: argparse.Namespace) -> int:
    if args.world_seed is not None:
        print("error: --world-seed (oracle metrics) is not available with --dask", file=sys.stderr)
        return 2
    try:
        live = live_schema(args)
        with connect(args.dask, args.dask_workers) as client:
            result = train_dask(
                args.data,
                args.out,
                client,
                catalog=args.catalog,
                seed=args.seed,
                valid_fraction=args.valid_fraction,
                num_boost_round=args.rounds,
                live_schema=live,
            )
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(result))
    return 0
