"""`nbo budgets` (use and what is left of every budget) and `nbo budgets reconcile` (the counters
rebuilt from the decision log); the work is done in server.state.budget_counters and
server.state.budget_reconcile, this module parses and prints."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from zoneinfo import ZoneInfo

import redis

from server.catalog.compiled import Catalog
from server.cli.common import err_console, open_redis, parse_at, plural, print_lines, redis_flags, settings
from server.state.budget_counters import BudgetReport, ScopeRow, build_report
from server.state.budget_log import iso_time
from server.state.budget_migrate import has_legacy, legacy_pattern, migrate
from server.state.budget_reconcile import Drift, Reconciliation, apply_reconcile, plan_reconcile
from server.state.catalog_store import NoCatalog, live_catalog
from server.state.keys import Keys

NAME = "budgets"
HELP = "budget use and what is left; `nbo budgets reconcile` rebuilds the counters from the log"
DESCRIPTION = (
    "Caps, use and what is left of every campaign and offer with a budget, and of "
    "channel capacity, under the live catalog."
)
RECONCILE_HELP = """\
Rebuild the budget counters (totals, days, hours) and the per-customer award counts from the
decision log, using for each award the catalog version it was made under, and print every
counter that differs (hash, field, stored, from log, difference). Unless --dry-run, the log's
values are written: budget counters in one MULTI/EXEC per slot, per-customer counts per customer.

Only days the log covers, and hours it covers that have not expired, are touched; totals are
set to the log's totals. When the log was trimmed or starts after a budgeted campaign started,
counts before the log cannot be rebuilt: the command says so and stops unless --force.

Awards in flight are not in the log yet (decisions reach it within log_flush_seconds, under a
second), nor are records the log writer dropped (nbo_log_records_dropped_total): run it with traffic
paused, or expect that drift.

Exit status: 0 no drift, or drift fixed; 1 drift found with --dry-run; 3 the log does not reach
back far enough (see --force)."""


MIGRATE_HELP = """\
Move budget counters of the one-slot layout (`<prefix>{b}:...`, before per-campaign slots) to the
hashes of their campaigns and channels, with their expiry, and delete the old fields. Run it once,
with the old servers stopped, before the new ones start; fields whose offer or campaign the live
catalog does not know are listed and left where they are.

