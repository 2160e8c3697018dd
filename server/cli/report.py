"""`nbo report`: campaign KPIs and lift against control groups over a period (server/reporting)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from server.cli.common import console, err_console, names, open_redis, redis_flags

if TYPE_CHECKING:  # the report's modules (scipy, matplotlib) load only when the command runs
    from server.reporting.model import Report

NAME = "report"
HELP = "campaign KPIs and lift against control groups: terminal tables, CSV, JSON or one HTML file"
DESCRIPTION = """\
Per campaign, offer, channel and model version: decisions, awards, outcomes, acceptance and
conversion rates, revenue, cost and ROI; budget burn against pace; no-offer reasons; and the
lift of the programme against the universal control group and of each campaign against its
holdout, customer level and intent to treat, with 95% intervals ("not enough data" below
--min-customers or --min-conversions in a group). docs/report.md defines every number.

Times: ISO 8601 (naive = UTC) or a duration back from now (7d, 12h, 30m, 2w)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    redis_flags(p)
    p.add_argument("--since", help="decisions at or after this time (default: the start of the log)")
    p.add_argument("--until", help="decisions before this time (default: the end of the log)")
    p.add_argument("--window", default="7d", help="attribution window after a customer's first decision (default 7d)")
    p.add_argument(
        "--kind", action="append", help="conversion kinds counted (repeatable or comma-separated; default all)"
    )
    p.add_argument("--format", choices=("table", "csv", "html", "json"), default="table", help="default table")
    p.add_argument(
        "--out", type=Path, help="csv: a directory of CSV files; html: the file; json: a file (default stdout)"
    )
    p.add_argument("--min-customers", type=int, default=30, help="per group, for an interval (default 30)")
    p.add_argument("--min-conversions", type=int, default=5, help="per group, for an interval (default 5)")
    p.add_argument("--title", default="NBO campaign report", help="the report's title")


def run(opts: argparse.Namespace) -> int:
    from server.reporting import Thresholds, build_report
    from server.reporting.period import PeriodError, parse_duration, parse_time

    if opts.format in ("csv", "html") and opts.out is None:
        return _fail(f"--format {opts.format} needs --out ({'a directory' if opts.format == 'csv' else 'a file'})")
    now = time.time()
    try:
        since = None if opts.since is None else parse_time(opts.since, now)
        until = None if opts.until is None else parse_time(opts.until, now)
        window = parse_duration(opts.window)
    except PeriodError as err:
        flag = _flag_of(opts, str(err))
        return _fail(f"{flag}: {err}")
    try:
        thresholds = Thresholds(opts.min_customers, opts.min_conversions)
    except ValueError as err:
        return _fail(str(err))
    kinds = [k for given in opts.kind or () for k in names(given)]
    with open_redis(opts) as (client, keys):
        try:
            report = build_report(
                client, keys, since, until, window, kinds=kinds, thresholds=thresholds, now=now, title=opts.title
            )
        except PeriodError as err:
            return _fail(str(err))
    return _write(report, opts.format, opts.out)


def _flag_of(opts: argparse.Namespace, message: str) -> str:
    """Which flag a PeriodError is about (each message quotes the text it could not read)."""
    for flag in ("since", "until", "window"):
        given = getattr(opts, flag)
        if given is not None and repr(given) in message:
            return f"--{flag}"
    return "error"


def _write(report: Report, form: str, out: Path | None) -> int:
    from server.reporting.csv_out import write_csv
    from server.reporting.html import render_html
    from server.reporting.table import print_report

    if form == "table":
        print_report(report, console)
    elif form == "json":
        text = report.to_json()
        if out is None:
            print(text)
        else:
            out.write_text(text + "\n", encoding="utf-8")
    elif form == "csv":
        assert out is not None
        files = write_csv(report, out)
        console.print(f"wrote {len(files)} CSV files to {out}", highlight=False, markup=False, soft_wrap=True)
    else:
        assert out is not None
        out.write_text(render_html(report), encoding="utf-8")
        console.print(f"wrote {out}", highlight=False, markup=False, soft_wrap=True)
    return 0


def _fail(message: str) -> int:
    err_console.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
    return 2
