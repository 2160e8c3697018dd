"""Writing a dataset chunk by chunk: one file (.csv or .parquet) or a directory of date partitions.

`nbo export` streams a log of any length, so it never holds the whole dataset: it hands each
chunk of rows to a writer, which appends it and forgets it. Both writers write beside the
target and move the result into place on `commit`, so a failed export leaves nothing half
written; `abort` removes what was written.

The partitioned layout (docs/dataset.md) is Hive style, one directory per UTC day of the
decision's timestamp, each holding Parquet files whose row groups are one chunk's rows of that
day at most:

    OUT/date=2026-01-01/part-00000.parquet
    OUT/date=2026-01-02/part-00000.parquet

The `date` is in the path only (it is derived from `timestamp`, never a model input); `read_dataset`
and `nbo train --dask` read the files without it. Rows of one day are in log order.
"""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from training.dataset import CSV_SUFFIXES, PARQUET_SUFFIXES, PARTITION_KEY, DatasetError, dataset_table

MAX_OPEN_PARTITIONS = 32  # open Parquet writers; a day seen again after its writer closed gets a new part


def _tmp_beside(out: Path) -> Path:
    return out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")


class FileWriter:
    """One .csv or .parquet file, appended a chunk at a time (the schema is the first chunk's)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.tmp = _tmp_beside(out)
        self.suffix = out.suffix.lower()
        if self.suffix not in (*CSV_SUFFIXES, *PARQUET_SUFFIXES):
            raise DatasetError(f"{out}: unsupported file type {self.suffix!r}; expected .csv, .parquet or .pq")
        self._writer: pa_csv.CSVWriter | pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None

    def write(self, columns: Mapping[str, Any]) -> None:
        table = dataset_table(self.out, columns)
        if self._writer is None:
            self._schema = table.schema
            if self.suffix in CSV_SUFFIXES:
                self._writer = pa_csv.CSVWriter(str(self.tmp), table.schema)
            else:
                self._writer = pq.ParquetWriter(str(self.tmp), table.schema)
        self._writer.write_table(table.cast(self._schema))

    def commit(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self.tmp.replace(self.out)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.tmp.unlink(missing_ok=True)


class PartitionedWriter:
    """A directory of Parquet files partitioned by the UTC day of `timestamp` (module doc)."""

    def __init__(self, out: Path, max_open: int | None = None) -> None:
        self.out = out
        self.tmp = _tmp_beside(out)
        self.max_open = MAX_OPEN_PARTITIONS if max_open is None else max_open
        self._open: OrderedDict[str, pq.ParquetWriter] = OrderedDict()  # least recently written first
        self._parts: dict[str, int] = {}  # files started per day
        self._schema: pa.Schema | None = None
        self.files = 0

    def write(self, columns: Mapping[str, Any]) -> None:
        table = dataset_table(self.out, columns)
        if self._schema is None:
            self._schema = table.schema
            self.tmp.mkdir()
        table = table.cast(self._schema)
        days = np.floor(table.column("timestamp").to_numpy() / 86_400.0).astype(np.int64)
        for day in np.unique(days):
            part = table.filter(pa.array(days == day))
            self._writer(_day_name(int(day))).write_table(part)

    def _writer(self, day: str) -> pq.ParquetWriter:
        writer = self._open.pop(day, None)
        if writer is None:
            if len(self._open) >= self.max_open:
                self._open.popitem(last=False)[1].close()
            n = self._parts.get(day, 0)
            self._parts[day] = n + 1
            directory = self.tmp / f"{PARTITION_KEY}={day}"
            directory.mkdir(exist_ok=True)
            assert self._schema is not None
            writer = pq.ParquetWriter(str(directory / f"part-{n:05d}.parquet"), self._schema)
            self.files += 1
        self._open[day] = writer
        return writer

    def _close_all(self) -> None:
        while self._open:
            self._open.popitem()[1].close()

    def commit(self) -> None:
        self._close_all()
        if self._schema is None:
            return
        old = self.out.with_name(f".{self.out.name}.{os.getpid()}.old")
        if self.out.exists():
            self.out.replace(old)  # a directory cannot be replaced in one step: move the old one aside
        self.tmp.replace(self.out)
        shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        self._close_all()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _day_name(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")
