"""The `nbo` command: one module per subcommand, each registered the same way.

A command module has `NAME`, `HELP`, `add_arguments(parser)` and `run(opts) -> int`. The
parser is built from `COMMANDS`; only the command being run gets its arguments added, so `nbo
features get` does not import what `nbo simulate` needs (the offline commands' arguments live
with their code in training/, which pulls in LightGBM, gRPC and the synthetic world).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Protocol

import redis

from server.cli import (
    budgets,
    catalog,
    conversions,
    dashboard,
    decide,
    demo,
    export,
    features,
    learner,
    model,
    ope,
    report,
    retrain,
    segments,
    serve,
    simulate,
    tokens,
    train,
)
from server.cli.common import err_console


class Command(Protocol):
    """What a command module provides (modules satisfy a Protocol by their attributes)."""

    NAME: str
    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, opts: argparse.Namespace) -> int: ...


COMMANDS: tuple[Command, ...] = (
    serve,
    learner,
    demo,
    features,
    catalog,
    model,
    budgets,
    conversions,
    dashboard,
    export,
    report,
    ope,
    segments,
    simulate,
    train,
    retrain,
    decide,
    tokens,
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `nbo` parser: every command with its help; the arguments of command `only` (all when None)."""
    parser = argparse.ArgumentParser(prog="nbo", description="Real-time next-best-offer decisioning server")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP)
        p.set_defaults(run=command.run)
        if only is None or only == command.NAME:
            command.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # the first argument names the command, unless it is an option (nbo --help)
    only = args[0] if args and not args[0].startswith("-") else ""
    opts = build_parser(only).parse_args(args)
    try:
        return int(opts.run(opts))
    except KeyboardInterrupt:
        return 130
    except (redis.exceptions.ConnectionError, redis.exceptions.RedisClusterException) as err:
        err_console.print(f"error: cannot reach Redis: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
