"""How numbers read in the terminal tables and the HTML report (CSV and JSON keep them raw)."""

from __future__ import annotations

from server.reporting.model import BurnRow, KpiRow, LiftResult
from server.reporting.stats import Estimate

BLANK = "-"

KPI_HEADERS = (
    "decisions",
    "control",
    "degraded",
    "undelivered",
    "awards",
    "presented",
    "accepted",
    "converted",
    "accept. rate",
    "conv. rate",
    "revenue",
    "cost",
    "ROI",
)
LIFT_HEADERS = (
    "lift of",
    "treatment (conv./customers)",
    "control (conv./customers)",
    "conversion rate difference (95% CI)",
    "relative lift (95% CI)",
    "revenue per customer difference (95% CI)",
)


BUDGET_HEADERS = ("scope", "limit", "used", "of limit", "pace target now", "pacing")


def pct(value: float | None, digits: int = 1) -> str:
    return BLANK if value is None else f"{value * 100:.{digits}f}%"


def money(value: float | None) -> str:
    return BLANK if value is None else f"{value:,.2f}"


def estimate(e: Estimate | None, as_pct: bool, signed: bool = True) -> str:
    if e is None:
        return BLANK
    sign = "+" if signed else ""
    if as_pct:
        return f"{e.value * 100:{sign}.2f} pts ({e.low * 100:{sign}.2f} to {e.high * 100:{sign}.2f})"
    return f"{e.value:{sign},.2f} ({e.low:{sign},.2f} to {e.high:{sign},.2f})"


def relative(e: Estimate | None) -> str:
    if e is None:
        return BLANK
    return f"{e.value * 100:+.1f}% ({e.low * 100:+.1f}% to {e.high * 100:+.1f}%)"


def kpi_cells(row: KpiRow) -> list[str]:
    return [
        str(row.decisions),
        str(row.control_group),
        str(row.degraded),
        str(row.undelivered),
        str(row.awards) + (f" (+{row.undelivered_awards} undelivered)" if row.undelivered_awards else ""),
        str(row.presented),
        str(row.accepted),
        str(row.converted),
        pct(row.acceptance_rate),
        pct(row.conversion_rate),
        money(row.revenue),
        money(row.cost),
        pct(row.roi, 0),
    ]


def lift_cells(r: LiftResult) -> list[str]:
    """The lift row; a point estimate without an interval is followed by why."""
    name = "programme (universal control group)" if r.scope == "programme" else f"campaign {r.name} (holdout)"
    group = f"{pct(r.treatment.conversion_rate)} ({r.treatment.converted}/{r.treatment.customers})"
    held = f"{pct(r.control.conversion_rate)} ({r.control.converted}/{r.control.customers})"
    if not r.enough_data:
        point = BLANK if r.rate_difference_point is None else f"{r.rate_difference_point * 100:+.2f} pts"
        return [name, group, held, f"{point}, {r.note}", BLANK, BLANK]
    return [
        name,
        group,
        held,
        estimate(r.rate_difference, as_pct=True),
        relative(r.relative_lift),
        estimate(r.revenue_difference, as_pct=False),
    ]


def duration(seconds: float) -> str:
    for unit, size in (("d", 86_400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def period_text(since: str, until: str) -> str:
    return f"{since or 'start of the log'} to {until or 'end of the log'}"


def definitions(window_seconds: float, kinds: tuple[str, ...]) -> list[str]:
    """What the numbers mean, printed under every report (docs/report.md says more)."""
    counted = ", ".join(kinds) if kinds else "every kind"
    return [
        "Decisions: decisions of the period in which the campaign or offer was a candidate (or that the "
        "channel or model version served), delivered, not degraded, outside the universal control group; "
        "control-group, degraded and undelivered decisions are counted in their own columns and left out "
        "of every rate.",
        "Acceptance rate: awards with an accepted or converted outcome / awards. Conversion rate: awards "
        "with a converted outcome / awards. Revenue: per award, the largest value reported with its "
        "accepted or converted outcomes. Cost: awards (undelivered ones too: they were spent) x the "
        "offer's cost in the catalog version of the decision. ROI = (revenue - cost) / cost.",
        "Lift is customer level and intent to treat (ITT): a customer is assigned at their first decision "
        "of the period (programme: universal control group or not; campaign: its candidates held out by "
        "the campaign's holdout or not, whether or not the offer was then awarded), and converted when a "
        f"conversion ({counted}) happened within the {duration(window_seconds)} attribution window after "
        "that decision. Conversion rate difference: Newcombe's hybrid score interval; relative lift: delta "
        "method on the log ratio; revenue per customer difference: Welch's t interval. All intervals 95%.",
    ]


def budget_cells(b: BurnRow) -> list[str]:
    return [
        f"{b.kind} {b.id}: {b.measure}",
        f"{b.limit:g}",
        f"{b.used:g}",
        pct(b.used / b.limit if b.limit else None),
        BLANK if b.pace_target is None else f"{b.pace_target:g}",
        b.pacing or BLANK,
    ]
