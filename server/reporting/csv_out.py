"""The report as a directory of CSV files, one per section, each with its own header: a
spreadsheet opens any of them directly, where one file mixing sections would need filtering.

kpis.csv (every dimension, column `dimension`), lift.csv (nested groups flattened as
`treatment_customers`, `rate_difference_low`, ...), timeline.csv, budgets.csv,
no_offer_reasons.csv, and summary.csv (the period, the log coverage and the notes, as name,value).
Numbers are written raw (rates as fractions); undefined ones are empty.
"""

from __future__ import annotations

import csv
import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server.reporting.model import BurnRow, KpiRow, LiftResult, ReasonCount, Report, TimelinePoint

SECTIONS: tuple[tuple[str, type[Any], str], ...] = (
    ("kpis.csv", KpiRow, "kpis"),
    ("lift.csv", LiftResult, "lift"),
    ("timeline.csv", TimelinePoint, "timeline"),
    ("budgets.csv", BurnRow, "budgets"),
    ("no_offer_reasons.csv", ReasonCount, "no_offer_reasons"),
)
SUMMARY = "summary.csv"


def _dataclass_of(hint: Any) -> type[Any] | None:
    """The dataclass a field holds (`Estimate` of `Estimate | None`), or None."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    found = [o for o in options if isinstance(o, type) and dataclasses.is_dataclass(o)]
    return found[0] if found else None


def columns(cls: type[Any], prefix: str = "") -> list[str]:
    """The flat columns of a dataclass: nested dataclass fields as <field>_<subfield>."""
    out: list[str] = []
    for name, hint in typing.get_type_hints(cls).items():
        nested = _dataclass_of(hint)
        out += columns(nested, f"{prefix}{name}_") if nested is not None else [prefix + name]
    return out


def _flat(value: Any, cls: type[Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, hint in typing.get_type_hints(cls).items():
        item = None if value is None else getattr(value, name)
        nested = _dataclass_of(hint)
        if nested is not None:
            out.update(_flat(item, nested, f"{prefix}{name}_"))
        else:
            out[prefix + name] = item
    return out


def _write(path: Path, rows: Sequence[dict[str, Any]], header: Sequence[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.DictWriter(fh, fieldnames=list(header))
        out.writeheader()
        for row in rows:
            out.writerow({k: "" if v is None else v for k, v in row.items()})


def write_csv(report: Report, directory: Path) -> list[Path]:
    """Write every section's file and summary.csv into `directory` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, cls, attribute in SECTIONS:
        rows = [_flat(item, cls) for item in getattr(report, attribute)]
        _write(directory / name, rows, columns(cls))
        written.append(directory / name)
    _write(directory / SUMMARY, _summary(report), ("name", "value"))
    written.append(directory / SUMMARY)
    return written


def _summary(report: Report) -> list[dict[str, Any]]:
    pairs: list[tuple[str, Any]] = [
        ("title", report.title),
        ("generated_at", report.generated_at),
        ("since", report.since),
        ("until", report.until),
        ("window_seconds", report.window_seconds),
        ("kinds", " ".join(report.kinds)),
        ("timeline_bucket", report.timeline_bucket),
        ("budget_at", report.budget_at),
    ]
    pairs += [("coverage_" + k, v) for k, v in dataclasses.asdict(report.coverage).items()]
    pairs += [("note", note) for note in report.notes]
    return [{"name": n, "value": v} for n, v in pairs]
