"""The `nbo` command."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import redis
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from server.config import Settings
from server.keys import Keys

console = Console()
err_console = Console(stderr=True)


def _settings(opts: argparse.Namespace) -> Settings:
    """Settings from NBO_* env vars, overridden by the flags that were given."""
    fields = set(Settings.model_fields)
    overrides = {k: v for k, v in vars(opts).items() if k in fields and v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as err:
        for e in err.errors():
            err_console.print(f"error: setting {'.'.join(map(str, e['loc']))}: {e['msg']}")
        raise SystemExit(2) from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", dest="redis_url", help="Redis URL (default: REDIS_URL, else a private redis-server)")
    p.add_argument("--data-dir", type=Path, help="directory of the private redis-server (default .nbo)")
    p.add_argument("--key-prefix", help="prefix of every Redis key (default nbo:)")


def _serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="gRPC port (default 50051; 0 = any free port)")
    p.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")
    p.add_argument("--metrics-port", type=int, help="Prometheus port of worker 0 (worker i: +i)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbo", description="Real-time next-best-offer decisioning server")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gRPC server")
    _common(p)
    _serve_flags(p)
    p.add_argument("--catalog", type=Path, help="catalog YAML to validate and publish at start-up")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="synthetic customers + demo catalog + server + sample decisions")
    _common(p)
    _serve_flags(p)
    p.add_argument("--serve", action="store_true", help="keep serving after the sample decisions")
    p.add_argument("--customers", type=int, default=10_000, help="synthetic customers (default 10000)")
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic population")
    p.set_defaults(func=cmd_demo)

    features = sub.add_parser("features", help="customer feature vectors in Redis").add_subparsers(
        dest="features_command", required=True
    )
    p = features.add_parser("load", help="load a CSV or Parquet file of customer features")
    _common(p)
    p.add_argument("file", type=Path)
    p.add_argument("--categorical", default="", help="comma-separated categorical columns")
    p.add_argument("--skip-invalid", action="store_true", help="load the good rows; write rejects to --rejects")
    p.add_argument("--rejects", type=Path, help="where --skip-invalid writes rejected rows (default FILE.rejects)")
    p.add_argument("--replace-schema", action="store_true", help="accept a different set of columns")
    p.add_argument("--batch-size", type=int, default=10_000)
    p.set_defaults(func=cmd_features_load)
    p = features.add_parser("get", help="print a customer's features by name")
    _common(p)
    p.add_argument("customer_id")
    p.set_defaults(func=cmd_features_get)
    p = features.add_parser("schema", help="print the live feature schema")
    _common(p)
    p.set_defaults(func=cmd_features_schema)

    catalog = sub.add_parser("catalog", help="the offer catalog").add_subparsers(dest="catalog_command", required=True)
    p = catalog.add_parser("validate", help="check a catalog file; print every error with its line")
    _common(p)
    p.add_argument("file", type=Path)
    p.add_argument("--features", type=Path, help="take the feature schema from this file instead of Redis")
    p.add_argument("--categorical", default="", help="with --features: comma-separated categorical columns")
    p.set_defaults(func=cmd_catalog_validate)
    p = catalog.add_parser("load", help="validate, then publish a new catalog version")
    _common(p)
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_catalog_load)
    p = catalog.add_parser("list", help="list published catalog versions")
    _common(p)
    p.set_defaults(func=cmd_catalog_list)

    model = sub.add_parser("model", help="propensity-model artifacts").add_subparsers(
        dest="model_command", required=True
    )
    p = model.add_parser("publish", help="validate an artifact directory and make it the live model")
    _common(p)
    p.add_argument("directory", type=Path)
    p.set_defaults(func=cmd_model_publish)
    p = model.add_parser("rollback", help="return to the model published before the live one")
    _common(p)
    p.set_defaults(func=cmd_model_rollback)
    p = model.add_parser("list", help="published models; * marks the live one")
    _common(p)
    p.set_defaults(func=cmd_model_list)

    sub.add_parser("train", help="train a propensity model from a logged-interaction dataset (nbo train --help)")

    p = sub.add_parser("decide", help="ask a running server for a decision")
    p.add_argument("customer_id")
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--channel", default="web", choices=["call_centre", "web", "mobile_app", "email"])
    p.add_argument("--max-offers", type=int, default=1)
    p.add_argument("--explain", action="store_true")
    p.add_argument("--context", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--event", action="append", default=[])
    p.add_argument("--request-id", default="")
    p.set_defaults(func=cmd_decide)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["train"]:
        # `nbo train` has its own parser (training.train); argparse cannot pass options through
        from training.train import main as train_main

        return train_main(args[1:])
    opts = build_parser().parse_args(args)
    try:
        return int(opts.func(opts))
    except KeyboardInterrupt:
        return 130
    except redis.exceptions.ConnectionError as err:
        err_console.print(f"error: cannot reach Redis: {err}")
        return 1


# -- commands -----------------------------------------------------------------------------------
def cmd_serve(opts: argparse.Namespace) -> int:
    from server.app import run_server

    return run_server(_settings(opts))


def cmd_demo(opts: argparse.Namespace) -> int:
    from server.demo import run_demo

    return run_demo(_settings(opts), customers=opts.customers, seed=opts.seed, keep_serving=opts.serve)


@contextlib.contextmanager
def _redis(opts: argparse.Namespace) -> Iterator[tuple[redis.Redis, Keys]]:
    """A client of the configured (or private) Redis and the key names, closed on exit."""
    from server.app import redis_for

    settings = _settings(opts)
    with redis_for(settings) as url:
        client = redis.Redis.from_url(url)
        try:
            yield client, Keys(settings.key_prefix)
        finally:
            client.close()


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def cmd_features_load(opts: argparse.Namespace) -> int:
    from server.features import FeatureStore, SchemaMismatch, read_feature_file

    with _redis(opts) as (client, keys):
        store = FeatureStore(client, keys)
        started = time.perf_counter()
        try:
            table = read_feature_file(opts.file, _names(opts.categorical), base=store.current_schema())
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


def cmd_features_get(opts: argparse.Namespace) -> int:
    from server.features import FeatureStore
    from server.ids import id_problem

    if problem := id_problem(opts.customer_id):
        err_console.print(f"error: customer_id: {problem}")
        return 2
    with _redis(opts) as (client, keys):
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


def cmd_features_schema(opts: argparse.Namespace) -> int:
    from server.features import FeatureStore

    with _redis(opts) as (client, keys):
        schema = FeatureStore(client, keys).current_schema()
    if schema is None:
        err_console.print("no feature schema yet: run `nbo features load FILE`")
        return 1
    console.print(f"feature schema v{schema.version} ({len(schema.features)} features)")
    for f in schema.features:
        console.print(f"  {f.name}: {f.kind}" + (f" [{', '.join(f.levels)}]" if f.levels else ""), highlight=False)
    return 0


def cmd_catalog_validate(opts: argparse.Namespace) -> int:
    from server.catalog import CatalogInvalid, parse_catalog
    from server.catalog_store import current_schema

    try:
        text = opts.file.read_text()
    except OSError as err:
        err_console.print(f"error: {err}")
        return 2
    if opts.features is not None:
        from server.features import merged_schema, read_feature_file

        table = read_feature_file(opts.features, _names(opts.categorical))
        schema = merged_schema(table, None)
    else:
        with _redis(opts) as (client, keys):
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


def cmd_catalog_load(opts: argparse.Namespace) -> int:
    from server.catalog import CatalogInvalid
    from server.catalog_store import NoSchema, publish

    try:
        text = opts.file.read_text()
    except OSError as err:
        err_console.print(f"error: {err}")
        return 2
    with _redis(opts) as (client, keys):
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


def cmd_catalog_list(opts: argparse.Namespace) -> int:
    from server.catalog_store import list_versions

    with _redis(opts) as (client, keys):
        versions = list_versions(client, keys)
    for _seq, version, source, at, live in versions:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
        console.print(f"{'*' if live else ' '} {version:<14} {stamp}  {source}", highlight=False)
    return 0


def cmd_model_publish(opts: argparse.Namespace) -> int:
    from server.catalog_store import current_schema
    from server.model_registry import ModelRejected, publish

    with _redis(opts) as (client, keys):
        try:
            version = publish(client, keys, opts.directory, current_schema(client, keys))
        except ModelRejected as err:
            err_console.print(f"rejected: {err}\nnothing was published; the live model is unchanged")
            return 1
    console.print(f"model {version} published; servers swap to it after loading and verifying it")
    return 0


def cmd_model_rollback(opts: argparse.Namespace) -> int:
    from server.model_registry import ModelRejected, rollback

    with _redis(opts) as (client, keys):
        try:
            version = rollback(client, keys)
        except ModelRejected as err:
            err_console.print(f"error: {err}")
            return 1
    console.print(f"rolled back: model {version} is live again")
    return 0


def cmd_model_list(opts: argparse.Namespace) -> int:
    from server.model_registry import list_models

    with _redis(opts) as (client, keys):
        models = list_models(client, keys)
    if not models:
        console.print("no model published; decisions use the catalog's prior propensities")
    for version, live, meta in models:
        metrics = meta.get("metrics", {})
        auc = metrics.get("auc")
        console.print(
            f"{'*' if live else ' '} {version}  auc={auc if auc is None else round(auc, 4)}  ece={metrics.get('ece')}",
            highlight=False,
        )
    return 0


def cmd_decide(opts: argparse.Namespace) -> int:
    import grpc

    from server.client import NboClient, print_decision

    context = {}
    for item in opts.context:
        key, sep, value = item.partition("=")
        try:
            context[key] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            err_console.print(f"error: --context {item!r}: expected KEY=NUMBER")
            return 2
    client = NboClient(opts.target)
    try:
        response = client.decide(
            opts.customer_id,
            opts.channel,
            max_offers=opts.max_offers,
            explain=opts.explain,
            context=context,
            events=opts.event,
            request_id=opts.request_id,
        )
    except grpc.RpcError as err:
        err_console.print(f"error: {err.code().name}: {err.details()}")
        return 1
    finally:
        client.close()
    print_decision(console, f"{opts.customer_id} on {opts.channel}", response)
    return 0


if __name__ == "__main__":
    sys.exit(main())
