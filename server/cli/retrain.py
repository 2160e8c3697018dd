"""`nbo retrain`: retrain on the recent log behind a gate (the work: training/retrain.py);
`nbo retrain list`: every comparison stored so far.

One run per invocation, for cron (docs/learning.md, "Retraining behind a gate"); `--every 6h`
repeats it in the foreground until interrupted.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from server.cli.common import console, err_console, iso_epoch, open_redis, print_lines, redis_flags, settings
from server.cli.export import _positive

if TYPE_CHECKING:
    from training.retrain import RetrainOptions

NAME = "retrain"
HELP = "train a challenger on the recent log and publish it only if it is not worse (nbo retrain --help)"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="retrain_command")
    listing = sub.add_parser("list", help="the stored comparisons, oldest first")
    redis_flags(listing)
    listing.add_argument("--json", action="store_true", help="the full records as a JSON array")
    redis_flags(p)
    p.add_argument("--window-days", type=_positive, default=14.0, help="days of closed decisions to use (default 14)")
    p.add_argument(
        "--reward-window-days",
        type=_positive,
        help="how long after a decision its reward may arrive; younger decisions are left out "
        "(default: decision_ttl_seconds, 30 days)",
    )
    p.add_argument("--since", type=iso_epoch, help="use decisions from this time (ISO 8601; overrides --window-days)")
    p.add_argument("--until", type=iso_epoch, help="use decisions before this time (default: now - reward window)")
    p.add_argument("--as-of", type=iso_epoch, help="judge windows at this time, ignore later outcomes (repeatable)")
    p.add_argument(
        "--holdout-fraction", type=_fraction, default=0.2, help="newest share of rows held out (default 0.2)"
    )
    p.add_argument("--holdout-days", type=_positive, help="hold out the last N days of the window instead")
    p.add_argument("--min-holdout-rows", type=_count, default=500, help="refuse below this many held-out rows (500)")
    p.add_argument("--seed", type=int, default=7, help="seed of training, the bootstrap and the reward model")
    p.add_argument("--rounds", type=_count, default=2000, help="maximum boosting rounds (as nbo train)")
    p.add_argument("--valid-fraction", type=_fraction, default=0.2, help="of the training part, for early stopping")
    p.add_argument("--bootstrap", type=_count, default=400, help="paired bootstrap resamples (default 400)")
    p.add_argument("--auc-tolerance", type=float, default=0.005, help="AUC diff lower bound must exceed -this")
    p.add_argument("--log-loss-tolerance", type=float, default=0.002, help="log-loss diff upper bound must be below")
    p.add_argument(
        "--value-tolerance",
        type=float,
        default=0.2,
        help="DR value diff lower bound must exceed -this x the champion's DR value (default 0.2)",
    )
    p.add_argument("--dry-run", action="store_true", help="compare and record, never publish")
    p.add_argument("--work-dir", type=Path, help="keep the export and the challenger here (default: a temp dir)")
    p.add_argument("--every", type=_duration, help="repeat every interval (e.g. 6h, 30m) until interrupted")
    p.add_argument("--json", action="store_true", help="print the run's record as JSON")


def run(opts: argparse.Namespace) -> int:
    if opts.retrain_command == "list":
        return _list(opts)
    if opts.every is not None and (opts.as_of is not None or opts.since is not None or opts.until is not None):
        err_console.print("error: --every moves the window with the clock; drop --as-of, --since and --until")
        return 2
    options = _options(opts)
    if opts.every is None:
        return _once(opts, options)
    while True:
        try:
            _once(opts, options)
        except redis.exceptions.ConnectionError as err:
            # a loop that runs for days outlives a Redis restart: report it and try next time
            err_console.print(f"error: cannot reach Redis: {err}", highlight=False)
        console.print(f"next run in {opts.every:g} s", highlight=False)
        time.sleep(opts.every)


def _options(opts: argparse.Namespace) -> RetrainOptions:
    from training.retrain import RetrainOptions
    from training.retrain_compare import Gate

    reward_days = opts.reward_window_days or settings(opts).decision_ttl_seconds / 86_400
    return RetrainOptions(
        window_days=opts.window_days,
        reward_window_days=reward_days,
        since=opts.since,
        until=opts.until,
        as_of=opts.as_of,
        holdout_fraction=opts.holdout_fraction,
        holdout_days=opts.holdout_days,
        min_holdout_rows=opts.min_holdout_rows,
        seed=opts.seed,
        valid_fraction=opts.valid_fraction,
        rounds=opts.rounds,
        bootstrap=opts.bootstrap,
        gate=Gate(opts.auc_tolerance, opts.log_loss_tolerance, opts.value_tolerance),
        dry_run=opts.dry_run,
        work_dir=opts.work_dir,
    )


def _once(opts: argparse.Namespace, options: RetrainOptions) -> int:
    from training.retrain import retrain
    from training.retrain_store import record_lines

    with open_redis(opts) as (client, keys):
        outcome = retrain(client, keys, options)
    if opts.json:
        print_lines([json.dumps(outcome.record, indent=1)])
    else:
        print_lines(record_lines(outcome.record))
    return 1 if outcome.verdict in ("refused", "rejected") else 0


def _list(opts: argparse.Namespace) -> int:
    from training.retrain_store import list_records, table_lines

    with open_redis(opts) as (client, keys):
        records = list_records(client, keys)
    if opts.json:
        print_lines([json.dumps(records, indent=1)])
    elif not records:
        print_lines(["no retraining run recorded yet"])
    else:
        print_lines(table_lines(records))
    return 0


def _duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a positive duration like 6h, 30m or 90s: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value
