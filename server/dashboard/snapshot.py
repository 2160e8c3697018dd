"""The JSON of `GET /api/live`: the window's counts at one second, budgets and live versions."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from server.catalog.compiled import Catalog
from server.dashboard.live import LiveVersions, versions_json
from server.dashboard.tail import TailStats
from server.dashboard.window import CampaignCounts, RollingWindow, Totals
from server.state.budget_counters import BudgetReport

# decisions per second over the last 10 and 60 whole seconds before the snapshot's (which is
# still going on: counting it would understate the rate)
RATE_SPANS = (10, 60)
SPARK_SECONDS = 60  # decisions in each of those last 60 seconds, for the page's bars


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _rate(part: int, whole: int, places: int = 4) -> float | None:
    return round(part / whole, places) if whole else None


def _campaign(cid: str, counts: CampaignCounts, catalog: Catalog | None) -> dict[str, Any]:
    known = {c.id: c for c in catalog.campaigns} if catalog is not None else {}
    camp = known.get(cid)
    return {
        "id": cid,
        "name": camp.name if camp is not None else "",
        "type": camp.type.value if camp is not None else "",
        "decisions": counts.decisions,
        "awards": counts.awards,
        "acceptances": counts.acceptances,
        "acceptance_rate": _rate(counts.acceptances, counts.awards),
    }


def campaigns_json(totals: Totals, catalog: Catalog | None) -> list[dict[str, Any]]:
    """Every live campaign (in catalog order, with zeros when idle), then others the window saw."""
    live = [c.id for c in catalog.campaigns] if catalog is not None else []
    others = sorted(set(totals.campaigns) - set(live))
    zero = CampaignCounts(0, 0, 0)
    return [_campaign(cid, totals.campaigns.get(cid, zero), catalog) for cid in [*live, *others]]


def budgets_json(report: BudgetReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    data = asdict(report)
    data["day_fraction"] = round(report.day_fraction, 4)
    return data


def snapshot_json(
    window: RollingWindow,
    tail: TailStats,
    at: int,
    catalog: Catalog | None,
    versions: LiveVersions,
    budgets: BudgetReport | None,
) -> dict[str, Any]:
    """Everything the page shows, as of the second `at` (the log's counts cover (at - window, at])."""
    totals = window.totals(at)
    latest = window.latest
    return {
        "at": at,
        "at_iso": iso(at),
        "window": {"seconds": window.seconds, "since": iso(totals.since), "until": iso(at)},
        "rates": {f"last_{s}s": round(window.totals(at - 1, s).decisions / s, 3) for s in RATE_SPANS},
        "per_second": window.decisions_per_second(at - 1, SPARK_SECONDS),
        "totals": {
            "decisions": totals.decisions,
            "awards": totals.awards,
            "acceptances": totals.acceptances,
            "acceptance_rate": _rate(totals.acceptances, totals.awards),
            "degraded": totals.degraded,
            "control_group": totals.control_group,
        },
        "outcomes": totals.outcomes,
        "no_offer": [
            {"reason": r, "decisions": n, "share": _rate(n, totals.decisions)} for r, n in totals.no_offer.items()
        ],
        "campaigns": campaigns_json(totals, catalog),
        "budgets": budgets_json(budgets),
        "versions": versions_json(versions),
        "latest_decision": None
        if latest is None
        else {"at": iso(latest.ts), "model": latest.model, "catalog": latest.catalog, "bandit": latest.bandit},
        "log": {
            "decisions_read": tail.decisions,
            "outcomes_read": tail.outcomes,
            "unreadable": tail.unreadable,
            "first_unreadable": tail.first_unreadable,
            "repeats_skipped": window.repeats,
            "too_old_skipped": window.too_old,
            "caught_up": tail.caught_up,
            "read_errors": tail.errors,
        },
    }
