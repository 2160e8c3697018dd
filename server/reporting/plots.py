"""The report's plots as PNG images (matplotlib, no display), each returned as a data: URI so the
HTML report embeds them and stays one file. A plot with nothing to show returns None."""

from __future__ import annotations

import base64
import io
from collections import defaultdict
from datetime import datetime, timedelta

from matplotlib.figure import Figure

from server.reporting.model import BurnRow, LiftResult, ReasonCount, TimelinePoint

DPI = 100


def _plain(text: str) -> str:
    """Text from the log or catalog shown as is: "$" would start matplotlib's math mode."""
    return text.replace("$", r"\$")


def _uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def timeline(points: tuple[TimelinePoint, ...], bucket: str) -> str | None:
    """Acceptance rate and revenue per bucket, a line per campaign."""
    if not points:
        return None
    series: dict[str, list[TimelinePoint]] = defaultdict(list)
    for p in points:
        series[p.campaign].append(p)
    figure = Figure(figsize=(9, 5.5))
    rate_axes, value_axes = figure.subplots(2, 1, sharex=True)
    for campaign, rows in sorted(series.items()):
        times = [datetime.fromisoformat(p.start) for p in rows]
        rates = [float("nan") if p.acceptance_rate is None else p.acceptance_rate * 100 for p in rows]
        rate_axes.plot(times, rates, marker="o", markersize=3, label=_plain(campaign))
        value_axes.plot(times, [p.revenue for p in rows], marker="o", markersize=3, label=_plain(campaign))
    # half a bucket either side: one bucket alone would otherwise be drawn across years
    starts = [datetime.fromisoformat(p.start) for p in points]
    half = timedelta(hours=0.5 if bucket == "hour" else 12)
    rate_axes.set_xlim(min(starts) - half, max(starts) + half)
    rate_axes.set_ylabel("acceptance rate (%)")
    rate_axes.set_title(f"Acceptance and value per {bucket}, by campaign (awards decided in the {bucket})")
    value_axes.set_ylabel("revenue")
    value_axes.set_xlabel(f"{bucket} (UTC)")
    rate_axes.legend(fontsize="small", loc="best")
    figure.autofmt_xdate()
    return _uri(figure)


def forest(results: tuple[LiftResult, ...]) -> str | None:
    """Conversion rate difference (treatment - control, points) with its 95% interval per scope;
    a hollow marker is a point estimate without an interval (not enough data)."""
    shown = [r for r in results if r.rate_difference_point is not None]
    if not shown:
        return None
    figure = Figure(figsize=(8, 0.6 * len(shown) + 1.4))
    axes = figure.subplots()
    for y, r in enumerate(reversed(shown)):
        if r.rate_difference is not None:
            e = r.rate_difference
            axes.errorbar(
                [e.value * 100],
                [y],
                xerr=[[(e.value - e.low) * 100], [(e.high - e.value) * 100]],
                fmt="o",
                color="tab:blue",
                capsize=4,
            )
        else:
            assert r.rate_difference_point is not None  # filtered above
            axes.plot([r.rate_difference_point * 100], [y], "o", mfc="none", color="tab:gray")
    axes.axvline(0, color="black", linewidth=1)
    axes.set_ylim(-0.6, len(shown) - 0.4)
    axes.set_yticks(range(len(shown)), [_label(r) for r in reversed(shown)])
    axes.set_xlabel("conversion rate difference, treatment - control (percentage points, 95% CI)")
    axes.set_title("Lift with 95% intervals (hollow: not enough data for an interval)")
    return _uri(figure)


def _label(r: LiftResult) -> str:
    return "programme" if r.scope == "programme" else _plain(f"campaign {r.name}")


def burn(rows: tuple[BurnRow, ...]) -> str | None:
    """Used as a share of each limit, with what pacing allows by now as a tick."""
    if not rows:
        return None
    figure = Figure(figsize=(8, 0.5 * len(rows) + 1.4))
    axes = figure.subplots()
    labels = [_plain(f"{r.kind} {r.id}: {r.measure}") for r in reversed(rows)]
    used = [100 * r.used / r.limit if r.limit else 0.0 for r in reversed(rows)]
    axes.barh(range(len(rows)), used, color="tab:orange", label="used")
    for y, r in enumerate(reversed(rows)):
        if r.pace_target is not None and r.limit:
            axes.plot([100 * r.pace_target / r.limit] * 2, [y - 0.4, y + 0.4], color="black", linewidth=2)
    axes.plot([], [], color="black", linewidth=2, label="pace target now")
    axes.axvline(100, color="tab:red", linestyle="--", linewidth=1, label="limit")
    axes.set_ylim(-0.6, len(rows) - 0.4)
    axes.set_yticks(range(len(rows)), labels)
    axes.set_xlabel("% of the limit")
    axes.set_title("Budget burn against pace")
    axes.legend(fontsize="small", loc="lower right")
    return _uri(figure)


def reasons(counts: tuple[ReasonCount, ...]) -> str | None:
    if not counts:
        return None
    figure = Figure(figsize=(8, 0.45 * len(counts) + 1.4))
    axes = figure.subplots()
    axes.barh(range(len(counts)), [c.decisions for c in reversed(counts)], color="tab:gray")
    axes.set_yticks(range(len(counts)), [_plain(c.reason) for c in reversed(counts)])
    axes.set_xlabel("decisions without an offer")
    axes.set_title("No-offer reasons")
    return _uri(figure)
