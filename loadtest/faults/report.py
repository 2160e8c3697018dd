"""The fault suite's report: per scenario a table of target, measured figure and PASS/FAIL."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass
class Row:
    target: str
    measured: str
    passed: bool | None  # None: a figure for context, no target


@dataclass
class Result:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0
    values: dict[str, float] = field(default_factory=dict)  # raw figures, for tests

    def check(self, target: str, measured: str, passed: bool) -> None:
        self.rows.append(Row(target, measured, passed))

    def info(self, what: str, measured: str) -> None:
        self.rows.append(Row(what, measured, None))

    @property
    def passed(self) -> bool:
        return not self.error and all(r.passed is not False for r in self.rows)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def pct(part: float, whole: float) -> str:
    return "n/a" if not whole else f"{100 * part / whole:.2f} %"


def codes(names: Iterable[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in Counter(names).most_common()) or "none"


def machine() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True
    ).stdout.strip()
    return (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {commit or '?'}; "
        f"{os.cpu_count()} CPUs ({platform.machine()}); load average at start {load}"
    )


def render(results: Sequence[Result], header: str) -> str:
    lines = ["# Fault suite report", "", header, ""]
    verdict = sum(r.passed for r in results)
    lines += [f"**{verdict} of {len(results)} scenarios met every target.**", ""]
    for res in results:
        lines += [f"## {res.name}: {res.title}", ""]
        if res.error:
            lines += [f"**ERROR**: {res.error}", ""]
        if res.rows:
            lines += ["| target | measured | result |", "|---|---|---|"]
            for row in res.rows:
                verdict_cell = "" if row.passed is None else "PASS" if row.passed else "**FAIL**"
                lines.append(f"| {row.target} | {row.measured} | {verdict_cell} |")
            lines.append("")
        lines += [f"- {note}" for note in res.notes]
        lines += [f"- took {res.seconds:.0f} s", ""]
    return "\n".join(lines)
