"""The logged-interaction dataset: writing, reading and the errors of read_dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.dataset import (
    FIXED_COLUMNS,
    DatasetError,
    categorical_columns,
    context_columns,
    context_keys,
    feature_columns,
    read_dataset,
    write_dataset,
)

HEADER = (
    "decision_id,timestamp,customer_id,channel,placement,offer_id,selection_probability,outcome,value,"
    "tier,tenure_months,ctx_cart_value"
)
ROWS = [
    "D1,1767225600.5,C001,web,home_banner,cart_03,0.25,1,28,A,12,55.5",
    "D2,1767225601,C002,call_centre,,billing_04,0.5,0,0,B,40,",
    "D3,1767225602,C003,web,home_banner,discount_01,1,0,0,C,3,120",
]


def columns() -> dict[str, Any]:
    return {
        "decision_id": ["D1", "D2", "D3"],
        "timestamp": np.array([1767225600.5, 1767225601.0, 1767225602.0]),
        "customer_id": ["C001", "C002", "C003"],
        "channel": np.array(["web", "call_centre", "web"]),
        "placement": ["home_banner", "", "home_banner"],
        "offer_id": ["cart_03", "billing_04", "discount_01"],
        "selection_probability": np.array([0.25, 0.5, 1.0]),
        "outcome": np.array([1, 0, 0]),
        "value": np.array([28.0, 0.0, 0.0]),
        "tier": ["A", "B", "C"],
        "tenure_months": np.array([12.0, 40.0, 3.0]),
        "ctx_cart_value": np.array([55.5, np.nan, 120.0]),
    }


def write_csv(tmp_path: Path, header: str, rows: list[str]) -> Path:
    path = tmp_path / "log.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_reads_a_valid_csv_with_canonical_types(tmp_path: Path) -> None:
    table = read_dataset(write_csv(tmp_path, HEADER, ROWS))
    assert table.column_names[: len(FIXED_COLUMNS)] == list(FIXED_COLUMNS)
    assert table.schema.field("timestamp").type == pa.float64()
    assert table.schema.field("outcome").type == pa.int64()
    assert table.schema.field("tenure_months").type == pa.float64()
    assert table.column("placement").to_pylist() == ["home_banner", "", "home_banner"]
    assert table.column("ctx_cart_value").to_pylist() == [55.5, None, 120.0]
    assert feature_columns(table) == ["tier", "tenure_months"]
    assert categorical_columns(table) == ["tier"]
    assert context_columns(table) == ["ctx_cart_value"]
    assert context_keys(table) == ["cart_value"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"log{suffix}"
    cols = columns()
    write_dataset(path, cols)
    table = read_dataset(path)
    assert table.column_names == list(cols)
    for name, values in cols.items():
        got = table.column(name).to_numpy(zero_copy_only=False)
        if np.asarray(values).dtype.kind == "f":
            np.testing.assert_array_equal(got.astype(float), np.asarray(values))
        else:
            assert [str(v) for v in got] == [str(v) for v in values], name


def test_csv_and_parquet_read_the_same(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a.csv", columns())
    write_dataset(tmp_path / "a.parquet", columns())
    assert read_dataset(tmp_path / "a.csv").equals(read_dataset(tmp_path / "a.parquet"))


def test_write_puts_fixed_columns_first_and_needs_them(tmp_path: Path) -> None:
    cols = columns()
    reordered = {"tier": cols.pop("tier"), **cols}
    write_dataset(tmp_path / "a.parquet", reordered)
    assert pq.read_table(tmp_path / "a.parquet").column_names[:10] == [*FIXED_COLUMNS, "tier"]
    del reordered["value"]
    with pytest.raises(DatasetError, match="missing column 'value'"):
        write_dataset(tmp_path / "b.parquet", reordered)
    with pytest.raises(DatasetError, match=r"unsupported file type '\.txt'"):
        write_dataset(tmp_path / "b.txt", columns())


def _replace(row: int, column: str, value: str) -> list[str]:
    names = HEADER.split(",")
    rows = [r.split(",") for r in ROWS]
    rows[row][names.index(column)] = value
    return [",".join(r) for r in rows]


REQUIRED = ", ".join(FIXED_COLUMNS)
BAD_CSV = [
    (
        "missing column",
        HEADER.replace("outcome,", "outcome_x,"),
        ROWS,
        f"missing column 'outcome' (required: {REQUIRED})",
    ),
    (
        "non-numeric timestamp",
        HEADER,
        _replace(1, "timestamp", "yesterday"),
        "column 'timestamp' must be numeric; line 3 has 'yesterday'",
    ),
    (
        "non-numeric selection_probability",
        HEADER,
        _replace(2, "selection_probability", "high"),
        "column 'selection_probability' must be numeric; line 4 has 'high'",
    ),
    (
        "non-numeric outcome",
        HEADER,
        _replace(0, "outcome", "yes"),
        "column 'outcome' must be numeric; line 2 has 'yes'",
    ),
    (
        "non-numeric value",
        HEADER,
        _replace(1, "value", "12 EUR"),
        "column 'value' must be numeric; line 3 has '12 EUR'",
    ),
    ("outcome 2", HEADER, _replace(2, "outcome", "2"), "column 'outcome' must be 0 or 1; line 4 has 2"),
    ("outcome 0.5", HEADER, _replace(0, "outcome", "0.5"), "column 'outcome' must be 0 or 1; line 2 has 0.5"),
    (
        "probability 0",
        HEADER,
        _replace(1, "selection_probability", "0"),
        "column 'selection_probability' must be in (0, 1]; line 3 has 0",
    ),
    (
        "probability above 1",
        HEADER,
        _replace(2, "selection_probability", "1.5"),
        "column 'selection_probability' must be in (0, 1]; line 4 has 1.5",
    ),
    (
        "negative probability",
        HEADER,
        _replace(0, "selection_probability", "-0.1"),
        "column 'selection_probability' must be in (0, 1]; line 2 has -0.1",
    ),
    ("missing value", HEADER, _replace(1, "value", ""), "column 'value' has a missing value at line 3"),
    ("missing timestamp", HEADER, _replace(2, "timestamp", ""), "column 'timestamp' has a missing value at line 4"),
    ("empty customer_id", HEADER, _replace(1, "customer_id", ""), "column 'customer_id' has an empty value at line 3"),
    (
        "unknown channel",
        HEADER,
        _replace(2, "channel", "fax"),
        "column 'channel' has unknown channel 'fax' at line 4 (channels: call_centre, web, mobile_app, email)",
    ),
    (
        "non-numeric context",
        HEADER,
        _replace(0, "ctx_cart_value", "lots"),
        "context column 'ctx_cart_value' must be numeric; line 2 has 'lots'",
    ),
    ("duplicate column", HEADER + ",tier", [r + ",A" for r in ROWS], "duplicate column 'tier'"),
    ("no rows", HEADER, [], "no rows"),
]


@pytest.mark.parametrize(("header", "rows", "message"), [c[1:] for c in BAD_CSV], ids=[c[0] for c in BAD_CSV])
def test_read_errors(tmp_path: Path, header: str, rows: list[str], message: str) -> None:
    path = write_csv(tmp_path, header, rows)
    with pytest.raises(DatasetError) as err:
        read_dataset(path)
    assert str(err.value) == f"{path}: {message}"


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_csv(tmp_path: Path, content: str) -> None:
    path = tmp_path / "log.csv"
    path.write_text(content)
    with pytest.raises(DatasetError) as err:
        read_dataset(path)
    assert str(err.value) == f"{path}: empty file"


def test_parquet_errors_name_the_row_and_type(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    cols = columns()
    cols["outcome"] = np.array([0, 1, 3])
    write_dataset(path, cols)
    with pytest.raises(DatasetError) as err:
        read_dataset(path)
    assert str(err.value) == f"{path}: column 'outcome' must be 0 or 1; row 3 has 3"

    table = pa.table({**{k: v for k, v in columns().items() if k != "customer_id"}, "customer_id": [1, 2, 3]})
    pq.write_table(table, path)
    with pytest.raises(DatasetError) as err:
        read_dataset(path)
    assert str(err.value) == f"{path}: column 'customer_id' must be text, got int64"

    path.write_bytes(b"")
    with pytest.raises(DatasetError) as err:
        read_dataset(path)
    assert str(err.value) == f"{path}: empty file"


def test_unsupported_suffix(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"unsupported file type '\.json'"):
        read_dataset(tmp_path / "log.json")
