"""Reading and validating customer feature files (no Redis)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from server.features.schema import FeatureSchema, FeatureSpec
from server.state.feature_store import FeatureTable, SchemaMismatch, merged_schema, read_feature_file

HEADER = "customer_id,tier,tenure,score\n"
ID_CHARS = "allowed are letters, digits and _ . @ -"


def write(tmp_path: Path, body: str, header: str = HEADER, name: str = "f.csv") -> Path:
    path = tmp_path / name
    path.write_text(header + body, encoding="utf-8")
    return path


def read(path: Path, categorical: tuple[str, ...] = ("tier",), base: FeatureSchema | None = None) -> FeatureTable:
    return read_feature_file(path, categorical, base=base)


def row(table: FeatureTable, customer_id: str) -> dict[str, float]:
    i = table.customer_ids.index(customer_id)
    return {spec.name: float(v) for spec, v in zip(table.specs, table.matrix[i], strict=True)}


BAD_ROWS = [
    pytest.param("c1,A,abc,1\n", ['{f}:2: tenure: not a number: "abc"'], id="word"),
    pytest.param("c1,A,NA,1\n", ['{f}:2: tenure: not a number: "NA"'], id="NA-is-not-missing"),
    pytest.param("c1,A,1_000,1\n", ['{f}:2: tenure: not a number: "1_000"'], id="underscore"),
    pytest.param("c1,A,1,5%\n", ['{f}:2: score: not a number: "5%"'], id="percent"),
    pytest.param('c1,A,"say ""hi"" \\o/",1\n', ['{f}:2: tenure: not a number: "say \\"hi\\" \\\\o/"'], id="escaped"),
    pytest.param("c1,A,inf,1\n", ['{f}:2: tenure: not finite: "inf"'], id="inf"),
    pytest.param("c1,A,-Infinity,1\n", ['{f}:2: tenure: not finite: "-Infinity"'], id="-Infinity"),
    pytest.param("c1,A,nan,1\n", ['{f}:2: tenure: not finite: "nan"'], id="nan"),
    pytest.param("c1,A,1e400,1\n", ['{f}:2: tenure: not finite: "1e400"'], id="float64-overflow"),
    pytest.param("c1,A,1e39,1\n", ['{f}:2: tenure: out of range for float32: "1e39"'], id="float32-overflow"),
    pytest.param("c{1},A,1,1\n", [f"{{f}}:2: customer_id: contains '{{{{'; {ID_CHARS}"], id="brace-id"),
    pytest.param("a:b,A,1,1\n", [f"{{f}}:2: customer_id: contains ':'; {ID_CHARS}"], id="colon-id"),
    pytest.param(",A,1,1\n", ["{f}:2: customer_id: must not be empty"], id="empty-id"),
    pytest.param("x" * 65 + ",A,1,1\n", ["{f}:2: customer_id: must be at most 64 characters, got 65"], id="long-id"),
    pytest.param("c1,A,1,1\nc2,A,1,1\nc1,B,2,2\n", ["{f}:4: customer_id: duplicate of line 2"], id="duplicate"),
    pytest.param("c1,A,1\n", ["{f}:2: expected 4 cells, got 3"], id="short-row"),
    pytest.param("c1,A,1,1,9\n", ["{f}:2: expected 4 cells, got 5"], id="long-row"),
    pytest.param(
        "c{,A,x,y\n",
        [
            f"{{f}}:2: customer_id: contains '{{{{'; {ID_CHARS}",
            '{f}:2: tenure: not a number: "x"',
            '{f}:2: score: not a number: "y"',
        ],
        id="several-in-one-row",
    ),
    pytest.param("c1,A,1,1\n\nc2,A,x,1\n", ['{f}:4: tenure: not a number: "x"'], id="blank-line-counts"),
    pytest.param(
        "c1,A,1,1\nc2,A\nc3,A,x,1\n",
        ["{f}:3: expected 4 cells, got 2", '{f}:4: tenure: not a number: "x"'],
        id="lines-after-a-skipped-row",
    ),
    pytest.param(
        'c1,"A\nB",1,1\n', ["{f}:2: tier: contains a line break (quoted line breaks are not supported)"], id="newline"
    ),
    pytest.param(
        "c1,A,1,gold\nc2,A,1,silver\n",
        [
            '{f}:2: score: not a number: "gold" (is score categorical? declare it with --categorical score)',
            '{f}:3: score: not a number: "silver"',
        ],
        id="undeclared-categorical-hint",
    ),
    pytest.param(
        "c1,A," + "9" * 60 + "x,1\n", ['{f}:2: tenure: not a number: "' + "9" * 40 + '..."'], id="long-value-cut"
    ),
]


@pytest.mark.parametrize(("body", "expected"), BAD_ROWS)
def test_bad_rows_are_reported_with_file_line_and_column(tmp_path: Path, body: str, expected: list[str]) -> None:
    path = write(tmp_path, body)
    table = read(path)
    assert [str(e) for e in table.errors] == [e.format(f=path) for e in expected]
    bad_lines = {e.line for e in table.errors}
    assert not bad_lines & set(table.lines)
    assert len(table.customer_ids) == len(table.lines) == table.matrix.shape[0]


FILE_ERRORS = [
    pytest.param("f.txt", HEADER, (), "unsupported file type '.txt'", id="suffix"),
    pytest.param("f.csv", "", (), "empty file", id="empty"),
    pytest.param("f.csv", "id,tier\n", (), "no customer_id column (columns are: id, tier)", id="no-id"),
    pytest.param("f.csv", "customer_id\n", (), "no feature columns besides customer_id", id="no-features"),
    pytest.param("f.csv", "customer_id,a,b,a\n", (), "duplicate column name(s): a", id="duplicate-names"),
    pytest.param("f.csv", "customer_id,,b\n", (), "column 2 of the header has no name", id="unnamed"),
    pytest.param("f.csv", HEADER, ("tier", "segment"), "categorical column(s) not in the file: segment", id="cat"),
    pytest.param("f.csv", HEADER, ("customer_id",), "customer_id cannot be categorical", id="id-categorical"),
]


@pytest.mark.parametrize(("name", "header", "categorical", "message"), FILE_ERRORS)
def test_problems_with_the_whole_file_raise_naming_it(
    tmp_path: Path, name: str, header: str, categorical: tuple[str, ...], message: str
) -> None:
    path = write(tmp_path, "", header=header, name=name)
    with pytest.raises(ValueError) as info:
        read_feature_file(path, categorical)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_values_missing_cells_and_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, 'c1,B,12,0.5\nc2,,, 7 \n"c3",A,-1e3,+.25\n')
    table = read(path)
    assert table.errors == []
    assert table.customer_ids == ["c1", "c2", "c3"]
    assert table.lines == [2, 3, 4]
    assert table.specs == (
        FeatureSpec("tier", "categorical", ("A", "B")),
        FeatureSpec("tenure", "numeric"),
        FeatureSpec("score", "numeric"),
    )
    assert table.matrix.dtype == np.float32 and table.matrix.shape == (3, 3)
    assert row(table, "c1") == {"tier": 1.0, "tenure": 12.0, "score": 0.5}
    c2 = row(table, "c2")
    assert math.isnan(c2["tier"]) and math.isnan(c2["tenure"]) and c2["score"] == 7.0  # spaces trimmed
    assert row(table, "c3") == {"tier": 0.0, "tenure": -1000.0, "score": 0.25}


def test_header_only_file_is_an_empty_table(tmp_path: Path) -> None:
    table = read(write(tmp_path, ""))
    assert table.customer_ids == [] and table.errors == []
    assert table.matrix.shape == (0, 3)
    assert table.specs[0] == FeatureSpec("tier", "categorical", ())


def test_blank_lines_and_bom_and_crlf_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(b"\xef\xbb\xbfcustomer_id , tier,tenure,score\r\nc1,A,1,2\r\n\r\n,,,\r\nc2,B,3,4\r\n\r\n")
    table = read(path)
    assert table.errors == []
    assert table.customer_ids == ["c1", "c2"]
    assert table.lines == [2, 5]


def test_categorical_levels_are_sorted_and_only_from_good_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "c1,gold,1,1\nc2,bronze,1,1\nc3,silver,x,1\nc4,gold,1,1\nc5,,1,1\n")
    table = read(path)
    assert table.specs[0].levels == ("bronze", "gold")  # silver's only row was rejected
    assert [row(table, c)["tier"] for c in ("c1", "c2", "c4")] == [1.0, 0.0, 1.0]
    assert math.isnan(row(table, "c5")["tier"])


def test_level_extension_keeps_the_indices_of_the_base_schema(tmp_path: Path) -> None:
    base = FeatureSchema(
        3,
        (
            FeatureSpec("tier", "categorical", ("gold", "bronze", "platinum")),
            FeatureSpec("tenure", "numeric"),
            FeatureSpec("score", "numeric"),
        ),
    )
    table = read(write(tmp_path, "c1,bronze,1,1\nc2,silver,1,1\nc3,aluminium,1,1\n"), base=base)
    assert table.specs[0].levels == ("gold", "bronze", "platinum", "aluminium", "silver")
    assert [row(table, c)["tier"] for c in ("c1", "c2", "c3")] == [1.0, 4.0, 3.0]
    merged = merged_schema(table, base)
    assert merged.version == 4 and merged.extends(base)
    same = read(write(tmp_path, "c1,bronze,1,1\n"), base=base)
    assert merged_schema(same, base) is base


def test_base_with_another_layout_is_ignored_for_levels(tmp_path: Path) -> None:
    base = FeatureSchema(1, (FeatureSpec("tier", "categorical", ("gold", "bronze")), FeatureSpec("tenure", "numeric")))
    table = read(write(tmp_path, "c1,gold,1,1\nc2,bronze,1,1\n"), base=base)
    assert table.specs[0].levels == ("bronze", "gold")


def test_merged_schema_versions_and_mismatch(tmp_path: Path) -> None:
    table = read(write(tmp_path, "c1,A,1,1\n"))
    first = merged_schema(table, None)
    assert first.version == 1 and first.features == table.specs
    assert merged_schema(table, first) is first

    other = read(write(tmp_path, "c1,A,1\n", header="customer_id,tier,tenure,extra\n", name="g.csv"), ("tier",))
    retyped = read(write(tmp_path, "c1,A,1,1\n", name="h.csv"), ("tier", "score"))
    with pytest.raises(SchemaMismatch, match=r"added extra; removed score"):
        merged_schema(other, first)
    with pytest.raises(SchemaMismatch, match=r"retyped score \(numeric -> categorical\)"):
        merged_schema(retyped, first)
    replaced = merged_schema(other, first, replace=True)
    assert replaced.version == 2 and replaced.names == ("tier", "tenure", "extra")


def test_merged_schema_accepts_reordered_columns(tmp_path: Path) -> None:
    live = merged_schema(read(write(tmp_path, "c1,A,1,1\n")), None)
    shuffled = read(write(tmp_path, "c1,2,B,1\n", header="customer_id,score,tier,tenure\n", name="g.csv"))
    merged = merged_schema(shuffled, live)
    assert merged.names == live.names and merged.version == 2  # B is a new level, column order is live's


def test_rejected_rows_keep_their_cells_and_are_written(tmp_path: Path) -> None:
    path = write(tmp_path, "c1,A,1,1\nc{2},B,x,1\nc3,A,1\nc4,A,2,2\n")
    table = read(path)
    assert [(r.line, r.values, r.reasons) for r in table.rejected] == [
        (3, ("c{2}", "B", "x", "1"), (f"customer_id: contains '{{'; {ID_CHARS}", 'tenure: not a number: "x"')),
        (4, ("c3", "A", "1"), ("expected 4 cells, got 3",)),
    ]
    out = tmp_path / "rejects.csv"
    assert table.write_rejects(out) == 2
    with out.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["line", "errors", "customer_id", "tier", "tenure", "score"]
    assert rows[1][:2] == ["3", f"customer_id: contains '{{'; {ID_CHARS}; tenure: not a number: \"x\""]
    assert table.customer_ids == ["c1", "c4"] and table.lines == [2, 5]


def test_line_numbers_survive_skipped_rows_across_read_blocks(tmp_path: Path) -> None:
    # Several arrow read blocks, with short rows in different blocks: lines must stay exact.
    rows = [f"c{i},A,{i},1" for i in range(300_000)]
    rows[10] = "c10,A"
    rows[250_000] = "c250000,A,1"
    rows[299_990] = "c299990,A,oops,1"
    path = write(tmp_path, "\n".join(rows) + "\n")
    table = read(path)
    assert [str(e) for e in table.errors] == [
        f"{path}:12: expected 4 cells, got 2",
        f"{path}:250002: expected 4 cells, got 3",
        f'{path}:299992: tenure: not a number: "oops"',
    ]
    assert table.lines[table.customer_ids.index("c299999")] == 300_001
    assert row(table, "c299999")["tenure"] == 299_999.0


def test_parquet_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    pq.write_table(
        pa.table(
            {
                "customer_id": ["c1", "c2", "c{3}", "c4", "c5"],
                "tier": ["B", None, "A", "", "C"],
                "tenure": pa.array([1, 2, 3, None, 5], pa.int64()),
                "score": [0.5, float("nan"), 1.0, 2.0, float("inf")],
            }
        ),
        path,
    )
    table = read(path)
    assert [str(e) for e in table.errors] == [
        f"{path}:3: customer_id: contains '{{'; {ID_CHARS}",
        f'{path}:5: score: not finite: "inf"',
    ]
    assert table.customer_ids == ["c1", "c2", "c4"]
    assert table.lines == [1, 2, 4]
    assert table.specs[0].levels == ("B",)  # A and C only in rejected rows; "" is missing
    assert row(table, "c1") == {"tier": 0.0, "tenure": 1.0, "score": 0.5}
    c2, c4 = row(table, "c2"), row(table, "c4")
    assert math.isnan(c2["tier"]) and c2["tenure"] == 2.0 and math.isnan(c2["score"])  # NaN is missing
    assert math.isnan(c4["tier"]) and math.isnan(c4["tenure"]) and c4["score"] == 2.0
    assert table.rejected[1].values == ("c5", "C", "5", "inf")


def test_parquet_integer_ids_and_string_numbers(tmp_path: Path) -> None:
    path = tmp_path / "f.pq"
    pq.write_table(pa.table({"customer_id": [10, 11], "tier": ["A", "B"], "tenure": ["1.5", "x"]}), path)
    table = read(path)
    assert [str(e) for e in table.errors] == [f'{path}:2: tenure: not a number: "x"']
    assert table.customer_ids == ["10"]
    assert row(table, "10") == {"tier": 0.0, "tenure": 1.5}


def test_parquet_column_of_unusable_type(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"customer_id": ["c1"], "seen": pa.array([0], pa.timestamp("s"))}), path)
    with pytest.raises(ValueError, match=r"column seen has type timestamp"):
        read_feature_file(path)


def test_not_a_parquet_file(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    path.write_text("customer_id,a\n")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        read_feature_file(path)
