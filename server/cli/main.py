"""The `nbo` command."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, tzinfo
from pathlib import Path

import redis
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from server.cli import export
from server.config import Settings
from server.state.keys import Keys

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


def _common(p: argparse.ArgumentParser, *, nested: bool = False) -> None:
    # a nested subcommand must not reset, with its defaults, what its parent command was given
    default = argparse.SUPPRESS if nested else None
    p.add_argument(
        "--redis-url",
        dest="redis_url",
        default=default,
        help="Redis URL (default: REDIS_URL, else a private redis-server)",
    )
    p.add_argument(
        "--data-dir", type=Path, default=default, help="directory of the private redis-server (default .nbo)"
    )
    p.add_argument("--key-prefix", default=default, help="prefix of every Redis key (default nbo:)")


def _serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="gRPC port (default 50051; 0 = any free port)")
    p.add_argument("--http-port", type=int, help="also serve HTTP/JSON on this port (default off; 0 = any free port)")
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
    p.add_argument(
        "--learner", action="store_true", default=None, help="also run the bandit's learner in its own process"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("learner", help="run the bandit's online learner (consumes the outcome stream)")
    _common(p)
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")
    p.set_defaults(func=cmd_learner)

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

    _budget_parsers(sub)

    export.register(sub)
    # `nbo ope` has its own parser (training.ope), dispatched in main(): its imports are heavy
    sub.add_parser("ope", help="off-policy evaluation of a candidate policy from a logged dataset (nbo ope --help)")

    p = sub.add_parser("simulate", help="closed loop: the real server and learner against the synthetic world")
    p.add_argument("--scenario", choices=("stationary", "drift", "new-offer"), default="stationary")
    p.add_argument("--decisions", type=int, default=50_000, help="decisions to simulate (default 50,000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=2, help="server worker processes")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent simulated callers")
    p.add_argument("--customers", type=int, default=20_000, help="customers in the synthetic world")
    p.add_argument("--out", type=Path, default=Path("simulation"), help="results go to OUT/<scenario>/")
    p.add_argument("--no-bandit", dest="bandit", action="store_false", help="the model alone: no bandit, no learner")
    p.set_defaults(func=cmd_simulate)

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


RECONCILE_HELP = """\
Rebuild the budget counters (totals, days, hours) and the per-customer award counts from the
decision log, using for each award the catalog version it was made under, and print every
counter that differs (hash, field, stored, from log, difference). Unless --dry-run, the log's
values are written: budget counters in one MULTI/EXEC, per-customer counts per customer.

Only days the log covers, and hours it covers that have not expired, are touched; totals are
set to the log's totals. When the log was trimmed or starts after a budgeted campaign started,
counts before the log cannot be rebuilt: the command says so and stops unless --force.

Awards in flight are not in the log yet (decisions reach it within log_flush_seconds, under a
second), nor are records the log writer dropped (nbo_log_records_dropped_total): run it with traffic
paused, or expect that drift.