Exit status: 0 moved (or nothing to move), 1 some fields left (unknown offer or campaign)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION
    redis_flags(p)
    p.add_argument("--at", help="ISO 8601 time whose day and hour to show (default now; naive = catalog zone)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    nested = p.add_subparsers(dest="budgets_command")
    r = nested.add_parser(
        "reconcile",
        help="rebuild the budget counters from the decision log",
        description=RECONCILE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    redis_flags(r, nested=True)
    r.add_argument("--dry-run", action="store_true", help="print the drift; write nothing")
    r.add_argument("--force", action="store_true", help="use the log even if it may miss earlier awards")
    m = nested.add_parser(
        "migrate",
        help="move counters of the one-slot layout to per-campaign slots",
        description=MIGRATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    redis_flags(m, nested=True)
    m.add_argument("--dry-run", action="store_true", help="print what would move; write nothing")


def run(opts: argparse.Namespace) -> int:
    if opts.budgets_command == "migrate":
        return _migrate(opts)
    return _reconcile(opts) if opts.budgets_command == "reconcile" else _report(opts)


def _live_or_say(client: redis.Redis, keys: Keys) -> Catalog | None:
    """The live catalog, or None after saying there is none (every subcommand needs it)."""
    try:
        return live_catalog(client, keys)
    except NoCatalog as err:
        err_console.print(f"error: {err}")
        return None


def _migrate(opts: argparse.Namespace) -> int:
    with open_redis(opts) as (client, keys):
        live = _live_or_say(client, keys)
        if live is None:
            return 1
        done = migrate(client, keys, live, dry_run=opts.dry_run)
    lines = [f"{key}: {plural(n, 'field')}" for key, n in sorted(done.moved.items())]
    verb = "would move" if opts.dry_run else "moved"
    lines.append(f"{verb} {plural(done.fields, 'field')} into {plural(len(done.moved), 'hash', 'hashes')}")
    print_lines(lines)
    if done.unknown:
        print_lines([f"left (no such offer or campaign in the live catalog): {u}" for u in done.unknown], stderr=True)
        return 1
    return 0


def _report(opts: argparse.Namespace) -> int:
    with open_redis(opts) as (client, keys):
        catalog = _live_or_say(client, keys)
        if catalog is None:
            return 1
        try:
            now = parse_at(opts.at, catalog.timezone)
        except ValueError as err:
            err_console.print(f"error: --at: {err}")
            return 2
        report = build_report(client, keys, catalog, now)
        if has_legacy(client, keys):
            err_console.print(
                f"warning: budget counters of the one-slot layout ({legacy_pattern(keys)}) are not read any more: "
                "run `nbo budgets migrate`"
            )
    if opts.json:
        print(report_json(report))
    else:
        print_lines(format_report(report))
    return 0


def _reconcile(opts: argparse.Namespace) -> int:
    chosen = settings(opts)
    with open_redis(opts) as (client, keys):
        live = _live_or_say(client, keys)
        if live is None:
            return 1
        plan = plan_reconcile(
            client,
            keys,
            live,
            maxlen=chosen.decision_stream_maxlen,
            history_ttl=chosen.contact_history_ttl_seconds,
            now=time.time(),
        )
        print_lines(describe_scan(plan, live.timezone))
        print_lines([f"warning: {gap}" for gap in plan.gaps], stderr=True)
        found = plan.all_drifts
        if found:
            print_lines(format_drifts(found))
        summary = (
            f"{plural(len(found), 'drift')} in {plural(len({d.key for d in found}), 'hash', 'hashes')} "
            f"({plural(len(plan.budget_drifts), 'budget counter')}, "
            f"{plural(len(plan.customers.drifts), 'per-customer count')})"
        )
        if plan.gaps and not opts.force:
            print_lines(
                [
                    "refused: awards before the log starts cannot be rebuilt from it; nothing was written. "
                    "Pass --force to set the counters to what the log holds anyway."
                ],
                stderr=True,
            )
            return 3
        if not found:
            print_lines(["no drift: every counter matches the decision log"])
            return 0
        if opts.dry_run:
            print_lines([f"{summary}; dry run: nothing written"])
            return 1
        apply_reconcile(client, plan, chosen.contact_history_ttl_seconds)
    print_lines([f"{summary}: fixed"])
    return 0


# -- printing --------------------------------------------------------------------------------------
def money(amount_cents: int | None) -> str:
    if amount_cents is None:
        return "-"
    sign = "-" if amount_cents < 0 else ""
    units, rest = divmod(abs(amount_cents), 100)
    return f"{sign}{units}.{rest:02d}"


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[str]], left_aligned: set[int]) -> list[str]:
    """Aligned plain-text columns (numbers right-aligned), so scripts can split on whitespace."""
    body = [list(r) for r in rows]
    widths = [max(len(r[i]) for r in [list(header), *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.ljust(w) if i in left_aligned else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return [line(header), *(line(r) for r in body)]


SCOPE_HEADER = (
    "kind",
    "id",
    "total",
    "daily",
    "spend",
    "per customer",
    "pacing",
    "used today",
    "used total",
    "spend used",
    "paced now",
    "left",
    "spend left",
    "left now",
)


def _scope_cells(r: ScopeRow) -> list[str]:
    # window pacing may pace awards, spend or both: "awards/spend" when both
    paced = "/".join(p for p in (_n(r.paced_awards), money(r.paced_spend_cents)) if p != "-") or "-"
    return [
        r.kind,
        r.id,
        _n(r.total_awards),
        _n(r.daily_awards),
        money(r.total_spend_cents),
        _n(r.per_customer),
        r.pacing or "-",
        _n(r.used_today),
        _n(r.used_total),
        money(r.spend_cents),
        paced,
        _n(r.left),
        money(r.left_spend_cents),
        _n(r.left_now),
    ]


def format_report(report: BudgetReport) -> list[str]:
    lines = [
        f"budgets at {report.at}, catalog {report.catalog_version} (time zone {report.timezone}): "
        f"day {report.day} ({report.day_fraction:.0%} elapsed), hour {report.hour}",
        "",
    ]
    if report.scopes:
        lines += table(SCOPE_HEADER, map(_scope_cells, report.scopes), {0, 1, 6})
        lines.append("caps: total/daily in awards, spend in currency units; left: awards that fit every limit; -: none")
    else:
        lines.append("no campaign or offer has a budget")
    if report.channels:
        rows = ([c.channel, str(c.capacity_per_hour), c.hour, str(c.used), str(c.left)] for c in report.channels)
        lines += ["", *table(("channel", "capacity/hour", "hour", "used", "left"), rows, {0, 2})]
    return lines


def format_drifts(found: Sequence[Drift]) -> list[str]:
    rows = ([d.key, d.field, str(d.stored), str(d.logged), f"{d.difference:+d}"] for d in found)
    return table(("hash", "field", "stored", "from log", "difference"), rows, {0, 1})


def describe_scan(plan: Reconciliation, tz: ZoneInfo) -> list[str]:
    scan = plan.scan
    lines = ["decision log: empty"]
    if scan.first_ts is not None and scan.last_ts is not None:
        lines = [
            f"decision log: {scan.records} decisions from {iso_time(scan.first_ts, tz)} "
            f"to {iso_time(scan.last_ts, tz)}; "
            f"{scan.awards} awards counted, {scan.degraded} degraded decisions skipped"
        ]
    if scan.unreadable:
        lines.append(f"note: {scan.unreadable} records of another record version, or unreadable, skipped")
    if scan.duplicates:
        lines.append(f"note: {scan.duplicates} repeated log entries of decisions already counted, skipped")
    for where, n in sorted(scan.unknown_offers.items()):
        lines.append(f"note: {n} awards of offer {where} not counted: the catalog does not know the offer")
    for version, why in sorted(plan.fallbacks.items()):
        lines.append(f"note: catalog {version} cannot be loaded ({why}); its awards are counted with the live catalog")
    if plan.customers.expired:
        lines.append(f"note: {plan.customers.expired} customers' contact history expired; their counts stay expired")
    for key in plan.budget.skipped:
        lines.append(f"note: {key} is not (fully) covered by the log; left as it is")
    return lines


def report_json(report: BudgetReport) -> str:
    return json.dumps(asdict(report), indent=2)
