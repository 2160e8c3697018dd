"""`nbo model {publish,rollback,list,challenger,promote,compare}`: propensity-model artifacts, which
one is live, a challenger for a share of customers, and how the two fare in the log."""

from __future__ import annotations

import argparse
from pathlib import Path

from server.cli.common import console, err_console, iso_epoch, open_redis, print_lines, redis_flags

NAME = "model"
HELP = "propensity-model artifacts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="model_command", required=True)
    p = sub.add_parser("publish", help="validate an artifact directory and make it the live model")
    redis_flags(p)
    p.add_argument("directory", type=Path)
    p = sub.add_parser("rollback", help="return to the model published before the live one")
    redis_flags(p)
    p = sub.add_parser("list", help="published models: * live, c challenger, r rolled back")
    redis_flags(p)
    p = sub.add_parser("challenger", help="send a share of customers to another published model, or --off")
    redis_flags(p)
    p.add_argument("version", nargs="?", help="a published model version (nbo model list)")
    p.add_argument("--share", type=float, help="share of customers, between 0 and 1 (exclusive)")
    p.add_argument("--salt", help="salt of the customer split (default: the version; another salt, another split)")
    p.add_argument("--off", action="store_true", help="end the split: every customer back to the live model")
    p = sub.add_parser("promote", help="make the challenger (or VERSION) the live model and end the split")
    redis_flags(p)
    p.add_argument("version", nargs="?", help="a stored model version (default: the challenger)")
    p = sub.add_parser("compare", help="acceptance and value per decision of each model version, from the log")
    redis_flags(p)
    p.add_argument("--since", type=iso_epoch, help="decisions at or after this time (ISO 8601; naive = UTC)")
    p.add_argument("--until", type=iso_epoch, help="decisions before this time (ISO 8601; naive = UTC)")
    p.add_argument("--csv", type=Path, help="also write the figures to this CSV file")
    p.add_argument("--min-n", type=int, default=30, help="decisions (or awarded offers) a figure needs (default 30)")


def run(opts: argparse.Namespace) -> int:
    commands = {"publish": _publish, "rollback": _rollback, "list": _list, "challenger": _challenger}
    commands.update({"promote": _promote, "compare": _compare})
    return commands[opts.model_command](opts)


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
    from server.models.registry import list_models, validation_sets

    with open_redis(opts) as (client, keys):
        models = list_models(client, keys)
    if not models:
        console.print("no model published; decisions use the catalog's prior propensities")
    lines = []
    for m in models:
        metrics = m.metadata.get("metrics", {})
        auc = metrics.get("auc")
        if m.live:
            mark, note = "*", "  live"
        elif m.challenger_share is not None:
            mark, note = "c", f"  challenger for {m.challenger_share:.4g} of customers"
        elif m.rolled_back:
            mark, note = "r", "  rolled back"
        else:
            mark, note = " ", ""
        shown = auc if auc is None else round(auc, 4)
        lines.append(f"{mark} {m.version}  auc={shown}  ece={metrics.get('ece')}{note}")
    print_lines(lines)
    if len(models) > 1 and (len(sets := validation_sets(models)) > 1 or any(h is None for h, _ in sets)):
        print_lines(
            [
                "warning: these AUCs come from different (or unrecorded) validation sets (training data "
                "or validation split): they are not comparable; compare models on the same data "
                "(nbo model compare, or one evaluation of both)"
            ],
            stderr=True,
        )
    return 0


def _challenger(opts: argparse.Namespace) -> int:
    from server.models.champion import clear_challenger, set_challenger
    from server.models.registry import ModelRejected

    if opts.off:
        if opts.version or opts.share is not None or opts.salt:
            return _error("--off takes no version, --share or --salt", 2)
        with open_redis(opts) as (client, keys):
            ended = clear_challenger(client, keys)
        print_lines([f"split ended: {ended.version} no longer decides" if ended else "no challenger was on"])
        return 0
    if not opts.version or opts.share is None:
        return _error("give a VERSION and --share (or --off)", 2)
    with open_redis(opts) as (client, keys):
        try:
            split = set_challenger(client, keys, opts.version, opts.share, opts.salt)
        except ModelRejected as err:
            return _error(str(err), 1)
    print_lines([f"challenger {split.version} decides for {split.share:g} of customers (salt {split.salt!r})"])
    return 0


def _promote(opts: argparse.Namespace) -> int:
    from server.models.champion import promote
    from server.models.registry import ModelRejected

    with open_redis(opts) as (client, keys):
        try:
            version = promote(client, keys, opts.version)
        except ModelRejected as err:
            return _error(str(err), 1)
    print_lines([f"model {version} is live; no challenger is on"])
    return 0


def _compare(opts: argparse.Namespace) -> int:
    from server.cli.model_compare import report
    from server.models.compare import compare
    from server.state.log_reader import LogReader

    if opts.min_n < 2:
        return _error("--min-n must be at least 2", 2)
    with open_redis(opts) as (client, keys):
        result = compare(LogReader(client, keys), since=opts.since, until=opts.until, min_n=opts.min_n)
    print_lines(report(result))
    if opts.csv is not None:
        from server.cli.model_compare import write_csv

        write_csv(result, opts.csv)
    return 0


def _error(message: str, code: int) -> int:
    print_lines([f"error: {message}"], stderr=True)
    return code
