"""Small trained LightGBM artifacts for tests, built directly (no synthetic world needed)."""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm
import numpy as np

from server.features.schema import FeatureSchema
from server.models.inputs import InputSpec, spec_for
from server.models.registry import finalize


def make_artifact(
    out: Path,
    schema: FeatureSchema,
    offer_ids: list[str],
    *,
    seed: int = 1,
    trees: int = 20,
    favourite: str | None = None,
) -> InputSpec:
    """Train a tiny model whose acceptance depends on tenure and, if given, loves one offer."""
    spec = spec_for(
        schema, ["cart_value"], sorted(offer_ids), ["call_centre", "web"], ["ad_hoc", "lifecycle", "trigger"]
    )
    rng = np.random.default_rng(seed)
    n = 4000
    x = np.full((n, len(spec.columns)), np.nan)
    for j, col in enumerate(spec.columns):
        if col.categorical:
            x[:, j] = rng.integers(0, max(len(col.levels), 1), size=n)
        else:
            x[:, j] = rng.normal(size=n) * 10 + 20
    offer_col = spec.names.index("offer_id")
    tenure_col = spec.names.index("tenure_months")
    logit = -2.0 + 0.05 * (x[:, tenure_col] - 20)
    if favourite is not None:
        logit += 3.0 * (x[:, offer_col] == spec.offer_levels().index(favourite))
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    params = {"objective": "binary", "verbose": -1, "seed": seed, "deterministic": True, "num_threads": 1}
    data = lightgbm.Dataset(x, y, categorical_feature=spec.categorical_indices, free_raw_data=False)
    booster = lightgbm.train(params, data, num_boost_round=trees)
    out.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out / "model.txt"))
    (out / "inputs.json").write_text(json.dumps(spec.to_json()))
    ref = x[:50]
    scores = booster.predict(ref)
    rows = [[None if np.isnan(v) else float(v) for v in row] for row in ref]
    (out / "reference.json").write_text(json.dumps({"rows": rows, "scores": scores.tolist()}))
    (out / "metrics.json").write_text(json.dumps({"auc": 0.0}))
    finalize(out)
    return spec
