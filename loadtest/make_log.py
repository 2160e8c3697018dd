"""Write a synthetic decision log (the dataset schema of docs/dataset.md) for the load-test
catalog, so `nbo train` fits a LightGBM model that knows every load-test offer.

The customers are `training.population.make_population(customers, seed)` (the ones the load test
loads into Redis); each row is one web or call-centre decision that presented a uniformly drawn
catalog offer. The outcome is drawn from the offer's catalog prior shifted by a few customer
effects (tier, churn risk, price sensitivity, channel), so the model has something to learn;
the figures of the load test do not depend on how good the model is, only on its size.

    make_log.py --catalog catalog.yaml --customers 10000 --rows 20000 --out log.parquet
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.dataset import write_dataset
from training.population import make_population


def make_log(catalog: dict, customers: int, rows: int, seed: int) -> dict[str, object]:  # type: ignore[type-arg]
    rng = np.random.default_rng(seed)
    pop = make_population(customers, seed=seed)
    offers = catalog["offers"]
    idx = rng.integers(0, customers, size=rows)
    which = rng.integers(0, len(offers), size=rows)
    channel = np.where(rng.random(rows) < 0.7, "web", "call_centre")
    prior = np.array([float(o["prior_propensity"]) for o in offers])[which]
    cols = pop.columns
    tier = np.asarray(cols["tier"])[idx]
    logit = np.log(prior / (1 - prior))
    logit += np.where(tier == "A", 0.6, np.where(tier == "B", 0.1, -0.4))
    logit += 0.8 * (np.asarray(cols["churn_risk"], dtype=float)[idx] - 0.3)
    logit -= 0.5 * (np.asarray(cols["price_sensitivity"], dtype=float)[idx] - 0.5)
    logit += np.where(channel == "call_centre", 0.3, 0.0)
    accepted = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    values = np.array([float(o["value"]) for o in offers])[which]
    web = channel == "web"
    out: dict[str, object] = {
        "decision_id": [f"L{i:09d}" for i in range(rows)],
        "timestamp": 1_767_225_600.0 + np.sort(rng.uniform(0, 30 * 86400, size=rows)),
        "customer_id": [pop.customer_ids[i] for i in idx],
        "channel": list(channel),
        "placement": ["home_hero" if w else "" for w in web],
        "offer_id": [offers[w]["id"] for w in which],
        "selection_probability": np.full(rows, 1.0 / len(offers)),
        "outcome": accepted,
        "value": values * accepted,
    }
    for name, col in cols.items():
        out[name] = np.asarray(col)[idx]
    out["ctx_cart_value"] = np.where(web, np.round(rng.uniform(0, 200, size=rows), 2), np.nan)
    out["ctx_page_depth"] = np.where(web, rng.integers(1, 10, size=rows).astype(float), np.nan)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument("--customers", type=int, default=10000)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    opts = parser.parse_args()
    catalog = yaml.safe_load(opts.catalog.read_text())
    write_dataset(opts.out, make_log(catalog, opts.customers, opts.rows, opts.seed))  # type: ignore[arg-type]
    print(f"wrote {opts.out}: {opts.rows} rows over {len(catalog['offers'])} offers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
