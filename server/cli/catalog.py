"""`nbo catalog {validate,load,list}`: the offer catalog and its published versions."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from server.cli.common import console, err_console, names, open_redis, redis_flags

NAME = "catalog"
HELP = "the offer catalog"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="catalog_command", required=True)
    p = sub.add_parser("validate", help="check a catalog file; print every error with its line")
    redis_flags(p)
    p.add_argument("file", type=Path)
    p.add_argument("--features", type=Path, help="take the feature schema from this file instead of Redis")
    p.add_argument("--categorical", default="", help="with --features: comma-separated categorical columns")
    p = sub.add_parser("load", help="validate, then publish a new catalog version")
    redis_flags(p)
    p.add_argument("file", type=Path)
    p = sub.add_parser("list", help="list published catalog versions")
    redis_flags(p)


def run(opts: argparse.Namespace) -> int:
    return {"validate": _validate, "load": _load, "list": _list}[opts.catalog_command](opts)


def _validate(opts: argparse.Namespace) -> int:
    from server.catalog.compiler import parse_catalog
    from server.catalog.spec import CatalogInvalid
    from server.state.catalog_store import current_schema

    try:
        text = opts.file.read_text()
    except OSError as err:
        err_console.print(f"error: {err}")
        return 2
    if opts.features is not None:
        from server.state.feature_store import merged_schema, read_feature_file

        table = read_feature_file(opts.features, names(opts.categorical))
        schema = merged_schema(table, None)
    else:
        with open_redis(opts) as (client, keys):
            found = current_schema(client, keys)
        if found is None:
            err_console.print("error: no feature schema in Redis; load features first or pass --features FILE")
            return 2
        schema = found
    try:
        catalog = parse_catalog(text, schema)
    except CatalogInvalid as err:
        err_console.print(err.format_all(str(opts.file)), highlight=False, markup=False)
        err_console.print(f"{len(err.errors)} error(s)")
        return 1
    console.print(
        f"{opts.file}: valid ({len(catalog.campaigns)} campaigns, {len(catalog.offers)} offers, "
        f"{len(catalog.segments)} segments; feature schema v{schema.version})"
    )
    return 0


def _load(opts: argparse.Namespace) -> int:
    from server.catalog.spec import CatalogInvalid
    from server.state.catalog_store import NoSchema, publish

    try:
        text = opts.file.read_text()
    except OSError as err:
        err_console.print(f"error: {err}")
        return 2
    with open_redis(opts) as (client, keys):
        try:
            published = publish(client, keys, text, source=str(opts.file))
        except CatalogInvalid as err:
            err_console.print(err.format_all(str(opts.file)), highlight=False, markup=False)
            err_console.print(f"{len(err.errors)} error(s); nothing was published, the live catalog is unchanged")
            return 1
        except NoSchema as err:
            err_console.print(f"error: {err}")
            return 2
    state = "published; servers switch within seconds" if published.changed else "unchanged (already live)"
    console.print(f"catalog {published.version}: {state}")
    return 0


def _list(opts: argparse.Namespace) -> int:
    from server.state.catalog_store import list_versions

    with open_redis(opts) as (client, keys):
        versions = list_versions(client, keys)
    for _seq, version, source, at, live in versions:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
        console.print(f"{'*' if live else ' '} {version:<14} {stamp}  {source}", highlight=False)
    return 0
