"""`nbo model {publish,rollback,list}`: propensity-model artifacts and which one is live."""

from __future__ import annotations

import argparse
from pathlib import Path

from server.cli.common import console, err_console, open_redis, redis_flags

NAME = "model"
HELP = "propensity-model artifacts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="model_command", required=True)
    p = sub.add_parser("publish", help="validate an artifact directory and make it the live model")
    redis_flags(p)
    p.add_argument("directory", type=Path)
    p = sub.add_parser("rollback", help="return to the model published before the live one")
    redis_flags(p)
    p = sub.add_parser("list", help="published models; * marks the live one")
    redis_flags(p)


def run(opts: argparse.Namespace) -> int:
    return {"publish": _publish, "rollback": _rollback, "list": _list}[opts.model_command](opts)


def _publish(opts: argparse.Namespace) -> int:
    from server.models.registry import ModelRejected, publish
    from server.state.catalog_store import current_schema

    with open_redis(opts) as (client, keys):
        try:
            version = publish(client, keys, opts.directory, current_schema(client, keys))
        except ModelRejected as err:
            err_console.print(f"rejected: {err}\nnothing was published; the live model is unchanged")
            return 1
    console.print(f"model {version} published; servers swap to it after loading and verifying it")
    return 0


def _rollback(opts: argparse.Namespace) -> int:
    from server.models.registry import ModelRejected, rollback

    with open_redis(opts) as (client, keys):
        try:
            version = rollback(client, keys)
        except ModelRejected as err:
            err_console.print(f"error: {err}")
            return 1
    console.print(f"rolled back: model {version} is live again")
    return 0


def _list(opts: argparse.Namespace) -> int:
    from server.models.registry import list_models

    with open_redis(opts) as (client, keys):
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
