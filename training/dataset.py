"""The logged-interaction dataset: one row per decision that presented an offer, and its outcome.

This is the one schema shared by the synthetic log (`training.world`), `nbo train` and the
decision-log export. Columns, in order (see docs/dataset.md for the field-by-field reference):

* fixed columns (`FIXED_COLUMNS`): `decision_id`, `timestamp` (epoch seconds), `customer_id`,
  `channel`, `placement`, `offer_id`, `selection_probability` (the logging policy's probability
  of the offer it chose, in (0, 1]), `outcome` (1 = accepted, 0 = not) and `value` (realised
  value, 0 when not accepted);
* the customer's feature columns at decision time, named as in the feature schema; text columns
  are categorical;
* request context columns `ctx_<key>` (numbers; missing = null);
* optionally `unavailable` (`UNAVAILABLE`): the offers, space-separated, that the customer could
  not be given at decision time for a reason the row cannot rebuild (contact policy, a campaign
  control group, an exhausted budget). Neither a feature nor context: `nbo ope` removes them
  from the row's candidates. `nbo export` writes it.

`write_dataset` writes CSV or Parquet by suffix; `read_dataset` reads either, checks the fixed
columns and raises `DatasetError` naming the column and the line (CSV) or row (Parquet).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

# the serving side names context inputs; the dataset's context columns carry the same names
from server.models.inputs import CONTEXT_PREFIX as CONTEXT_PREFIX  # noqa: PLC0414 (a re-export)

TEXT_COLUMNS = ("decision_id", "customer_id", "channel", "placement", "offer_id")
NUMERIC_COLUMNS = ("timestamp", "selection_probability", "outcome", "value")
FIXED_COLUMNS = (
    "decision_id",
    "timestamp",
    "customer_id",
    "channel",
    "placement",
    "offer_id",
    "selection_probability",
    "outcome",
    "value",
)
# optional columns that describe the decision, not the customer: never features or context
UNAVAILABLE = "unavailable"
META_COLUMNS = (UNAVAILABLE,)
CHANNELS = ("call_centre", "web", "mobile_app", "email")
CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
_OPTIONAL_TEXT = frozenset({"placement", UNAVAILABLE})
# a partitioned dataset's directories: date=YYYY-MM-DD (training/dataset_writer.py)
PARTITION_KEY = "date"


class DatasetError(ValueError):
    """The file is not a valid interaction dataset; the message names the column and line/row."""


# -- writing -----------------------------------------------------------------------------------
def _array(values: Any) -> pa.Array:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values
    arr = np.asarray(values)
    if arr.dtype.kind in "US":
        return pa.array(arr.astype(str), type=pa.string())
    if arr.dtype.kind == "O":
        return pa.array(list(arr), from_pandas=True)
    return pa.array(arr, from_pandas=True)  # NaN -> null, so CSV and Parquet agree


def dataset_table(path: Path, columns: Mapping[str, Sequence[Any] | np.ndarray[Any, Any]]) -> pa.Table:
    """`columns` as a table, fixed columns first, then the rest in the given order; `path` names errors."""
    missing = [c for c in FIXED_COLUMNS if c not in columns]
    if missing:
        raise DatasetError(f"{path}: missing column {missing[0]!r} (required: {', '.join(FIXED_COLUMNS)})")
    names = [*FIXED_COLUMNS, *(c for c in columns if c not in FIXED_COLUMNS)]
    lengths = {len(columns[n]) for n in names}
    if len(lengths) > 1:
        raise DatasetError(f"{path}: columns have different lengths {sorted(lengths)}")
    return pa.table({n: _array(columns[n]) for n in names})


def write_dataset(path: Path | str, columns: Mapping[str, Sequence[Any] | np.ndarray[Any, Any]]) -> None:
    """Write `columns` (fixed columns first, then the rest in the given order) as .csv or .parquet/.pq."""
    path = Path(path)
    table = dataset_table(path, columns)
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        pa_csv.write_csv(table, str(path))
    elif suffix in PARQUET_SUFFIXES:
        pq.write_table(table, str(path))
    else:
        raise DatasetError(f"{path}: unsupported file type {suffix or '(no suffix)'!r}; expected .csv, .parquet or .pq")


# -- reading -----------------------------------------------------------------------------------
def partition_files(directory: Path) -> list[Path]:
    """The Parquet files of a partitioned dataset (training/dataset_writer.py), in day then part order;
    names starting with `.` or `_` (unfinished files, markers) are not data."""
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.suffix.lower() in PARQUET_SUFFIXES and not p.name.startswith((".", "_"))
    )


def read_dataset(path: Path | str) -> pa.Table:
    """Read and check a dataset file or partitioned directory; return it with canonical fixed-column types.

    Fixed columns come back as string (`placement` null -> ""), float64 (`timestamp`,
    `selection_probability`, `value`) and int64 (`outcome`); numeric feature and `ctx_*`
    columns as float64 (so CSV and Parquet read the same), text feature columns as string.
    Raises DatasetError on the first problem found.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        table, csv = _read_partitions(path), False
    elif suffix in CSV_SUFFIXES:
        table, csv = _read_csv(path), True
    elif suffix in PARQUET_SUFFIXES:
        try:
            table, csv = pq.read_table(str(path)), False
        except (pa.ArrowInvalid, OSError) as err:
            if path.exists() and path.stat().st_size == 0:
                raise DatasetError(f"{path}: empty file") from None
            raise DatasetError(f"{path}: cannot read Parquet: {err}") from None
    else:
        raise DatasetError(f"{path}: unsupported file type {suffix or '(no suffix)'!r}; expected .csv, .parquet or .pq")
    return _check(table, path, csv)


