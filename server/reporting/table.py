"""The report as rich tables in the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from server.reporting import format as fmt
from server.reporting.kpis import DIMENSIONS
from server.reporting.model import Report


def _plain(cells: list[str]) -> list[Text]:
    """Cells as plain text: ids and versions come from the log, and "[" would start rich markup."""
    return [Text(c) for c in cells]


def _kpi_table(report: Report, dimension: str) -> Table | None:
    rows = report.kpis_of(dimension)
    if not rows:
        return None
    table = Table(title=f"KPIs per {dimension.replace('_', ' ')}", title_justify="left")
    table.add_column(dimension.replace("_", " "))
    for header in fmt.KPI_HEADERS:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*_plain([row.key, *fmt.kpi_cells(row)]))
    return table


def _lift_table(report: Report) -> Table:
    table = Table(title="Lift, customer level, intent to treat", title_justify="left")
    for header in fmt.LIFT_HEADERS:
        table.add_column(header)
    for result in report.lift:
        table.add_row(*_plain(fmt.lift_cells(result)))
    return table


def _budget_table(report: Report) -> Table:
    table = Table(title=f"Budget burn against pace (counters at {report.budget_at})", title_justify="left")
    for header in fmt.BUDGET_HEADERS:
        table.add_column(header, justify="left" if header in ("scope", "pacing") else "right")
    for b in report.budgets:
        table.add_row(*_plain(fmt.budget_cells(b)))
    return table


def _reason_table(report: Report) -> Table:
    table = Table(title="Decisions without an offer, by reason", title_justify="left")
    table.add_column("reason")
    table.add_column("decisions", justify="right")
    for r in report.no_offer_reasons:
        table.add_row(*_plain([r.reason, str(r.decisions)]))
    return table


def print_report(report: Report, console: Console) -> None:
    c = report.coverage
    console.print(Text(report.title, style="bold"))
    console.print(
        f"period {fmt.period_text(report.since, report.until)}; decisions {c.first_decision or '-'} to "
        f"{c.last_decision or '-'} ({c.decisions_in_period} of {c.decisions_read} in the log, which spans "
        f"{c.log_first or '-'} to {c.log_last or '-'}); {c.outcomes_read} outcomes, {c.conversions_read} "
        f"conversions ({c.conversions_counted} attributed); generated {report.generated_at}",
        highlight=False,
        markup=False,
    )
    for dimension in DIMENSIONS:
        table = _kpi_table(report, dimension)
        if table is not None:
            console.print(table)
    console.print(_lift_table(report))
    if report.budgets:
        console.print(_budget_table(report))
    if report.no_offer_reasons:
        console.print(_reason_table(report))
    for note in report.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    for line in fmt.definitions(report.window_seconds, report.kinds):
        console.print(line, highlight=False, markup=False, style="dim")
