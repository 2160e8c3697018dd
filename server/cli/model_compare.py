"""The text and CSV of `nbo model compare` (the figures: server.models.compare)."""

from __future__ import annotations

import csv
from pathlib import Path

from server.cli.common import plural
from server.models.compare import Comparison, Estimate, Group

NOT_ENOUGH = "not enough data"
CSV_COLUMNS = (
    "row",
    "version",
    "role",
    "decisions",
    "awarded",
    "accepted",
    "acceptance",
    "acceptance_low",
    "acceptance_high",
    "value_per_decision",
    "value_low",
    "value_high",
)


def _shown(e: Estimate | None, signed: bool = False) -> str:
    if e is None:
        return NOT_ENOUGH
    sign = "+" if signed else ""
    return f"{e.value:{sign}.4f} [{e.low:{sign}.4f}, {e.high:{sign}.4f}]"


def _role(group: Group) -> str:
    return group.role or "alone"


def report(result: Comparison) -> list[str]:
    """The comparison as plain lines."""
    kept = sum(g.decisions for g in result.groups)
    left = ", ".join(f"{n} {why}" for why, n in sorted(result.excluded.items())) or "none"
    lines = [
        f"{plural(kept, 'decision')} compared; left out: {left}",
        "95% intervals by the normal approximation; acceptance = accepted or converted per awarded offer; "
        f"a figure needs {result.min_n} decisions (value) or awarded offers (acceptance)",
    ]
    if not result.groups:
        return [*lines, f"no decision to compare: {NOT_ENOUGH}"]
    for g in result.groups:
        lines.append(
            f"{g.version} ({_role(g)}): {g.decisions} decisions, {g.awarded} awarded, {g.accepted} accepted; "
            f"acceptance {_shown(g.acceptance(result.min_n))}; "
            f"value per decision {_shown(g.value(result.min_n))}"
        )
    for d in result.differences:
        lines.append(
            f"challenger {d.challenger.version} - champion {d.champion.version}: "
            f"acceptance {_shown(d.acceptance, signed=True)}; value per decision {_shown(d.value, signed=True)}"
        )
    if not result.differences:
        lines.append("no challenger decided beside a champion: no difference to give")
    return lines


def _figures(e: Estimate | None) -> list[str]:
    return ["", "", ""] if e is None else [repr(e.value), repr(e.low), repr(e.high)]


def write_csv(result: Comparison, path: Path) -> None:
    """One row per (version, role), then one per challenger - champion difference; figures with
    too little data are empty."""
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(CSV_COLUMNS)
        n = result.min_n
        for g in result.groups:
            counts = [str(g.decisions), str(g.awarded), str(g.accepted)]
            out.writerow(["model", g.version, _role(g), *counts, *_figures(g.acceptance(n)), *_figures(g.value(n))])
        for d in result.differences:
            name = f"{d.challenger.version} - {d.champion.version}"
            out.writerow(
                ["difference", name, "challenger - champion", "", "", "", *_figures(d.acceptance), *_figures(d.value)]
            )