def _read_partitions(path: Path) -> pa.Table:
    files = partition_files(path)
    if not files:
        raise DatasetError(f"{path}: no Parquet file in the directory")
    try:
        # the files' own columns: the partition key is in the path only (dataset_writer.py)
        return pa.concat_tables([pq.read_table(str(f), partitioning=None) for f in files])
    except (pa.ArrowInvalid, OSError) as err:
        raise DatasetError(f"{path}: cannot read Parquet: {err}") from None


def _read_csv(path: Path) -> pa.Table:
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if path.stat().st_size == 0 or not path.read_bytes()[:4096].strip():
        raise DatasetError(f"{path}: empty file")
    convert = pa_csv.ConvertOptions(column_types={c: pa.string() for c in (*TEXT_COLUMNS, *META_COLUMNS)})
    try:
        return pa_csv.read_csv(str(path), convert_options=convert)
    except pa.ArrowInvalid as err:
        raise DatasetError(f"{path}: {err}") from None


def _where(i: int, csv: bool) -> str:
    """Location of 0-based data row `i`: the file line for CSV (header = line 1), else the row."""
    return f"line {i + 2}" if csv else f"row {i + 1}"


def _show(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _is_numeric(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t))


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t))


def _first_non_number(values: list[Any]) -> int | None:
    for i, v in enumerate(values):
        if v is None:
            continue
        try:
            float(v)
        except (TypeError, ValueError):
            return i
    return None


def check_table(table: pa.Table, path: Path) -> pa.Table:
    """`read_dataset`'s checks and canonical types for a table read otherwise (one partition of a
    distributed dataset); `path` names errors, rows are counted from the table's first."""
    return _check(table, path, csv=False)


def _check(table: pa.Table, path: Path, csv: bool) -> pa.Table:
    names: list[str] = table.column_names
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise DatasetError(f"{path}: duplicate column {n!r}")
        seen.add(n)
    for c in FIXED_COLUMNS:
        if c not in seen:
            raise DatasetError(f"{path}: missing column {c!r} (required: {', '.join(FIXED_COLUMNS)})")
    if table.num_rows == 0:
        raise DatasetError(f"{path}: no rows")
    out: dict[str, pa.ChunkedArray] = {}
    for c in TEXT_COLUMNS:
        out[c] = _text(table.column(c), c, path, csv)
    for c in NUMERIC_COLUMNS:
        out[c] = _number(table.column(c), c, path, csv, what="column")
    _check_values(out, path, csv)
    for n in names:
        if n in out:
            continue
        col = table.column(n)
        if n in META_COLUMNS:
            out[n] = _text(col, n, path, csv)
        elif n.startswith(CONTEXT_PREFIX):
            out[n] = _number(col, n, path, csv, what="context column", allow_missing=True)
        elif _is_text(col.type):
            out[n] = col.cast(pa.string())
        elif pa.types.is_null(col.type) or _is_numeric(col.type) or pa.types.is_boolean(col.type):
            out[n] = col.cast(pa.float64())
        else:
            raise DatasetError(f"{path}: feature column {n!r} must be numeric or text, got {col.type}")
    outcome = out["outcome"].cast(pa.int64())
    out["outcome"] = outcome
    ordered = [*FIXED_COLUMNS, *(n for n in names if n not in FIXED_COLUMNS)]
    return pa.table({n: out[n] for n in ordered})


