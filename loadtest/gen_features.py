"""Generate a seeded synthetic customer feature file for load tests.

    python loadtest/gen_features.py --rows 1000000 --features 40 --out /tmp/customers.parquet --seed 1

Writes `customer_id` plus `--features` columns: up to three categorical ones (tier,
preferred_channel, region), a few named numerics the demo catalog understands, then generic
`f<N>` numerics. About 2% of numeric and categorical cells are left empty (missing). The
categorical names to pass to `nbo features load --categorical` are printed on stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

CATEGORICAL: dict[str, tuple[str, ...]] = {
    "tier": ("A", "B", "C"),
    "preferred_channel": ("email", "sms", "push", "web", "call"),
    "region": ("north", "south", "east", "west", "central", "islands"),
}
MISSING_RATE = 0.02


def build(rows: int, features: int, seed: int) -> tuple[pa.Table, list[str]]:
    rng = np.random.default_rng(seed)
    columns: dict[str, pa.Array] = {"customer_id": pa.array(np.char.add("c", np.arange(rows).astype(str)))}
    categorical = list(CATEGORICAL)[: min(len(CATEGORICAL), features)]
    for name in categorical:
        levels = np.array(CATEGORICAL[name])
        codes = rng.integers(0, len(levels), rows)
        columns[name] = pa.array(levels[codes], mask=rng.random(rows) < MISSING_RATE)

    def numeric(name: str, values: np.ndarray) -> None:
        if len(columns) <= features:
            columns[name] = pa.array(values, mask=rng.random(rows) < MISSING_RATE)

    numeric("tenure_months", rng.integers(0, 240, rows).astype(np.float64))
    # rounded so the CSV stays a realistic size instead of 17 significant digits per cell
    numeric("churn_risk", np.round(rng.beta(2, 5, rows), 4))
    numeric("consent_web", (rng.random(rows) < 0.9).astype(np.float64))
    numeric("consent_call", (rng.random(rows) < 0.6).astype(np.float64))
    i = 0
    while len(columns) <= features:
        numeric(f"f{i}", np.round(rng.normal(0.0, 1.0, rows), 4))
        i += 1
    return pa.table(columns), categorical


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=40, help="feature columns besides customer_id")
    ap.add_argument("--out", type=Path, required=True, help="FILE.csv or FILE.parquet")
    ap.add_argument("--seed", type=int, default=1)
    opts = ap.parse_args(argv)
    if opts.rows < 0 or opts.features < 1:
        ap.error("--rows must be >= 0 and --features >= 1")
    suffix = opts.out.suffix.lower()
    if suffix not in {".csv", ".parquet", ".pq"}:
        ap.error(f"--out {opts.out}: expected a .csv, .parquet or .pq file")
    table, categorical = build(opts.rows, opts.features, opts.seed)
    if suffix == ".csv":
        pa_csv.write_csv(table, opts.out)
    else:
        pq.write_table(table, opts.out)
    print(f"wrote {opts.rows} rows x {opts.features} features to {opts.out}", file=sys.stderr)
    print(f"--categorical {','.join(categorical)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
