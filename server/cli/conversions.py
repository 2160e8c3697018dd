"""`nbo conversions import FILE.csv`: business results from a batch system (a shop's order export,
a CRM's sign-ups) into the conversion log, as RecordConversion would record them one by one.

The whole file is checked first; one bad cell and nothing is imported, every problem printed as
`file:line:column: field: reason`. Then rows are recorded in pipelined batches, each once per
event id (server.state.conversions): importing the same file again records nothing twice, and an
import cut short is finished by running it again.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from server.cli.common import console, err_console, open_redis, plural, print_lines, redis_flags, settings
from server.domain import ConversionReport, RequestError
from server.pipeline.conversion import conversion_record, validate_conversion
from server.pipeline.idempotency import conversion_conflict, conversion_fingerprint
from server.state.conversions import record_batch
from server.state.store import CONFLICT, RECORDED

NAME = "conversions"
HELP = "import customers' conversions (purchases, sign-ups) from CSV, once per event id"
REQUIRED = ("customer_id", "kind", "value", "event_id")
OPTIONAL = ("occurred_at",)
MAX_SHOWN = 20  # problems printed; the count says how many more


def add_arguments(p: argparse.ArgumentParser) -> None:
    nested = p.add_subparsers(dest="conversions_command", required=True)
    i = nested.add_parser(
        "import",
        help="import a CSV file (customer_id,kind,value,event_id[,occurred_at])",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    redis_flags(i)
    i.add_argument("file", type=Path, help="CSV with a header; occurred_at is ISO 8601 (naive = UTC) or Unix seconds")
    i.add_argument("--batch", type=int, default=1000, help="conversions per pipelined round trip (default 1000)")
    i.add_argument("--dry-run", action="store_true", help="check the file only")


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    columns: dict[str, int]  # field -> 1-based character column of its cell
    report: ConversionReport


class FileProblem(ValueError):
    """`file:line:column: field: reason`."""


def run(opts: argparse.Namespace) -> int:
    window = settings(opts).conversion_window_seconds
    now = time.time()
    try:
        rows, problems = read_rows(opts.file, now, window)
    except (OSError, FileProblem) as err:
        err_console.print(f"error: {err}", highlight=False, markup=False, soft_wrap=True)
        return 2
    if problems:
        shown = problems[:MAX_SHOWN]
        more = [f"... and {len(problems) - MAX_SHOWN} more"] if len(problems) > MAX_SHOWN else []
        print_lines([*shown, *more, f"{plural(len(problems), 'problem')}; nothing imported"], stderr=True)
        return 2
    if opts.dry_run:
        print_lines([f"{opts.file}: {plural(len(rows), 'conversion')}, all valid (dry run: nothing imported)"])
        return 0
    with open_redis(opts) as (client, keys):
        recorded = duplicates = 0
        conflicts: list[str] = []
        for start in range(0, len(rows), max(1, opts.batch)):
            chunk = rows[start : start + max(1, opts.batch)]
            batch = [(conversion_record(r.report, _occurred(r, now), now, "import"), _fp(r)) for r in chunk]
            for row, (status, stored) in zip(chunk, record_batch(client, keys, batch, window), strict=True):
                if status == RECORDED:
                    recorded += 1
                elif status == CONFLICT:
                    conflicts.append(_at(opts.file, row, "event_id") + str(conversion_conflict(row.report, stored)))
                else:
                    duplicates += 1
    print_lines([f"{opts.file}: {plural(recorded, 'conversion')} recorded, {plural(duplicates, 'duplicate')}"])
    if conflicts:
        print_lines([*conflicts, f"{plural(len(conflicts), 'conflict')}: those rows were not recorded"], stderr=True)
        return 1
    console.print(f"conversion window: {window / 86_400:g} days", highlight=False)
    return 0


def _fp(row: Row) -> str:
    return conversion_fingerprint(row.report)


def _occurred(row: Row, now: float) -> float:
    return row.report.occurred_at or now


def _at(path: Path, row: Row, field: str) -> str:
    return f"{path}:{row.line}:{row.columns.get(field, 1)}: "


def read_rows(path: Path, now: float, window: int) -> tuple[list[Row], list[str]]:
    """The file's rows, and every problem found (empty when all are valid)."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if not lines:
        raise FileProblem(f"{path}: empty file; expected a header with {', '.join(REQUIRED)}")
    header = [h.strip() for h in next(csv.reader([lines[0]]))]
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    if missing or unknown:
        what = f"missing {', '.join(missing)}" if missing else f"unknown column {', '.join(unknown)}"
        raise FileProblem(f"{path}:1:1: header: {what}; expected {', '.join(REQUIRED)}[, occurred_at]")
    rows: list[Row] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            row = _row(path, number, line, header)
            validate_conversion(row.report, now, window)
        except FileProblem as err:
            problems.append(str(err))
            continue
        except RequestError as err:
            problems.append(f"{path}:{number}:{row.columns.get(err.field, 1)}: {err.field}: {err.reason}")
            continue
        if (first := seen.setdefault(row.report.event_id, number)) != number:
            problems.append(f"{_at(path, row, 'event_id')}event_id: {row.report.event_id!r} repeats line {first}")
            continue
        rows.append(row)
    return rows, problems


def _row(path: Path, number: int, line: str, header: Sequence[str]) -> Row:
    cells = next(csv.reader(io.StringIO(line)))
    starts = list(_cell_columns(line))
    if len(cells) != len(header):
        raise FileProblem(f"{path}:{number}:1: row: {len(cells)} cells, the header has {len(header)}")
    values = dict(zip(header, (c.strip() for c in cells), strict=True))
    columns = dict(zip(header, starts, strict=False))
    try:
        value = float(values["value"]) if values["value"] else math.nan
    except ValueError:
        raise FileProblem(f"{path}:{number}:{columns['value']}: value: not a number: {values['value']!r}") from None
    try:
        occurred = _time(values.get("occurred_at", ""))
    except ValueError:
        at = columns.get("occurred_at", 1)
        bad = values.get("occurred_at", "")
        raise FileProblem(f"{path}:{number}:{at}: occurred_at: not ISO 8601 or Unix seconds: {bad!r}") from None
    report = ConversionReport(values["customer_id"], values["kind"], value, values["event_id"], occurred)
    return Row(number, columns, report)


def _time(text: str) -> float:
    """Unix seconds of an ISO 8601 time (naive = UTC) or of a number; 0.0 (now) when blank."""
    if not text:
        return 0.0
    try:
        return float(text)
    except ValueError:
        at = datetime.fromisoformat(text)
        return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp()


def _cell_columns(line: str) -> Iterator[int]:
    """The 1-based character column where each cell of a CSV line starts (quotes understood)."""
    yield 1
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted  # a doubled quote inside a quoted cell toggles twice
        elif ch == "," and not quoted:
            yield i + 2
