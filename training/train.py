"""Train the propensity model from logged interactions.

The model is a LightGBM binary classifier over the columns of `server.models.inputs.InputSpec`:
customer features, request context, the offer, the channel and the offer's catalog attributes.
The training matrix is encoded exactly as serving encodes it (categoricals as the code of their
level in the spec, NaN = unknown; customer features rounded through float32 like the feature
store's vectors), so a published model scores a request as it scored the same row offline.

The last `valid_fraction` of rows by timestamp are the validation set: early stopping watches its
log loss, and every reported metric is computed on it. `train` writes into `out/`:

* `model.txt`       the booster, truncated to the best iteration;
* `inputs.json`     the `InputSpec` (column order, sources, categorical levels);
* `metrics.json`    see `training.evaluate` — model, prior-baseline and (when known) oracle figures;
* `reference.json`  the first validation rows' input matrix and the model's probabilities for them,
                    to check that a published model still scores identically;
* `calibration.png`, `lift.png`, `importance.png`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from server.domain import CampaignType, Channel
from server.features.schema import FeatureSchema, FeatureSpec
from server.models.inputs import CONTEXT_PREFIX, InputSpec, spec_for
from training.dataset import FIXED_COLUMNS, META_COLUMNS, DatasetError, read_dataset
from training.train_artifacts import REFERENCE_ROWS, Validation, write_artifacts

# the training API's error and result, defined beside the artifacts both training paths write
from training.train_artifacts import TrainingError as TrainingError  # noqa: PLC0414 (a re-export)
from training.train_artifacts import TrainResult as TrainResult  # noqa: PLC0414 (a re-export)

FloatArray = npt.NDArray[np.float64]
Oracle = Callable[[pa.Table], npt.NDArray[np.floating[Any]]]

MIN_ROWS = 1000
MIN_VALID_ROWS = 200
LOG_EVERY = 100
# fixed columns the model needs; the others (ids, placement, logging propensity, value) are not inputs
REQUIRED = ("timestamp", "offer_id", "channel", "outcome")


@dataclass(frozen=True)
class OfferTable:
    """Catalog attributes per offer id; ids missing from the catalog get NaN / no type."""

    value: dict[str, float]
    cost: dict[str, float]
    prior: dict[str, float]
    campaign_type: dict[str, str]

    @classmethod
    def empty(cls) -> OfferTable:
        return cls({}, {}, {}, {})


def default_params(seed: int = 7) -> dict[str, Any]:
    return {
        "objective": "binary",
        "metric": ["binary_logloss", "auc"],
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 50,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "cat_smooth": 10.0,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 2,
        "verbosity": -1,
    }


# -- reading and checking ----------------------------------------------------------------------
def load_catalog(path: Path) -> OfferTable:
    """Offer value, cost, prior propensity and campaign type from a catalog YAML file."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise TrainingError(f"cannot read catalog {path}: {e}") from e
    if not isinstance(doc, dict):
        raise TrainingError(f"catalog {path} is not a mapping")
    types = {
        str(c["id"]): str(c["type"])
        for c in doc.get("campaigns") or []
        if isinstance(c, dict) and "id" in c and "type" in c
    }
    table = OfferTable.empty()
    for i, o in enumerate(doc.get("offers") or []):
        if not isinstance(o, dict) or "id" not in o:
            raise TrainingError(f"catalog {path}: offers[{i}] has no id")
        oid = str(o["id"])
        try:
            table.value[oid] = float(o.get("value", math.nan))
            table.cost[oid] = float(o.get("cost", 0.0))
            table.prior[oid] = float(o.get("prior_propensity", math.nan))
        except (TypeError, ValueError) as e:
            raise TrainingError(f"catalog {path}: offer {oid!r} has a non-numeric attribute: {e}") from e
        camp = types.get(str(o.get("campaign")))
        if camp is not None:
            table.campaign_type[oid] = camp
    return table


def _string_column(table: pa.Table, name: str) -> pa.ChunkedArray:
    col = table.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise TrainingError(f"column {name!r} must be text, not {col.type}")
    return col


def _is_numeric(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t))


def _numeric(table: pa.Table, name: str) -> FloatArray:
    col = table.column(name)
    if pa.types.is_timestamp(col.type):
        col = pc.divide(col.cast(pa.timestamp("us")).cast(pa.int64()), 1_000_000)
    elif not _is_numeric(col.type):
        raise TrainingError(f"column {name!r} must be numeric, not {col.type}")
    out: FloatArray = np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    return out


