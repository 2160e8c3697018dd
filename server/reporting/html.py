"""The report as ONE self-contained HTML file: inline CSS, plots as base64 PNGs (data: URIs), no
script, no external reference. Every text that comes from the log or the catalog is escaped."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

from server.reporting import format as fmt
from server.reporting import plots
from server.reporting.kpis import DIMENSIONS
from server.reporting.model import Report

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
.meta, .defs { color: #555; font-size: 0.9em; }
img { max-width: 100%; }
"""


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="n">{escape(c)}</td>' if i >= numeric_from else f"<td>{escape(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _figure(uri: str | None, alt: str) -> str:
    if uri is None:
        return f"<p class='meta'>{escape(alt)}: nothing to plot in this period.</p>"
    return f'<figure><img alt="{escape(alt)}" src="{uri}"></figure>'


def _kpis(report: Report) -> list[str]:
    parts = []
    for dimension in DIMENSIONS:
        rows = report.kpis_of(dimension)
        if rows:
            name = dimension.replace("_", " ")
            parts.append(f"<h3>Per {escape(name)}</h3>")
            parts.append(_table([name, *fmt.KPI_HEADERS], ([r.key, *fmt.kpi_cells(r)] for r in rows)))
    return parts


def _budgets(report: Report) -> list[str]:
    if not report.budgets:
        return ["<p class='meta'>No campaign or offer has a budget limit in the live catalog.</p>"]
    rows = (fmt.budget_cells(b) for b in report.budgets)
    return [
        f"<p class='meta'>Counters read at {escape(report.budget_at)}.</p>",
        _figure(plots.burn(report.budgets), "Budget burn against pace"),
        _table(fmt.BUDGET_HEADERS, rows),
    ]


def _header(report: Report) -> list[str]:
    c = report.coverage
    return [
        f"<h1>{escape(report.title)}</h1>",
        "<p class='meta'>"
        f"Period: {escape(fmt.period_text(report.since, report.until))}. "
        f"Generated {escape(report.generated_at)}. "
        f"Decisions in the period: {c.decisions_in_period} ({escape(c.first_decision or '-')} to "
        f"{escape(c.last_decision or '-')}), of {c.decisions_read} in the log, which spans "
        f"{escape(c.log_first or '-')} to {escape(c.log_last or '-')}. Outcomes read: {c.outcomes_read}; "
        f"conversions read: {c.conversions_read} ({c.conversions_counted} attributed). "
        f"Duplicate entries ignored: {c.duplicates}; unreadable: {c.unreadable}.</p>",
    ]


def render_html(report: Report) -> str:
    """The whole document."""
    lift_rows = (fmt.lift_cells(r) for r in report.lift)
    parts = [
        *_header(report),
        "<h2>Lift against control groups</h2>",
        _figure(plots.forest(report.lift), "Lift with 95% intervals"),
        _table(fmt.LIFT_HEADERS, lift_rows, numeric_from=6),
        "<h2>Acceptance and value over time</h2>",
        _figure(plots.timeline(report.timeline, report.timeline_bucket), "Acceptance and value over time"),
        "<h2>KPIs</h2>",
        *_kpis(report),
        "<h2>Budget burn against pace</h2>",
        *_budgets(report),
        "<h2>No-offer reasons</h2>",
        _figure(plots.reasons(report.no_offer_reasons), "No-offer reasons"),
        _table(["reason", "decisions"], ([r.reason, str(r.decisions)] for r in report.no_offer_reasons)),
    ]
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>")
    parts.append("<h2>Definitions</h2>")
    parts += [f"<p class='defs'>{escape(line)}</p>" for line in fmt.definitions(report.window_seconds, report.kinds)]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(report.title)}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )
