"""`nbo learner`: the bandit's online learner on its own (`nbo serve --learner` runs it beside the server)."""

from __future__ import annotations

import argparse

from server.cli.common import err_console, redis_flags, settings

NAME = "learner"
HELP = "run the bandit's online learner (consumes the outcome stream)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    redis_flags(p)
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")
    p.add_argument("--metrics-port", type=int, help="serve the learner's Prometheus metrics on this port")


def run(opts: argparse.Namespace) -> int:
    import asyncio

    from server.app import redis_for
    from server.config import configure_logging
    from server.learning.learner import run_learner
    from server.state.redis_client import RedisAccessError, check_access

    chosen = settings(opts)
    configure_logging(chosen.log_level, log_customer_ids=chosen.log_customer_ids)
    with redis_for(chosen) as url:
        try:
            check_access(url, chosen)
        except RedisAccessError as err:
            err_console.print(f"error: {err}")
            return 2
        asyncio.run(run_learner(chosen, url, serve_metrics=True))
    return 0
