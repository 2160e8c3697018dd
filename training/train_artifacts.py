"""The artifacts of a trained propensity model, written the same way whoever trained it.

`nbo train` (training/train.py) and `nbo train --dask` (training/train_dask.py) fit the booster
differently and hand the result here: the model truncated to its best iteration, the input spec,
the validation figures (computed from the saved file, the model serving will load), the reference
rows and the plots, then metadata.json (server.models.registry.finalize).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from server.models.inputs import InputSpec
from server.models.registry import finalize
from training import evaluate as ev

FloatArray = npt.NDArray[np.float64]
REFERENCE_ROWS = 200


class TrainingError(Exception):
    """The data cannot train a model; the message says which column or count is at fault."""


@dataclass(frozen=True)
class TrainResult:
    out: Path
    model_path: Path
    inputs_path: Path
    metrics_path: Path
    reference_path: Path
    plots: tuple[Path, ...]
    metrics: dict[str, Any]
    best_iteration: int
    n_train: int
    n_valid: int
    spec: InputSpec = field(repr=False)


@dataclass(frozen=True)
class Validation:
    """What the metrics need of the validation set; `predict` scores all of it with a booster."""

    y: FloatArray
    prior: FloatArray  # the offer_prior input column (NaN: no catalog prior)
    head: FloatArray  # the first REFERENCE_ROWS rows of the input matrix
    predict: Callable[[lgb.Booster], FloatArray]
    oracle: FloatArray | None = None  # true probabilities, for a synthetic world


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    if isinstance(v, np.floating | np.integer):
        return _json_safe(v.item())
    return v


def _write_reference(path: Path, spec: InputSpec, head: FloatArray, scores: FloatArray) -> None:
    rows = [[None if math.isnan(v) else v for v in row] for row in head.tolist()]
    path.write_text(json.dumps({"columns": spec.names, "rows": rows, "scores": scores.tolist()}) + "\n")


def _baselines(m: dict[str, Any], valid: Validation, base_rate: float) -> FloatArray:
    """The catalog prior's figures into `m`; returns the prior with the base rate where it is missing."""
    if np.isfinite(valid.prior).any():
        prior_filled = np.where(np.isnan(valid.prior), base_rate, valid.prior)  # offers without a catalog prior
        m["prior_auc"] = ev.auc(valid.y, prior_filled)
        m["prior_log_loss"] = ev.log_loss(valid.y, prior_filled)
        m["prior_ece"] = ev.expected_calibration_error(valid.y, prior_filled)
    else:
        prior_filled = np.full(valid.y.size, base_rate)
        m["prior_auc"] = None
    return prior_filled


def write_artifacts(
    out: Path,
    booster: lgb.Booster,
    best: int,
    spec: InputSpec,
    valid: Validation,
    *,
    train_labels: FloatArray,
    seed: int,
    params: Mapping[str, Any],
    fit_seconds: float,
    data: Path,
    extra: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Save the booster at iteration `best` and every artifact of the module doc into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "model.txt"
    booster.save_model(str(model_path), num_iteration=best)
    # every figure below comes from the saved file, the model serving will load
    model = lgb.Booster(model_file=str(model_path))
    p_valid = valid.predict(model)
    y_valid = valid.y

    inputs_path = out / "inputs.json"
    inputs_path.write_text(json.dumps(spec.to_json(), indent=1) + "\n")
    reference_path = out / "reference.json"
    _write_reference(reference_path, spec, valid.head, p_valid[:REFERENCE_ROWS])

    base_rate = float(train_labels.mean())
    m: dict[str, Any] = ev.metrics(y_valid, p_valid)
    prior_filled = _baselines(m, valid, base_rate)
    curves: dict[str, FloatArray] = {"model": p_valid}
    if valid.oracle is not None:
        if valid.oracle.shape != y_valid.shape:
            raise TrainingError(f"oracle returned {valid.oracle.size} probabilities for {y_valid.size} rows")
        for k, v in ev.metrics(y_valid, valid.oracle).items():
            m[f"oracle_{k}"] = v
        curves["oracle"] = valid.oracle
    if m["prior_auc"] is not None:
        curves["prior"] = prior_filled
    gain = np.asarray(model.feature_importance(importance_type="gain"), dtype=np.float64)
    lift = ev.lift_by_decile(y_valid, p_valid, prior_filled)
    m.update(
        {
            "n_train": int(train_labels.size),
            "n_valid": int(y_valid.size),
            "best_iteration": best,
            "base_rate_train": base_rate,
            "base_rate_valid": float(y_valid.mean()),
            "mean_p_valid": float(p_valid.mean()),
            "seed": seed,
            "train_seconds": round(fit_seconds, 3),
            "params": dict(params),
            **(extra or {}),
            "feature_importance_gain": {
                spec.names[i]: float(gain[i]) for i in np.argsort(-gain, kind="stable") if gain[i] > 0
            },
            "lift": lift,
            "calibration": ev.calibration_bins(y_valid, p_valid),
        }
    )
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(_json_safe(m), indent=1) + "\n")

    plots = (
        ev.plot_calibration(y_valid, curves, out / "calibration.png"),
        ev.plot_lift(lift, out / "lift.png"),
        ev.plot_importance(spec.names, gain, out / "importance.png"),
    )
    # metadata.json (version, hashes, library versions, checksum) makes the directory an artifact
    headline = ("auc", "log_loss", "brier", "ece", "prior_auc", "oracle_auc", "n_train", "n_valid", "best_iteration")
    finalize(out, data_path=data, metrics={k: m[k] for k in headline if k in m})
    return TrainResult(
        out=out,
        model_path=model_path,
        inputs_path=inputs_path,
        metrics_path=metrics_path,
        reference_path=reference_path,
        plots=plots,
        metrics=m,
        best_iteration=best,
        n_train=int(train_labels.size),
        n_valid=int(y_valid.size),
        spec=spec,
    )
