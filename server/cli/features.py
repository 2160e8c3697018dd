"""`nbo features {load,get,schema}`: customer feature vectors in Redis."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from server.cli.common import console, err_console, names, open_redis, redis_flags

NAME = "features"
HELP = "customer feature vectors in Redis"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="features_command", required=True)
    p = sub.add_parser("load", help="load a CSV or Parquet file of customer features")
    redis_flags(p)
    p.add_argument("file", type=Path)
    p.add_argument("--categorical", default="", help="comma-separated categorical columns")
    p.add_argument("--skip-invalid", action="store_true", help="load the good rows; write rejects to --rejects")
    p.add_argument("--rejects", type=Path, help="where --skip-invalid writes rejected rows (default FILE.rejects)")
    p.add_argument("--replace-schema", action="store_true", help="accept a different set of columns")
    p.add_argument("--batch-size", type=int, default=10_000)
    p = sub.add_parser("get", help="print a customer's features by name")
    redis_flags(p)
    p.add_argument("customer_id")
    p = sub.add_parser("schema", help="print the live feature schema")
    redis_flags(p)


def run(opts: argparse.Namespace) -> int:
    return {"load": _load, "get": _get, "schema": _schema}[opts.features_command](opts)


def _load(opts: argparse.Namespace) -> int:
    from server.state.feature_store import FeatureStore, SchemaMismatch, read_feature_file

    with open_redis(opts) as (client, keys):
        store = FeatureStore(client, keys)
        started = time.perf_counter()
        try:
            table = read_feature_file(opts.file, names(opts.categorical), base=store.current_schema())
        except (ValueError, OSError) as err:
            err_console.print(f"error: {err}")
            return 2
        read_s = time.perf_counter() - started
        if table.errors:
            for e in table.errors[:200]:
                err_console.print(str(e), highlight=False, markup=False)
            if len(table.errors) > 200:
                err_console.print(f"... and {len(table.errors) - 200} more")
            if not opts.skip_invalid:
                err_console.print(
                    f"{len(table.errors)} bad row(s); nothing was loaded. Fix them, or pass --skip-invalid."
                )
                return 2
            rejects = opts.rejects or opts.file.with_name(opts.file.name + ".rejects")
            table.write_rejects(rejects)
            err_console.print(f"{len(table.errors)} bad row(s) skipped; written to {rejects}")
        with Progress(
            TextColumn("loading"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err_console
        ) as progress:
            task = progress.add_task("load", total=len(table.customer_ids))
            try:
                result = store.load(
                    table,
                    replace_schema=opts.replace_schema,
                    batch_size=opts.batch_size,
                    progress=lambda n: progress.update(task, completed=n),
                )
            except SchemaMismatch as err:
                err_console.print(f"error: {err}")
                return 2
        console.print(
            f"loaded {result.rows} customers x {len(table.specs)} features in {read_s + result.seconds:.1f}s "
            f"(read {read_s:.1f}s, write {result.seconds:.1f}s); feature schema v{result.schema_version}"
            + (" (new)" if result.schema_changed else "")
        )
    return 0


def _get(opts: argparse.Namespace) -> int:
    from server.ids import id_problem
    from server.state.feature_store import FeatureStore

    if problem := id_problem(opts.customer_id):
        err_console.print(f"error: customer_id: {problem}")
        return 2
    with open_redis(opts) as (client, keys):
        try:
            features = FeatureStore(client, keys).get(opts.customer_id)
        except ValueError as err:  # a vector the live schema can no longer read
            err_console.print(f"error: {err}")
            return 1
    if features is None:
        err_console.print(f"unknown customer {opts.customer_id!r}")
        return 1
    width = max(map(len, features))
    for name, value in features.items():
        console.print(f"{name:<{width}}  {'(missing)' if value is None else value}", highlight=False)
    return 0


def _schema(opts: argparse.Namespace) -> int:
    from server.state.feature_store import FeatureStore

    with open_redis(opts) as (client, keys):
        schema = FeatureStore(client, keys).current_schema()
    if schema is None:
        err_console.print("no feature schema yet: run `nbo features load FILE`")
        return 1
    console.print(f"feature schema v{schema.version} ({len(schema.features)} features)")
    for f in schema.features:
        console.print(f"  {f.name}: {f.kind}" + (f" [{', '.join(f.levels)}]" if f.levels else ""), highlight=False)
    return 0