def check_columns(table: pa.Table) -> None:
    """The columns training needs, typed and filled (a whole dataset or one partition of it)."""
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise TrainingError(f"dataset is missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    for name in ("offer_id", "channel"):
        _string_column(table, name)
    ts = _numeric(table, "timestamp")
    if np.isnan(ts).any():
        raise TrainingError(f"column 'timestamp' has {int(np.isnan(ts).sum())} empty values")
    y = _numeric(table, "outcome")
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        raise TrainingError(f"column 'outcome' must be 0 or 1; {int(bad.sum())} rows are not (e.g. {y[bad][0]})")


def check_labels(y: FloatArray) -> None:
    """Enough rows, and both classes, in the whole dataset's labels."""
    if y.size < MIN_ROWS:
        raise TrainingError(f"dataset has {y.size} rows; training needs at least {MIN_ROWS}")
    positives = int(y.sum())
    if positives in (0, y.size):
        raise TrainingError(
            f"column 'outcome' has a single class ({int(y[0])} in all {y.size} rows); "
            "training needs both accepted and not-accepted rows"
        )


# -- the input spec and the matrix -------------------------------------------------------------
def _levels(col: pa.ChunkedArray) -> tuple[str, ...]:
    return tuple(sorted(v for v in pc.unique(col).to_pylist() if v))


def build_spec(table: pa.Table, offers: OfferTable, live_schema: FeatureSchema | None = None) -> InputSpec:
    """The model's input spec for this dataset: every non-fixed column is a feature or context.

    Categorical levels are the sorted values in the data; with `live_schema` (the serving feature
    schema) a feature's levels are the live ones, in their order, then unseen values sorted, so
    the model's levels are a prefix of the live schema's as model publishing requires.
    """
    return spec_from(table.schema, lambda name: _levels(_string_column(table, name)), offers, live_schema)


def spec_from(
    schema: pa.Schema,
    levels_of: Callable[[str], tuple[str, ...]],
    offers: OfferTable,
    live_schema: FeatureSchema | None = None,
) -> InputSpec:
    """`build_spec` from the dataset's column types and each text column's sorted non-empty values
    (`levels_of(name)`), however they were found: one table, or a distributed dataset's partitions."""
    fixed = {*FIXED_COLUMNS, *META_COLUMNS}
    features: list[FeatureSpec] = []
    context: list[str] = []
    for name in schema.names:
        if name in fixed:
            continue
        t = schema.field(name).type
        if name.startswith(CONTEXT_PREFIX):
            if not _is_numeric(t):
                raise TrainingError(f"context column {name!r} must be numeric, not {t}")
            context.append(name[len(CONTEXT_PREFIX) :])
        elif _is_numeric(t):
            features.append(FeatureSpec(name, "numeric"))
        elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
            levels = levels_of(name)
            live = live_schema.spec(name) if live_schema is not None else None
            if live is not None and live.kind == "categorical":
                levels = live.levels + tuple(v for v in levels if v not in set(live.levels))
            features.append(FeatureSpec(name, "categorical", levels))
        else:
            raise TrainingError(f"feature column {name!r} has unsupported type {t} (use numbers or text)")
    known_channels = [c.value for c in Channel]
    channels = known_channels + [c for c in levels_of("channel") if c not in known_channels]
    known_types = [t.value for t in CampaignType]
    types = known_types + sorted({t for t in offers.campaign_type.values() if t not in known_types})
    return spec_for(
        FeatureSchema(0, tuple(features)),
        context,
        levels_of("offer_id"),
        channels,
        types,
    )


def _codes(levels: Sequence[str], col: pa.ChunkedArray) -> FloatArray:
    """Level index of each value (NaN for null or unknown), as serving's `model_inputs._codes`."""
    idx = pc.index_in(col, value_set=pa.array(list(levels), type=pa.string()))
    out: FloatArray = np.asarray(idx.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    return out


def encode(table: pa.Table, spec: InputSpec, offers: OfferTable) -> FloatArray:
    """The float64 model matrix of `table`'s rows, columns as `spec.columns`."""
    n = table.num_rows
    x = np.empty((n, len(spec.columns)), dtype=np.float64)
    offer_levels = spec.offer_levels()
    offer_code = _codes(offer_levels, _string_column(table, "offer_id"))
    known = ~np.isnan(offer_code)
    safe_code = np.where(known, offer_code, 0).astype(np.intp)

    def per_offer(values: Sequence[float]) -> FloatArray:
        arr = np.asarray(values, dtype=np.float64)
        return np.where(known, arr[safe_code] if arr.size else np.nan, np.nan)

    for j, col in enumerate(spec.columns):
        if col.source == "feature":
            if col.categorical:
                x[:, j] = _codes(col.levels, _string_column(table, col.name))
            else:
                # the feature store keeps float32 vectors; round the same way
                x[:, j] = _numeric(table, col.name).astype(np.float32).astype(np.float64)
        elif col.source == "context":
            x[:, j] = _numeric(table, col.name)
        elif col.source == "offer_id":
            x[:, j] = offer_code
        elif col.source == "channel":
            x[:, j] = _codes(col.levels, _string_column(table, "channel"))
        elif col.source == "offer_value":
            x[:, j] = per_offer([offers.value.get(o, math.nan) for o in offer_levels])
        elif col.source == "offer_cost":
            x[:, j] = per_offer([offers.cost.get(o, math.nan) for o in offer_levels])
        elif col.source == "offer_prior":
            x[:, j] = per_offer([offers.prior.get(o, math.nan) for o in offer_levels])
        else:
            type_index = {t: i for i, t in enumerate(col.levels)}
            codes = [float(type_index.get(offers.campaign_type.get(o, ""), math.nan)) for o in offer_levels]
            x[:, j] = per_offer(codes)
    return x


# -- training ----------------------------------------------------------------------------------
def _progress_callback(every: int) -> Callable[[Any], None]:
    started = time.perf_counter()

    def callback(env: Any) -> None:
        it = env.iteration + 1
        if it % every and it != env.end_iteration:
            return
        parts = [f"{data}:{name}={value:.5f}" for data, name, value, *_ in env.evaluation_result_list]
        print(f"[{it:5d}] {'  '.join(parts)}  ({time.perf_counter() - started:.1f}s)", file=sys.stderr, flush=True)

    callback.order = 10  # type: ignore[attr-defined]
    return callback


def split(ts: FloatArray, y: FloatArray, valid_fraction: float) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Row indices of the training and validation sets: the last `valid_fraction` of rows by
    timestamp validate (ties in row order); each split needs both classes."""
    if not 0.0 < valid_fraction < 1.0:
        raise TrainingError(f"valid_fraction must be between 0 and 1, not {valid_fraction}")
    n = ts.size
    n_valid = int(n * valid_fraction)
    if n_valid < MIN_VALID_ROWS:
        raise TrainingError(
            f"validation split has {n_valid} rows ({valid_fraction:g} of {n}); it needs at least {MIN_VALID_ROWS}"
        )
    order = np.argsort(ts, kind="stable")
    train_idx, valid_idx = order[: n - n_valid], order[n - n_valid :]
    for part, idx in (("training", train_idx), ("validation", valid_idx)):
        if y[idx].min() == y[idx].max():
            raise TrainingError(
                f"the {part} split has a single outcome class ({int(y[idx][0])} in all {idx.size} rows); "
                "both splits need accepted and not-accepted rows"
            )
    return train_idx, valid_idx


def train(
    data: Path,
    out: Path,
    *,
    catalog: Path | None = None,
    seed: int = 7,
    valid_fraction: float = 0.2,
    num_boost_round: int = 2000,
    early_stopping: int = 50,
    progress: bool = True,
    oracle: Oracle | None = None,
    params: Mapping[str, Any] | None = None,
    live_schema: FeatureSchema | None = None,
) -> TrainResult:
    """Train on the dataset at `data` and write the artifacts into `out` (see the module doc).

    `oracle` gives the true probabilities of dataset rows (synthetic worlds): reported as
    `oracle_*` metrics. `params` override LightGBM parameters. `live_schema` fixes the order of
    categorical feature levels (see `build_spec`).
    """
    started = time.perf_counter()
    if not 0.0 < valid_fraction < 1.0:
        raise TrainingError(f"valid_fraction must be between 0 and 1, not {valid_fraction}")
    try:
        table = read_dataset(Path(data))
    except DatasetError as e:
        raise TrainingError(str(e)) from e
    check_columns(table)
    y_all = _numeric(table, "outcome")
    check_labels(y_all)
    offers = load_catalog(Path(catalog)) if catalog is not None else OfferTable.empty()
    train_idx, valid_idx = split(_numeric(table, "timestamp"), y_all, valid_fraction)
    y_train, y_valid = y_all[train_idx], y_all[valid_idx]

    spec = build_spec(table, offers, live_schema)
    x = encode(table, spec, offers)
    x_train, x_valid = x[train_idx], x[valid_idx]

    p: dict[str, Any] = {**default_params(seed), **(params or {})}
    d_train = lgb.Dataset(
        x_train,
        label=y_train,
        feature_name=spec.names,
        categorical_feature=spec.categorical_indices,
        free_raw_data=False,
        params={"verbosity": -1},
    )
    d_valid = lgb.Dataset(x_valid, label=y_valid, reference=d_train)
    callbacks: list[Callable[[Any], None]] = [lgb.early_stopping(early_stopping, first_metric_only=True, verbose=False)]
    if progress:
        callbacks.append(_progress_callback(LOG_EVERY))
    booster = lgb.train(
        p,
        d_train,
        num_boost_round=num_boost_round,
        valid_sets=[d_valid],
        valid_names=["valid"],
        callbacks=callbacks,
    )
    best = int(booster.best_iteration) or booster.current_iteration()
    p_oracle = None
    if oracle is not None:
        p_oracle = np.asarray(oracle(table.take(pa.array(valid_idx))), dtype=np.float64).ravel()
    validation = Validation(
        y=y_valid,
        prior=x_valid[:, spec.names.index("offer_prior")],
        head=x_valid[:REFERENCE_ROWS],
        predict=lambda model: np.asarray(model.predict(x_valid), dtype=np.float64),
        oracle=p_oracle,
    )
    return write_artifacts(
        Path(out),
        booster,
        best,
        spec,
        validation,
        train_labels=y_train,
        seed=seed,
        params=p,
        fit_seconds=time.perf_counter() - started,
        data=Path(data),
    )


# -- command line ------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def summary(result: TrainResult) -> str:
    m = result.metrics
    lines = [
        f"model     AUC {_fmt(m['auc'])}  log loss {_fmt(m['log_loss'])}  "
        f"Brier {_fmt(m['brier'])}  ECE {_fmt(m['ece'])}",
        f"prior     AUC {_fmt(m.get('prior_auc'))}  (catalog prior_propensity as the score)",
    ]
    if "oracle_auc" in m:
        lines.append(
            f"oracle    AUC {_fmt(m['oracle_auc'])}  log loss {_fmt(m['oracle_log_loss'])}  "
            f"(true probabilities; model AUC gap {m['oracle_auc'] - m['auc']:+.4f})"
        )
    lines += [
        f"rows      {result.n_train} train, {result.n_valid} validation (last by timestamp)",
        f"best iteration {result.best_iteration}, {m['train_seconds']:.1f}s",
        f"artifacts {result.out}",
    ]
    return "\n".join(lines)


def _world_oracle(seed: int, customers: int | None) -> Oracle:
    from training.world import World

    kwargs: dict[str, Any] = {"seed": seed}
    if customers is not None:
        kwargs["n_customers"] = customers
    world = World.create(**kwargs)
    oracle: Oracle = world.oracle_for_log
    return oracle


# -- command line (`nbo train`, registered in server/cli/train.py) ------------------------------
DESCRIPTION = "Train the propensity model from logged interactions."


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--data", type=Path, required=True, help="dataset file (CSV or Parquet) or partitioned directory (Parquet)"
    )
    ap.add_argument("--out", type=Path, required=True, help="directory for the model artifacts")
    ap.add_argument("--catalog", type=Path, help="catalog YAML for offer value, cost, prior and campaign type")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--valid-fraction", type=float, default=0.2)
    ap.add_argument("--rounds", type=int, default=2000, help="maximum boosting rounds")
    ap.add_argument("--world-seed", type=int, help="the synthetic world that made --data: report oracle metrics")
    ap.add_argument("--world-customers", type=int, help="customers of that world (its default if omitted)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    ap.add_argument(
        "--features",
        type=Path,
        help="the customer features file loaded into the servers: its categorical levels order the model's",
    )
    ap.add_argument("--categorical", default="", help="with --features: comma-separated categorical columns")
    ap.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="train through lightgbm.dask on the Dask scheduler at ADDRESS (tcp://host:8786), or 'local' for a "
        "LocalCluster started here; --data is then Parquet, best a partitioned export (nbo export --partitioned)",
    )
    ap.add_argument("--dask-workers", type=int, default=2, help="workers of --dask local (default 2)")


def live_schema(args: argparse.Namespace) -> FeatureSchema | None:
    """The serving feature schema `--features` names (its categorical levels order the model's)."""
    if args.features is None:
        return None
    from server.features.file import merged_schema, read_feature_file

    names = [n for n in args.categorical.split(",") if n]
    try:
        return merged_schema(read_feature_file(args.features, names), None)
    except (OSError, ValueError) as e:
        raise TrainingError(f"--features: {e}") from e


def run(args: argparse.Namespace) -> int:
    oracle = _world_oracle(args.world_seed, args.world_customers) if args.world_seed is not None else None
    try:
        live = live_schema(args)
        result = train(
            args.data,
            args.out,
            catalog=args.catalog,
            seed=args.seed,
            valid_fraction=args.valid_fraction,
            num_boost_round=args.rounds,
            progress=not args.quiet,
            oracle=oracle,
            live_schema=live,
        )
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nbo train", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
