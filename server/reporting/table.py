"""The report as rich tables in the terminal."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from server.reporting import format as fmt
from server.reporting.kpis import DIMENSIONS
from server.reporting.model import Report


def _plain(cells: list[str]) -> list[Text]:
    """Cells as plain text: ids and versions come from the log, and "[" would start rich markup."""
    return [Text(c) for c in cells]


@dataclass(frozen=True, slots=True)
class _Sized:
    """A table and the width that shows every cell whole: a number cut short ("12…") would be a
    wrong number, so tables print as wide as they need and a narrow terminal wraps the lines."""

    table: Table
    width: int


def _sized(title: str, headers: Sequence[str], cells: list[list[str]], left: Collection[str]) -> _Sized:
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for i, header in enumerate(headers):
        justify: Literal["left", "right"] = "left" if header in left else "right"
        table.add_column(header, justify=justify, no_wrap=True, min_width=widths[i])
    for row_cells in cells:
        table.add_row(*_plain(row_cells))
    return _Sized(table, sum(widths) + 3 * len(widths) + 1)


def _kpi_table(report: Report, dimension: str) -> _Sized | None:
    rows = report.kpis_of(dimension)
    if not rows:
        return None
    name = dimension.replace("_", " ")
    cells = [[row.key, *fmt.kpi_cells(row)] for row in rows]
    return _sized(f"KPIs per {name}", [name, *fmt.KPI_HEADERS], cells, {name})


def _lift_table(report: Report) -> _Sized | None:
    if not report.lift:
        return None
    cells = [fmt.lift_cells(result) for result in report.lift]
    return _sized("Lift, customer level, intent to treat", fmt.LIFT_HEADERS, cells, {fmt.LIFT_HEADERS[0]})


def _budget_table(report: Report) -> _Sized | None:
    if not report.budgets:
        return None
    cells = [fmt.budget_cells(b) for b in report.budgets]
    title = f"Budget burn against pace (counters at {report.budget_at})"
    return _sized(title, fmt.BUDGET_HEADERS, cells, {"scope", "pacing"})


def _reason_table(report: Report) -> _Sized | None:
    if not report.no_offer_reasons:
        return None
    cells = [[r.reason, str(r.decisions)] for r in report.no_offer_reasons]
    return _sized("Decisions without an offer, by reason", ["reason", "decisions"], cells, {"reason"})


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
    tables = [_kpi_table(report, d) for d in DIMENSIONS]
    tables += [_lift_table(report), _budget_table(report), _reason_table(report)]
    for made in tables:
        if made is not None:
            wide = Console(file=console.file, width=max(console.width, made.width), no_color=console.no_color)
            wide.print(made.table)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    for line in fmt.definitions(report.window_seconds, report.kinds):
        console.print(line, highlight=False, markup=False, style="dim")
