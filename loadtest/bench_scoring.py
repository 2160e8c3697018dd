"""Scoring benchmark: microseconds per decision for 10, 100 and 500 candidates, compiled (lleaves)
vs plain (Booster.predict), with a 200-tree model over the demo population's features.

    .venv/bin/python loadtest/bench_scoring.py [--trees 200] [--repeat 2000]

It measures what a decision pays: building the candidate rows (server.models.inputs.build_rows)
plus one predict call, through server.models.scorers.ModelScorer, single-threaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import lightgbm
import numpy as np

from server.catalog.compiler import parse_catalog
from server.domain import Channel
from server.features.file import merged_schema, read_feature_file
from server.models.inputs import spec_for
from server.models.loader import compiled_predict
from server.models.registry import artifact_from_record, booster_predict
from server.models.scorers import ModelScorer, ScoringInput
from training.population import CATEGORICAL, make_population


def _catalog(n_offers: int) -> str:
    offers = "\n".join(
        f"  - {{id: o{i:03d}, campaign: c{i % 3}, title: Offer {i}, value: {10 + i % 50}, "
        f"cost: {i % 5}, prior_propensity: {0.01 + (i % 30) / 100:.2f}}}"
        for i in range(n_offers)
    )
    campaigns = "\n".join(
        f"  - {{id: c{j}, type: {t}, channels: [web, call_centre]{', events: [e]' if t == 'trigger' else ''}}}"
        for j, t in enumerate(["ad_hoc", "lifecycle", "trigger"])
    )
    return f"context_keys: [cart_value]\ncampaigns:\n{campaigns}\noffers:\n{offers}\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=2000)
    opts = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    pop = make_population(5000, seed=3)
    pop.write_csv(str(tmp / "c.csv"))
    schema = merged_schema(read_feature_file(tmp / "c.csv", CATEGORICAL), None)
    catalog = parse_catalog(_catalog(500), schema)
    view = catalog.views[Channel.WEB]
    spec = spec_for(
        schema, ["cart_value"], list(view.offer_ids), ["call_centre", "web"], ["ad_hoc", "lifecycle", "trigger"]
    )
    rng = np.random.default_rng(0)
    n = 50_000
    x = np.empty((n, len(spec.columns)))
    for j, col in enumerate(spec.columns):
        x[:, j] = rng.integers(0, max(len(col.levels), 2), size=n) if col.categorical else rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(x[:, 1] + x[:, 2] * x[:, 3] - 2)))).astype(float)
    params = {"objective": "binary", "verbose": -1, "num_leaves": 31, "seed": 1, "num_threads": 2}
    booster = lightgbm.train(
        params, lightgbm.Dataset(x, y, categorical_feature=spec.categorical_indices), num_boost_round=opts.trees
    )
    record = {
        "version": "bench",
        "model": booster.model_to_string(),
        "inputs": spec.to_json(),
        "reference": {"rows": [], "scores": []},
        "metadata": {},
    }
    artifact = artifact_from_record(json.loads(json.dumps(record)))
    started = time.perf_counter()
    compiled = compiled_predict(artifact, tmp / "cache")
    compile_s = time.perf_counter() - started
    predictors = {"compiled (lleaves)": compiled, "plain (Booster.predict)": booster_predict(artifact.model_text)}
    vector = np.asarray(x[0, : len(schema.features)], dtype=np.float32)
    print(f"{opts.trees}-tree model, {len(spec.columns)} inputs; lleaves compile {compile_s:.1f}s")
    print("| candidates | predictor | median µs/decision | p99 µs | rows agree |")
    print("|---|---|---|---|---|")
    for k in (10, 100, 500):
        positions = np.arange(k, dtype=np.intp)
        batch = ScoringInput(catalog, Channel.WEB, vector, {"cart_value": 42.0}, positions)
        results = {}
        for name, predict in predictors.items():
            scorer = ModelScorer("bench", spec, predict, schema, compiled=True)
            for _ in range(50):
                scorer.score(batch)
            times = []
            for _ in range(opts.repeat):
                t = time.perf_counter()
                scorer.score(batch)
                times.append(time.perf_counter() - t)
            results[name] = scorer.score(batch)[0]
            times.sort()
            agree = float(np.max(np.abs(results[name] - next(iter(results.values())))))
            print(
                f"| {k} | {name} | {statistics.median(times) * 1e6:.0f} | {times[int(len(times) * 0.99)] * 1e6:.0f} | "
                f"max diff {agree:.1e} |"
            )


if __name__ == "__main__":
    main()
