"""`nbo export`: the decision log joined with its outcomes, as a training dataset (training/export.py)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from server.cli.common import console, err_console, iso_epoch, open_redis, redis_flags, settings

NAME = "export"
HELP = "decisions joined with their outcomes, as a training dataset (CSV/Parquet, or Parquet partitioned by date)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    redis_flags(p)
    p.add_argument("out", type=Path, help="output file: .csv, .parquet or .pq; with --partitioned a directory")
    p.add_argument(
        "--partitioned",
        action="store_true",
        help="write OUT as a directory of Parquet files partitioned by day (OUT/date=YYYY-MM-DD/part-N.parquet), "
        "for logs larger than one file or one machine (nbo train --dask)",
    )
    p.add_argument("--since", type=iso_epoch, help="decisions at or after this time (ISO 8601; naive = UTC)")
    p.add_argument("--until", type=iso_epoch, help="decisions before this time (ISO 8601; naive = UTC)")
    p.add_argument(
        "--window-days",
        type=_positive,
        help="how long after a decision its reward may arrive (default: decision_ttl_seconds, 30 days, "
        "after which the server refuses outcomes anyway)",
    )
    p.add_argument(
        "--include-open", action="store_true", help="also decisions younger than the window (their 0 may change)"
    )
    p.add_argument(
        "--min-probability",
        type=_probability,
        help="export offers logged with a missing or smaller selection probability with this one (default: error)",
    )
    p.add_argument(
        "--as-of",
        type=iso_epoch,
        help="judge windows at this time and ignore outcomes logged after it (default: now); repeatable exports",
    )


def run(opts: argparse.Namespace) -> int:
    from training.export import ExportError, ExportOptions, export_log

    window_days = opts.window_days or settings(opts).decision_ttl_seconds / 86_400
    options = ExportOptions(
        window_seconds=window_days * 86_400.0,
        since=opts.since,
        until=opts.until,
        include_open=opts.include_open,
        min_probability=opts.min_probability,
        as_of=opts.as_of,
    )
    if opts.partitioned and opts.out.exists() and not opts.out.is_dir():
        err_console.print(f"error: {opts.out}: not a directory", highlight=False, soft_wrap=True)
        return 2
    if not opts.partitioned and opts.out.suffix.lower() not in (".csv", ".parquet", ".pq"):
        err_console.print(f"error: {opts.out}: expected a .csv, .parquet or .pq file", highlight=False, soft_wrap=True)
        return 2
    with open_redis(opts) as (client, keys):
        try:
            summary = export_log(client, keys, opts.out, options, partitioned=opts.partitioned)
        except ExportError as err:
            err_console.print(f"error: {err}", highlight=False, markup=False, soft_wrap=True)
            return 1
    # soft_wrap: one line however narrow the terminal, for scripts that read it
    console.print(summary.line(opts.out, window_days), highlight=False, markup=False, emoji=False, soft_wrap=True)
    if not summary.rows:
        err_console.print("error: no decision to export; nothing written", highlight=False, soft_wrap=True)
        return 1
    return 0


def _positive(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of days, got {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value