Exit status: 0 no drift, or drift fixed; 1 drift found with --dry-run; 3 the log does not reach
back far enough (see --force)."""


def _budget_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    budgets = sub.add_parser(
        "budgets",
        help="budget use and what is left; `nbo budgets reconcile` rebuilds the counters from the log",
        description="Caps, use and what is left of every campaign and offer with a budget, and of "
        "channel capacity, under the live catalog.",
    )
    _common(budgets)
    budgets.add_argument("--at", help="ISO 8601 time whose day and hour to show (default now; naive = catalog zone)")
    budgets.add_argument("--json", action="store_true", help="print JSON for scripts")
    budgets.set_defaults(func=cmd_budgets)
    nested = budgets.add_subparsers(dest="budgets_command")
    p = nested.add_parser(
        "reconcile",
        help="rebuild the budget counters from the decision log",
        description=RECONCILE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, nested=True)
    p.add_argument("--dry-run", action="store_true", help="print the drift; write nothing")
    p.add_argument("--force", action="store_true", help="use the log even if it may miss earlier awards")
    p.set_defaults(func=cmd_budgets_reconcile)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["train"]:
        # `nbo train` has its own parser (training.train); argparse cannot pass options through
        from training.train import main as train_main

        return train_main(args[1:])
    if args[:1] == ["ope"]:
        from training.ope import main as ope_main

        return ope_main(args[1:])
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
    from server.supervisor import run_server

    return run_server(_settings(opts))


def cmd_simulate(opts: argparse.Namespace) -> int:
    from training.closed_loop import main as simulate_main

    return simulate_main(opts)


def cmd_learner(opts: argparse.Namespace) -> int:
    import asyncio

    from server.app import configure_logging, redis_for
    from server.learning.learner import run_learner

    settings = _settings(opts)
    configure_logging(settings.log_level)
    with redis_for(settings) as url:
        asyncio.run(run_learner(settings, url))
    return 0


def cmd_demo(opts: argparse.Namespace) -> int:
    from server.cli.demo import run_demo

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
    from server.state.feature_store import FeatureStore, SchemaMismatch, read_feature_file

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
    from server.ids import id_problem
    from server.state.feature_store import FeatureStore

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
    from server.state.feature_store import FeatureStore

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
    from server.catalog.spec import CatalogInvalid, parse_catalog
    from server.state.catalog_store import current_schema

    try:
        text = opts.file.read_text()
    except OSError as err:
        err_console.print(f"error: {err}")
        return 2
    if opts.features is not None:
        from server.state.feature_store import merged_schema, read_feature_file

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
    from server.catalog.spec import CatalogInvalid
    from server.state.catalog_store import NoSchema, publish

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
    from server.state.catalog_store import list_versions

    with _redis(opts) as (client, keys):
        versions = list_versions(client, keys)
    for _seq, version, source, at, live in versions:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
        console.print(f"{'*' if live else ' '} {version:<14} {stamp}  {source}", highlight=False)
    return 0


def cmd_model_publish(opts: argparse.Namespace) -> int:
    from server.models.registry import ModelRejected, publish
    from server.state.catalog_store import current_schema

    with _redis(opts) as (client, keys):
        try:
            version = publish(client, keys, opts.directory, current_schema(client, keys))
        except ModelRejected as err:
            err_console.print(f"rejected: {err}\nnothing was published; the live model is unchanged")
            return 1
    console.print(f"model {version} published; servers swap to it after loading and verifying it")
    return 0


def cmd_model_rollback(opts: argparse.Namespace) -> int:
    from server.models.registry import ModelRejected, rollback

    with _redis(opts) as (client, keys):
        try:
            version = rollback(client, keys)
        except ModelRejected as err:
            err_console.print(f"error: {err}")
            return 1
    console.print(f"rolled back: model {version} is live again")
    return 0


def cmd_model_list(opts: argparse.Namespace) -> int:
    from server.models.registry import list_models

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


def _print_lines(lines: Sequence[str], *, stderr: bool = False) -> None:
    for line in lines:
        (err_console if stderr else console).print(line, highlight=False, markup=False, emoji=False, soft_wrap=True)


def _plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else words or word + 's'}"


def _parse_at(text: str | None, tz: tzinfo) -> float:
    if text is None:
        return time.time()
    at = datetime.fromisoformat(text)
    return (at if at.tzinfo is not None else at.replace(tzinfo=tz)).timestamp()


def cmd_budgets(opts: argparse.Namespace) -> int:
    from server.cli.budgets import NoCatalog, build_report, format_report, live_catalog, report_json

    with _redis(opts) as (client, keys):
        try:
            catalog = live_catalog(client, keys)
        except NoCatalog as err:
            err_console.print(f"error: {err}")
            return 1
        try:
            now = _parse_at(opts.at, catalog.timezone)
        except ValueError as err:
            err_console.print(f"error: --at: {err}")
            return 2
        report = build_report(client, keys, catalog, now)
    if opts.json:
        print(report_json(report))
    else:
        _print_lines(format_report(report))
    return 0


def cmd_budgets_reconcile(opts: argparse.Namespace) -> int:
    from server.cli.budgets import (
        NoCatalog,
        apply_reconcile,
        describe_scan,
        format_drifts,
        live_catalog,
        plan_reconcile,
    )

    settings = _settings(opts)
    with _redis(opts) as (client, keys):
        try:
            live = live_catalog(client, keys)
        except NoCatalog as err:
            err_console.print(f"error: {err}")
            return 1
        plan = plan_reconcile(
            client,
            keys,
            live,
            maxlen=settings.decision_stream_maxlen,
            history_ttl=settings.contact_history_ttl_seconds,
            now=time.time(),
        )
        _print_lines(describe_scan(plan, live.timezone))
        _print_lines([f"warning: {gap}" for gap in plan.gaps], stderr=True)
        found = plan.all_drifts
        if found:
            _print_lines(format_drifts(found))
        summary = (
            f"{_plural(len(found), 'drift')} in {_plural(len({d.key for d in found}), 'hash', 'hashes')} "
            f"({_plural(len(plan.budget_drifts), 'budget counter')}, "
            f"{_plural(len(plan.customers.drifts), 'per-customer count')})"
        )
        if plan.gaps and not opts.force:
            _print_lines(
                [
                    "refused: awards before the log starts cannot be rebuilt from it; nothing was written. "
                    "Pass --force to set the counters to what the log holds anyway."
                ],
                stderr=True,
            )
            return 3
        if not found:
            _print_lines(["no drift: every counter matches the decision log"])
            return 0
        if opts.dry_run:
            _print_lines([f"{summary}; dry run: nothing written"])
            return 1
        apply_reconcile(client, plan, settings.contact_history_ttl_seconds)
    _print_lines([f"{summary}: fixed"])
    return 0


def cmd_decide(opts: argparse.Namespace) -> int:
    import grpc

    from server.api.client import NboClient, print_decision

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