def _text(col: pa.ChunkedArray, name: str, path: Path, csv: bool) -> pa.ChunkedArray:
    if pa.types.is_dictionary(col.type) or pa.types.is_large_string(col.type):
        col = col.cast(pa.string())
    if not pa.types.is_string(col.type):
        if name in _OPTIONAL_TEXT and pa.types.is_null(col.type):
            return pa.chunked_array([pa.array([""] * len(col), type=pa.string())])
        raise DatasetError(f"{path}: column {name!r} must be text, got {col.type}")
    values: list[str | None] = col.to_pylist()
    if name in _OPTIONAL_TEXT:
        if col.null_count:
            return pa.chunked_array([pa.array([v or "" for v in values], type=pa.string())])
        return col
    for i, v in enumerate(values):
        if v is None or v == "":
            raise DatasetError(f"{path}: column {name!r} has an empty value at {_where(i, csv)}")
        if name == "channel" and v not in CHANNELS:
            raise DatasetError(
                f"{path}: column 'channel' has unknown channel {v!r} at {_where(i, csv)} "
                f"(channels: {', '.join(CHANNELS)})"
            )
    return col


def _number(
    col: pa.ChunkedArray, name: str, path: Path, csv: bool, *, what: str, allow_missing: bool = False
) -> pa.ChunkedArray:
    t = col.type
    if pa.types.is_null(t):
        if allow_missing:
            return col.cast(pa.float64())
        raise DatasetError(f"{path}: {what} {name!r} has a missing value at {_where(0, csv)}")
    if pa.types.is_boolean(t):
        col = col.cast(pa.float64())
    elif not _is_numeric(t):
        values = col.to_pylist()
        bad = _first_non_number(values) if pa.types.is_string(t) or pa.types.is_large_string(t) else None
        if bad is None:
            raise DatasetError(f"{path}: {what} {name!r} must be numeric, got {t}")
        raise DatasetError(f"{path}: {what} {name!r} must be numeric; {_where(bad, csv)} has {values[bad]!r}")
    col = col.cast(pa.float64())
    if not allow_missing:
        arr = col.to_numpy()
        bad_idx = np.flatnonzero(np.isnan(arr))
        if bad_idx.size:
            raise DatasetError(f"{path}: {what} {name!r} has a missing value at {_where(int(bad_idx[0]), csv)}")
    return col


def _check_values(out: Mapping[str, pa.ChunkedArray], path: Path, csv: bool) -> None:
    p = out["selection_probability"].to_numpy()
    bad = np.flatnonzero(~((p > 0) & (p <= 1)))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(
            f"{path}: column 'selection_probability' must be in (0, 1]; {_where(i, csv)} has {_show(float(p[i]))}"
        )
    y = out["outcome"].to_numpy()
    bad = np.flatnonzero((y != 0) & (y != 1))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(f"{path}: column 'outcome' must be 0 or 1; {_where(i, csv)} has {_show(float(y[i]))}")
    ts = out["timestamp"].to_numpy()
    bad = np.flatnonzero(~np.isfinite(ts))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(f"{path}: column 'timestamp' must be finite; {_where(i, csv)} has {_show(float(ts[i]))}")


# -- column roles ------------------------------------------------------------------------------
def context_columns(table: pa.Table) -> list[str]:
    """The `ctx_<key>` columns, in file order."""
    return [n for n in table.column_names if n.startswith(CONTEXT_PREFIX) and n not in FIXED_COLUMNS]


def context_keys(table: pa.Table) -> list[str]:
    return [n[len(CONTEXT_PREFIX) :] for n in context_columns(table)]


def feature_columns(table: pa.Table) -> list[str]:
    """The customer feature columns: everything beyond the fixed, meta and context columns."""
    return [
        n
        for n in table.column_names
        if n not in FIXED_COLUMNS and n not in META_COLUMNS and not n.startswith(CONTEXT_PREFIX)
    ]


def categorical_columns(table: pa.Table) -> list[str]:
    """Feature columns holding text: categorical."""
    return [n for n in feature_columns(table) if pa.types.is_string(table.column(n).type)]
