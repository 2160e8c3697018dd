"""Customer feature files (CSV, Parquet): reading, validation and merging with the live schema.

`read_feature_file` reads and validates a file without touching Redis: every bad cell becomes a
`RowError` with its file line, and rows with errors are left out of the table, so a caller can
refuse the whole file (the CLI default) or load the good rows and write `FeatureTable.rejected`
somewhere. `server.state.feature_store.FeatureStore.load` then writes the table to Redis.

CSV files are UTF-8 with a header row. Quoted line breaks inside values are not supported:
arrow's parallel reader splits blocks at line ends, and line numbers in errors count physical
lines. A line with every cell empty (including a blank line) is skipped without an error.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from server import ids
from server.features.schema import FeatureKind, FeatureSchema, FeatureSpec
from server.ids import MAX_ID_LENGTH, id_problem

ID_COLUMN = "customer_id"
CSV_SUFFIXES = frozenset({".csv"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})

# RE2 (arrow) form of the id rule, used only to find candidates cheaply; every candidate's
# message still comes from id_problem, so the two can only disagree towards more checking.
_ID_FULL = f"^(?:{ids.ID_RE.pattern})$"
# What arrow's float cast accepts, minus inf/nan which are errors anyway; checked after trimming.
_NUMBER = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_NON_FINITE_TEXT = r"(?i)^[+-]?(?:inf|infinity|nan)$"
_CONTROL = r"[\x00-\x1f\x7f]"
_CONTROL_RE = re.compile(_CONTROL)
_QUOTE_MAX = 40
_FLOAT32_MAX = float(np.finfo(np.float32).max)

Rows = npt.NDArray[np.int64]  # row indices into the table as read
_NO_ROWS: Rows = np.empty(0, dtype=np.int64)


class SchemaMismatch(ValueError):
    """The file's columns (names or kinds) differ from the live schema's."""


class FeatureStoreError(ValueError):
    """Redis holds something the store cannot use (a dangling pointer, an unreadable vector)."""


@dataclass(frozen=True, slots=True)
class RowError:
    path: str
    line: int
    column: str  # "" when the row as a whole is bad (wrong number of cells)
    reason: str

    def __str__(self) -> str:
        if not self.column:
            return f"{self.path}:{self.line}: {self.reason}"
        return f"{self.path}:{self.line}: {self.column}: {self.reason}"


@dataclass(frozen=True, slots=True)
class RejectedRow:
    line: int
    values: tuple[str, ...]  # the row's cells as read, in file order ("" = empty; numbers read typed are re-formatted)
    reasons: tuple[str, ...]  # "column: reason", one per bad cell


@dataclass
class FeatureTable:
    customer_ids: list[str]
    matrix: npt.NDArray[np.float32]  # (rows, features), any memory order; categorical = level index, missing NaN
    specs: tuple[FeatureSpec, ...]  # file order, without customer_id
    lines: list[int]  # source line of each row (CSV: header is line 1; Parquet: row number + 1)
    errors: list[RowError] = field(default_factory=list)  # sorted by line; those rows are not above
    path: str = ""
    header: tuple[str, ...] = ()  # every column of the file, customer_id included
    _rejects: _Rejects | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.customer_ids)

    @property
    def rejected(self) -> list[RejectedRow]:
        """One entry per bad line, sorted by line, with the row's cells; built on first use."""
        return self._rejects.rows() if self._rejects is not None else []

    def write_rejects(self, out: Path) -> int:
        """Write the rejected rows as CSV (`line`, `errors`, then the file's columns); return their count."""
        rejected = self.rejected
        with Path(out).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["line", "errors", *self.header])
            writer.writerows([row.line, "; ".join(row.reasons), *row.values] for row in rejected)
        return len(rejected)


@dataclass(frozen=True, slots=True)
class LoadResult:
    rows: int
    schema_version: int
    schema_changed: bool
    seconds: float


# -- reading ---------------------------------------------------------------------------------


@dataclass
class _Raw:
    path: str
    names: list[str]
    table: pa.Table
    lines: npt.NDArray[np.int64]  # per table row
    malformed: list[tuple[int, str, str]] = field(default_factory=list)  # (line, text, reason)


