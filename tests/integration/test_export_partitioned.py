"""`nbo export --partitioned`: the log streamed in chunks into date partitions gives exactly the
rows and labels of the one-file export, and the labels the synthetic log knows to be true, though
rewards arrive days (many chunks) after their decisions and entries are replayed far from their
first copy."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import redis

from loadtest.bench_export import DAY, T0, fill_log
from server.cli import export as export_command
from server.state.keys import Keys
from training import dataset_writer, export
from training.dataset import partition_files, read_dataset
from training.export import ExportOptions, export_log

KEYS = Keys()
CHUNK = 250


@pytest.fixture
def labels(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    # small chunks and few open writers, so 3,000 decisions cross every boundary the code has
    monkeypatch.setattr(export, "CHUNK_ROWS", CHUNK)
    monkeypatch.setattr(dataset_writer, "MAX_OPEN_PARTITIONS", 2)
    return fill_log(redis_client, KEYS, 3000, seed=11, days=6, window_days=2, repeats=40, held_back=5)


def test_partitions_hold_exactly_the_one_file_export(
    labels: dict[str, int], redis_client: redis.Redis, tmp_path: Path
) -> None:
    options = ExportOptions(window_seconds=2 * DAY, as_of=T0 + 9 * DAY)
    single = export_log(redis_client, KEYS, tmp_path / "all.parquet", options)
    parts = export_log(redis_client, KEYS, tmp_path / "parts", options, partitioned=True)
    assert single == parts
    assert (single.rows, single.decisions, single.duplicate_decisions, single.duplicate_outcomes) == (
        3000,
        3000,
        40,
        40,
    )
    assert single.accepted == sum(labels.values()) and single.late_rewards > 0

    one = read_dataset(tmp_path / "all.parquet")
    union = read_dataset(tmp_path / "parts")
    assert union.column_names == one.column_names
    assert union.schema == one.schema
    ids = one.column("decision_id").to_pylist()
    # every 5th decision of the first day was replayed after all the others
    held = sorted(
        r["decision_id"] for r in one.to_pylist() if int(r["decision_id"][1:]) % 5 == 0 and r["timestamp"] < T0 + DAY
    )
    assert held and ids[-len(held) :] == held  # the one file is in log order
    by_id = sorted(union.to_pylist(), key=lambda r: r["decision_id"])
    assert by_id == sorted(one.to_pylist(), key=lambda r: r["decision_id"])
    assert {r["decision_id"]: r["outcome"] for r in by_id} == labels

    files = partition_files(tmp_path / "parts")
    days = sorted({f.parent.name for f in files})
    assert days == [f"date=2026-01-0{d}" for d in range(1, 7)]
    assert len(files) > len(days)  # a day seen again after its writer closed starts a new part
    for f in files:
        meta = pq.ParquetFile(f).metadata
        assert all(meta.row_group(i).num_rows <= CHUNK for i in range(meta.num_row_groups))
        table = pq.read_table(f, partitioning=None)
        assert "date" not in table.column_names
        day = {datetime.fromtimestamp(ts, UTC).date().isoformat() for ts in table.column("timestamp").to_pylist()}
        assert day == {f.parent.name.removeprefix("date=")}
        part = table.column("decision_id").to_pylist()
        assert part == [i for i in ids if i in set(part)]  # one day's rows in log order
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left behind


def test_the_command_writes_a_directory_and_replaces_an_older_one(
    labels: dict[str, int], redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "parts"
    out.mkdir()
    (out / "stale.parquet").write_bytes(b"an older export")
    as_of = datetime.fromtimestamp(T0 + 9 * DAY, UTC).isoformat()
    parser = argparse.ArgumentParser(prog="nbo")
    export_command.add_arguments(parser.add_subparsers(dest="command", required=True).add_parser("export"))
    argv = ["export", str(out), "--partitioned", "--redis-url", redis_url, "--as-of", as_of, "--window-days", "2"]
    assert export_command.run(parser.parse_args(argv)) == 0
    assert f"exported 3,000 rows ({sum(labels.values()):,} accepted) from 3,000 decisions to {out};" in (
        capsys.readouterr().out
    )
    assert not (out / "stale.parquet").exists()
    assert read_dataset(out).num_rows == 3000
    (tmp_path / "file").write_text("")
    argv[1] = str(tmp_path / "file")
    assert export_command.run(parser.parse_args(argv)) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'file'}: not a directory\n"
