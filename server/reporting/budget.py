"""Budget burn against pace: the counters `nbo budgets` shows (server.state.budget_counters),
one row per limit, so a plot can set used beside the limit and what pacing allows by now."""

from __future__ import annotations

import redis

from server.catalog.compiled import Catalog
from server.reporting.model import BurnRow
from server.state.budget_counters import ScopeRow, build_report
from server.state.keys import Keys


def _rows(scope: ScopeRow) -> list[BurnRow]:
    rows = []
    day_paced = scope.pacing is not None and scope.pacing.startswith("day")
    if scope.daily_awards is not None and scope.used_today is not None:
        pace = scope.paced_awards if day_paced else None
        rows.append(
            BurnRow(scope.kind, scope.id, "awards today", scope.used_today, scope.daily_awards, pace, scope.pacing)
        )
    if scope.total_awards is not None and scope.used_total is not None:
        pace = None if day_paced else scope.paced_awards
        rows.append(
            BurnRow(scope.kind, scope.id, "awards total", scope.used_total, scope.total_awards, pace, scope.pacing)
        )
    if scope.total_spend_cents is not None and scope.spend_cents is not None:
        pace_cents = scope.paced_spend_cents
        rows.append(
            BurnRow(
                scope.kind,
                scope.id,
                "spend total",
                scope.spend_cents / 100,
                scope.total_spend_cents / 100,
                None if pace_cents is None else pace_cents / 100,
                scope.pacing,
            )
        )
    return rows


def burn_rows(client: redis.Redis, keys: Keys, catalog: Catalog, now: float) -> tuple[str, list[BurnRow]]:
    """(when the counters were read, ISO in the catalog's zone; a row per limit counted)."""
    report = build_report(client, keys, catalog, now)
    return report.at, [row for scope in report.scopes for row in _rows(scope)]