def read_feature_file(
    path: Path | str, categorical: Collection[str] = (), base: FeatureSchema | None = None
) -> FeatureTable:
    """Read and validate a .csv or .parquet/.pq file of customer features.

    `categorical` names the columns holding levels (strings); every other column but
    customer_id must be numeric. With `base` (the live schema) of the same layout, known levels
    keep their indices and new ones are appended in sorted order, so stored vectors stay valid.
    Raises ValueError for problems with the file as a whole; bad rows go to `errors`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        raw = _read_csv(path, categorical)
    elif suffix in PARQUET_SUFFIXES:
        raw = _read_parquet(path)
    else:
        raise ValueError(f"{path}: unsupported file type {suffix or '(no suffix)'!r}; expected .csv, .parquet or .pq")
    return _validate(raw, categorical, base)


def _check_header(path: Path, names: Sequence[str]) -> None:
    for i, name in enumerate(names, 1):
        if not name:
            raise ValueError(f"{path}: column {i} of the header has no name")
    dups = sorted(name for name, count in Counter(names).items() if count > 1)
    if dups:
        raise ValueError(f"{path}: duplicate column name(s): {', '.join(dups)}")
    if ID_COLUMN not in names:
        raise ValueError(f"{path}: no {ID_COLUMN} column (columns are: {_listing(names)})")
    if len(names) < 2:
        raise ValueError(f"{path}: no feature columns besides {ID_COLUMN}")


def _listing(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _read_csv(path: Path, categorical: Collection[str]) -> _Raw:
    with path.open("rb") as fh:
        first = fh.readline()
    if not first.strip():
        raise ValueError(f"{path}: empty file; expected a header row with {ID_COLUMN} and feature columns")
    try:
        header_text = first.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: the header is not UTF-8 text ({err})") from None
    names = [n.strip() for n in next(csv.reader([header_text.rstrip("\r\n")]))]
    _check_header(path, names)

    def read(types: dict[str, pa.DataType], threads: bool) -> tuple[pa.Table, list[tuple[int | None, str, int]]]:
        bad: list[tuple[int | None, str, int]] = []

        def on_invalid(row: Any) -> str:
            bad.append((row.number, row.text, row.actual_columns))
            return "skip"

        table = pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(skip_rows=1, column_names=names, use_threads=threads, block_size=1 << 22),
            # Blank lines stay rows (of nulls) so row index + 2 is the line number.
            parse_options=pa_csv.ParseOptions(ignore_empty_lines=False, invalid_row_handler=on_invalid),
            convert_options=pa_csv.ConvertOptions(
                column_types=types,
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
                null_values=[""],  # only empty is missing: "NA" or "nan" in a numeric column is an error
            ),
        )
        return table, bad

    # Arrow converts numbers while it parses, in parallel; only a file with a cell it cannot
    # convert (or inf/nan/too large for float32, whose text we want to quote) is read again as
    # text, to find each one.
    numeric = [n for n in names if n != ID_COLUMN and n not in categorical]
    types = {n: pa.float64() if n in numeric else pa.string() for n in names}
    try:
        try:
            table, bad = read(types, threads=True)
            typed_ok = all(_fits_float32(table[n]) for n in numeric)
        except pa.ArrowInvalid:
            typed_ok = False
        if not typed_ok:
            types = dict.fromkeys(names, pa.string())
            table, bad = read(types, threads=True)
        if any(number is None for number, _, _ in bad):
            # The parallel reader cannot number the rows it skips; rare, so read again serially.
            table, bad = read(types, threads=False)
    except pa.ArrowInvalid as err:
        raise ValueError(f"{path}: {err}") from None
    lines = np.arange(2, table.num_rows + len(bad) + 2, dtype=np.int64)
    malformed = [(int(number or 0), text, f"expected {len(names)} cells, got {count}") for number, text, count in bad]
    if malformed:
        lines = np.delete(lines, [line - 2 for line, _, _ in malformed])
    table, lines = _drop_blank_rows(table, lines)
    return _Raw(str(path), names, table, lines, sorted(malformed))


def _fits_float32(column: pa.ChunkedArray) -> bool:
    if pc.all(pc.is_finite(column)).as_py() is False:
        return False
    low, high = (v.as_py() for v in pc.min_max(column).values())
    return low is None or (low >= -_FLOAT32_MAX and high <= _FLOAT32_MAX)


def _drop_blank_rows(table: pa.Table, lines: npt.NDArray[np.int64]) -> tuple[pa.Table, npt.NDArray[np.int64]]:
    id_null = table[ID_COLUMN].is_null().to_numpy(zero_copy_only=False)
    candidates = np.flatnonzero(id_null)
    if not len(candidates):
        return table, lines
    blank = np.ones(len(candidates), dtype=bool)
    for column in table.columns:
        blank &= column.take(candidates).is_null().to_numpy(zero_copy_only=False)
    if not blank.any():
        return table, lines
    keep = np.ones(table.num_rows, dtype=bool)
    keep[candidates[blank]] = False
    return table.filter(pa.array(keep)), lines[keep]


def _read_parquet(path: Path) -> _Raw:
    try:
        table = pq.read_table(path)
    except pa.ArrowInvalid as err:
        raise ValueError(f"{path}: not a readable Parquet file: {err}") from None
    names = list(table.column_names)
    _check_header(path, names)
    return _Raw(str(path), names, table, np.arange(1, table.num_rows + 1, dtype=np.int64))


def _quote(value: str) -> str:
    """A cell's text for a message: cut short, quoted, quotes and backslashes escaped (as _quote_all)."""
    if len(value) > _QUOTE_MAX:
        value = value[:_QUOTE_MAX] + "..."
    return '"' + _CONTROL_RE.sub("?", value.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def _quote_all(texts: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """_quote for a whole array at once: a column of a million words must not take a minute."""
    long = pc.greater(pc.utf8_length(texts), _QUOTE_MAX)
    cut = pc.if_else(long, pc.binary_join_element_wise(pc.utf8_slice_codeunits(texts, 0, _QUOTE_MAX), "...", ""), texts)
    escaped = pc.replace_substring(pc.replace_substring(cut, "\\", "\\\\"), '"', '\\"')
    return pc.binary_join_element_wise('"', pc.replace_substring_regex(escaped, _CONTROL, "?"), '"', "")


def _messages(prefix: str | pa.Array | pa.ChunkedArray, texts: pa.Array | pa.ChunkedArray) -> list[str]:
    if not len(texts):
        return []
    joined: list[str] = pc.binary_join_element_wise(prefix, _quote_all(_text_array(texts)), "").to_pylist()
    return joined


def _text_array(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = pc.cast(values, pa.string())
    return pc.fill_null(values, "")


def _as_strings(column: pa.ChunkedArray, path: str, name: str) -> pa.ChunkedArray:
    t = column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return column
    if pa.types.is_dictionary(t) or pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_null(t):
        return pc.cast(column, pa.string())
    raise ValueError(f"{path}: column {name} has type {t}; expected text (or integers)")


def _is_number_type(t: pa.DataType) -> bool:
    checks = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal, pa.types.is_boolean, pa.types.is_null)
    return any(bool(check(t)) for check in checks)


def _numeric(column: pa.ChunkedArray, path: str, name: str) -> tuple[npt.NDArray[np.float64], Rows, list[str]]:
    """The column as float64 with NaN for missing, plus the bad rows and why each is bad."""
    t = column.type
    if _is_number_type(t):
        # unsafe: an integer beyond 2**53 may round, which float32 storage does anyway
        values = pc.cast(column, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        # NaN in a typed float column is how pandas writes missing, so it is missing here too.
        rows = np.flatnonzero(np.isinf(values))
        return values, rows, [f"not finite: {_quote(str(v))}" for v in values[rows].tolist()]
    if pa.types.is_dictionary(t):
        column = pc.cast(column, pa.string())
    elif not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise ValueError(f"{path}: column {name} has type {t}; expected numbers (or declare it categorical)")
    bad: list[Rows] = []
    reasons: list[str] = []
    try:
        cast = pc.cast(column, pa.float64())
    except pa.ArrowInvalid:
        # Only for a column with a cell arrow cannot parse: classify every cell, vectorised.
        trimmed = pc.utf8_trim_whitespace(column)
        looks = pc.fill_null(pc.match_substring_regex(trimmed, _NUMBER), True)  # null is missing, fine
        words = pc.fill_null(pc.and_(pc.invert(looks), pc.not_equal(trimmed, "")), False)
        rows = np.flatnonzero(words.to_numpy(zero_copy_only=False))
        texts = column.take(rows)
        non_finite = pc.match_substring_regex(pc.utf8_trim_whitespace(texts), _NON_FINITE_TEXT)
        bad.append(rows)
        reasons += _messages(pc.if_else(non_finite, "not finite: ", "not a number: "), texts)
        cast = pc.cast(pc.if_else(looks, trimmed, pa.scalar(None, pa.string())), pa.float64())
    values = cast.to_numpy(zero_copy_only=False)
    finite = np.isfinite(values)
    if not finite.all():
        rows = np.flatnonzero(~finite & ~cast.is_null().to_numpy(zero_copy_only=False))
        bad.append(rows)
        reasons += _messages("not finite: ", column.take(rows))
    return values, np.concatenate(bad) if bad else _NO_ROWS, reasons


@dataclass
class _Categorical:
    codes: npt.NDArray[np.int32]  # index into dictionary, -1 = missing
    dictionary: list[str]


def _categorical(column: pa.ChunkedArray, path: str, name: str) -> tuple[_Categorical, Rows, list[str]]:
    encoded = _as_strings(column, path, name).combine_chunks().dictionary_encode()
    dictionary: list[str] = encoded.dictionary.to_pylist()
    codes = np.array(pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int32)  # writable
    bad: list[Rows] = []
    for i, level in enumerate(dictionary):
        if level == "":  # Parquet has no "empty is null" rule of its own
            codes[codes == i] = -1
        elif "\n" in level or "\r" in level:
            bad.append(np.flatnonzero(codes == i))
    rows = np.sort(np.concatenate(bad)) if bad else _NO_ROWS
    return (
        _Categorical(codes, dictionary),
        rows,
        ["contains a line break (quoted line breaks are not supported)"] * len(rows),
    )


def _bad_ids(column: pa.ChunkedArray) -> tuple[pa.Array, Rows, list[str]]:
    values = pc.fill_null(column, "").combine_chunks()
    try:
        ok = pc.and_(
            pc.match_substring_regex(values, _ID_FULL),
            pc.less_equal(pc.utf8_length(values), MAX_ID_LENGTH),
        ).to_numpy(zero_copy_only=False)
        candidates = np.flatnonzero(~ok)
    except pa.ArrowNotImplementedError:  # pragma: no cover - an id rule RE2 cannot express
        candidates = np.arange(len(values))
    rows: list[int] = []
    reasons: list[str] = []
    for row, value in zip(candidates.tolist(), values.take(candidates).to_pylist(), strict=True):
        problem = id_problem(value)
        if problem is not None:
            rows.append(row)
            reasons.append(problem)
    return values, np.array(rows, dtype=np.int64), reasons


def _duplicates(values: pa.Array, invalid: Rows, lines: npt.NDArray[np.int64]) -> tuple[Rows, list[str]]:
    encoded = values.dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    counts = np.bincount(codes, minlength=len(encoded.dictionary))
    repeated = counts[codes] > 1
    repeated[invalid] = False
    first: dict[int, int] = {}
    rows: list[int] = []
    reasons: list[str] = []
    for row in np.flatnonzero(repeated).tolist():
        code = int(codes[row])
        if code in first:
            rows.append(row)
            reasons.append(f"duplicate of line {lines[first[code]]}")
        else:
            first[code] = row
    return np.array(rows, dtype=np.int64), reasons


def _undeclared_hint(name: str, reasons: list[str], column: pa.ChunkedArray) -> None:
    """Suggest --categorical once, when most of a numeric column's values are words (not a typo or two)."""
    words = [i for i, r in enumerate(reasons) if r.startswith("not a number")]
    if len(words) >= 2 and len(words) * 2 >= len(column) - column.null_count:
        reasons[words[0]] += f" (is {name} categorical? declare it with --categorical {name})"


@dataclass
class _Problems:
    """Bad cells, gathered column by column: (rows, column position, column, reason per row)."""

    blocks: list[tuple[Rows, int, str, list[str]]] = field(default_factory=list)

    def add(self, rows: Rows, position: int, column: str, reasons: list[str]) -> None:
        if len(rows):
            self.blocks.append((rows, position, column, reasons))

    def rows(self) -> Rows:
        return np.unique(np.concatenate([b[0] for b in self.blocks])) if self.blocks else _NO_ROWS


def _validate(raw: _Raw, categorical: Collection[str], base: FeatureSchema | None) -> FeatureTable:
    path, names, table = raw.path, raw.names, raw.table
    declared = set(categorical)
    if ID_COLUMN in declared:
        raise ValueError(f"{path}: {ID_COLUMN} cannot be categorical")
    unknown = sorted(declared - set(names))
    if unknown:
        raise ValueError(
            f"{path}: categorical column(s) not in the file: {', '.join(unknown)} (columns are: {_listing(names)})"
        )
    n = table.num_rows
    feature_names = [name for name in names if name != ID_COLUMN]
    problems = _Problems()
    position = {name: i for i, name in enumerate(names)}

    id_values, rows, reasons = _bad_ids(_as_strings(table[ID_COLUMN], path, ID_COLUMN))
    problems.add(rows, position[ID_COLUMN], ID_COLUMN, reasons)
    rows, reasons = _duplicates(id_values, rows, raw.lines)
    problems.add(rows, position[ID_COLUMN], ID_COLUMN, reasons)

    # Fortran order so each column is written contiguously; encode_matrix makes C-order copies
    # batch by batch, which is cheaper than transposing the whole matrix at once.
    matrix = np.empty((n, len(feature_names)), dtype=np.float32, order="F")
    cats: dict[str, _Categorical] = {}
    for j, name in enumerate(feature_names):
        column = table[name]
        if name in declared:
            cats[name], rows, reasons = _categorical(column, path, name)
        else:
            values, rows, reasons = _numeric(column, path, name)
            with np.errstate(over="ignore"):
                matrix[:, j] = values
                overflow = np.flatnonzero(np.isinf(matrix[:, j]) & np.isfinite(values))
            if len(overflow):
                rows = np.concatenate([rows, overflow])
                reasons += _messages("out of range for float32: ", column.take(overflow))
            _undeclared_hint(name, reasons, column)
        problems.add(rows, position[name], name, reasons)

    bad = problems.rows()
    keep = np.ones(n, dtype=bool)
    keep[bad] = False

    same_layout = base is not None and {f.name: f.kind for f in base.features} == {
        name: _kind(name, declared) for name in feature_names
    }
    specs: list[FeatureSpec] = []
    for j, name in enumerate(feature_names):
        cat_or_none = cats.get(name)
        if cat_or_none is None:
            specs.append(FeatureSpec(name, "numeric"))
            continue
        known = base.spec(name) if same_layout and base is not None else None
        levels, column_values = _levels(cat_or_none, keep, known.levels if known is not None else ())
        matrix[:, j] = column_values
        specs.append(FeatureSpec(name, "categorical", levels))

    errors = _errors(raw, problems)
    return FeatureTable(
        customer_ids=id_values.filter(pa.array(keep)).to_pylist() if len(bad) else id_values.to_pylist(),
        matrix=matrix[keep] if len(bad) else matrix,
        specs=tuple(specs),
        lines=raw.lines[keep].tolist(),
        errors=errors,
        path=path,
        header=tuple(names),
        _rejects=_Rejects(raw, bad, errors) if errors else None,
    )


def _kind(name: str, declared: Collection[str]) -> FeatureKind:
    return "categorical" if name in declared else "numeric"


def _levels(
    cat: _Categorical, keep: npt.NDArray[np.bool_], known: tuple[str, ...]
) -> tuple[tuple[str, ...], npt.NDArray[np.float32]]:
    """Levels seen in kept rows (after `known`, which keep their indices) and the column of indices."""
    present = cat.codes >= 0
    used = np.flatnonzero(np.bincount(cat.codes[present & keep], minlength=len(cat.dictionary)))
    known_set = set(known)
    levels = known + tuple(sorted({cat.dictionary[i] for i in used.tolist()} - known_set))
    index = {level: k for k, level in enumerate(levels)}
    lut = np.full(len(cat.dictionary) + 1, np.nan, dtype=np.float32)  # last slot: code -1 (missing)
    for i in used.tolist():
        lut[i] = index[cat.dictionary[i]]
    return levels, lut[cat.codes]


def _errors(raw: _Raw, problems: _Problems) -> list[RowError]:
    """Every problem as a RowError, ordered by line then column."""
    blocks = problems.blocks
    if not blocks and not raw.malformed:
        return []
    lines = np.concatenate([raw.lines[rows] for rows, _, _, _ in blocks] + [np.array([m[0] for m in raw.malformed])])
    positions = np.concatenate(
        [np.full(len(rows), pos) for rows, pos, _, _ in blocks] + [np.full(len(raw.malformed), -1)]
    )
    columns: list[str] = []
    reasons: list[str] = []
    for rows, _, column, rs in blocks:
        columns += [column] * len(rows)
        reasons += rs
    columns += [""] * len(raw.malformed)
    reasons += [reason for _, _, reason in raw.malformed]
    line_of = lines.astype(np.int64).tolist()
    path = raw.path
    return [RowError(path, line_of[i], columns[i], reasons[i]) for i in np.lexsort((positions, lines)).tolist()]


class _Rejects:
    """What it takes to list the rejected rows with their cells, kept until someone asks:
    building a million of them costs seconds that a caller refusing the file never spends."""

    def __init__(self, raw: _Raw, rows: Rows, errors: list[RowError]) -> None:
        self._raw = raw
        self._rows = rows
        self._errors = errors
        self._built: list[RejectedRow] | None = None

    def rows(self) -> list[RejectedRow]:
        if self._built is None:
            self._built = self._build()
        return self._built

    def _build(self) -> list[RejectedRow]:
        raw = self._raw
        cells: dict[int, tuple[str, ...]] = {}
        if len(self._rows):
            taken = raw.table.take(self._rows)
            texts = [_text_array(taken[name]).to_pylist() for name in raw.names]
            cells.update(zip(raw.lines[self._rows].tolist(), zip(*texts, strict=True), strict=True))
        for line, text, _ in raw.malformed:
            cells[line] = tuple(next(csv.reader(io.StringIO(text)), []))
        reasons: dict[int, list[str]] = {}
        for e in self._errors:  # sorted by line, so the dict is too
            reasons.setdefault(e.line, []).append(f"{e.column}: {e.reason}" if e.column else e.reason)
        return [RejectedRow(line, cells[line], tuple(rs)) for line, rs in reasons.items()]


# -- schema merge ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaPlan:
    schema: FeatureSchema
    changed: bool
    order: list[int] | None  # table column of each schema column; None when the same
    recode: dict[int, npt.NDArray[np.float32]]  # schema column -> new index of each table level


def plan_schema(specs: Sequence[FeatureSpec], current: FeatureSchema | None, replace: bool) -> SchemaPlan:
    if current is None:
        return SchemaPlan(FeatureSchema(1, tuple(specs)), True, None, {})
    table_kinds = {s.name: s.kind for s in specs}
    current_kinds = {f.name: f.kind for f in current.features}
    if table_kinds != current_kinds:
        if not replace:
            raise SchemaMismatch(_mismatch(specs, current))
        return SchemaPlan(FeatureSchema(current.version + 1, tuple(specs)), True, None, {})
    # Same columns, maybe in another order or with other levels: fit the table to the live
    # layout so vectors already stored stay readable.
    by_name = {s.name: (i, s) for i, s in enumerate(specs)}
    features: list[FeatureSpec] = []
    order: list[int] = []
    recode: dict[int, npt.NDArray[np.float32]] = {}
    for j, live in enumerate(current.features):
        i, spec = by_name[live.name]
        order.append(i)
        if live.kind != "categorical":
            features.append(live)
            continue
        levels = live.levels + tuple(sorted(set(spec.levels) - set(live.levels)))
        if levels[: len(spec.levels)] != spec.levels:
            index = {level: k for k, level in enumerate(levels)}
            recode[j] = np.array([index[level] for level in spec.levels], dtype=np.float32)
        features.append(FeatureSpec(live.name, "categorical", levels))
    same = tuple(features) == current.features
    schema = current if same else FeatureSchema(current.version + 1, tuple(features))
    return SchemaPlan(schema, not same, None if order == list(range(len(order))) else order, recode)


def _mismatch(specs: Sequence[FeatureSpec], current: FeatureSchema) -> str:
    kinds = {s.name: s.kind for s in specs}
    parts = []
    added = [s.name for s in specs if current.spec(s.name) is None]
    removed = [f.name for f in current.features if f.name not in kinds]
    retyped = [
        f"{f.name} ({f.kind} -> {kinds[f.name]})" for f in current.features if kinds.get(f.name, f.kind) != f.kind
    ]
    if added:
        parts.append(f"added {', '.join(added)}")
    if removed:
        parts.append(f"removed {', '.join(removed)}")
    if retyped:
        parts.append(f"retyped {', '.join(retyped)}")
    return (
        f"the file's feature columns differ from feature schema v{current.version}: {'; '.join(parts)}. "
        "Replacing the schema makes every stored vector unreadable until reloaded; "
        "pass --replace-schema (replace_schema=True) to do it"
    )


def merged_schema(table: FeatureTable, current: FeatureSchema | None, *, replace: bool = False) -> FeatureSchema:
    """The schema `table` would be stored under: `current` itself when nothing changes, else version + 1.

    Levels are merged (known levels keep their indices). Raises SchemaMismatch when the
    columns' names or kinds differ, unless `replace`.
    """
    return plan_schema(table.specs, current, replace).schema


def fit_matrix(plan: SchemaPlan, matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    fitted = matrix if plan.order is None else matrix[:, plan.order]
    if plan.recode and fitted is matrix:
        fitted = matrix.copy()
    for j, lut in plan.recode.items():
        column = fitted[:, j]
        present = ~np.isnan(column)
        column[present] = lut[column[present].astype(np.intp)]
    return fitted
