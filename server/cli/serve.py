"""`nbo serve`: the gRPC server in its worker processes (and, with --learner, the learner)."""

from __future__ import annotations

import argparse
from pathlib import Path

from server.cli.common import redis_flags, serve_flags, settings

NAME = "serve"
HELP = "run the gRPC server"


def add_arguments(p: argparse.ArgumentParser) -> None:
    redis_flags(p)
    serve_flags(p)
    p.add_argument("--catalog", type=Path, help="catalog YAML to validate and publish at start-up")
    p.add_argument(
        "--learner", action="store_true", default=None, help="also run the bandit's learner in its own process"
    )


def run(opts: argparse.Namespace) -> int:
    from server.supervisor import run_server

    return run_server(settings(opts))
