"""`nbo learner`: the bandit's online learner on its own (`nbo serve --learner` runs it beside the server)."""

from __future__ import annotations

import argparse

from server.cli.common import checked_redis, redis_flags, settings

NAME = "learner"
HELP = "run the bandit's online learner (consumes the outcome stream)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    redis_flags(p)
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")
    p.add_argument("--metrics-port", type=int, help="serve the learner's Prometheus metrics on this port")


def run(opts: argparse.Namespace) -> int:
    import asyncio

    from server.config import configure_logging
    from server.learning.learner import run_learner

    chosen = settings(opts)
    configure_logging(chosen.log_level, log_customer_ids=chosen.log_customer_ids)
    with checked_redis(chosen) as url:
        asyncio.run(run_learner(chosen, url, serve_metrics=True))
    return 0
