"""`nbo demo`: synthetic customers, their catalog and a trained model on a private Redis, the real
server, and sample decisions (training/demo.py does it)."""

from __future__ import annotations

import argparse

from server.cli.common import err_console, redis_flags, serve_flags, settings, token, token_flag

NAME = "demo"
HELP = "synthetic customers + demo catalog + server + sample decisions"


def add_arguments(p: argparse.ArgumentParser) -> None:
    redis_flags(p)
    serve_flags(p)
    p.add_argument("--serve", action="store_true", help="keep serving after the sample decisions")
    p.add_argument("--customers", type=int, default=10_000, help="synthetic customers (default 10000)")
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic population")
    token_flag(p)


def run(opts: argparse.Namespace) -> int:
    from training.demo import run_demo

    chosen, given = settings(opts), token(opts)
    if chosen.auth_enabled and given is None:
        err_console.print(
            f"error: auth_tokens_file is set ({chosen.auth_tokens_file}), so the demo's server authenticates its "
            "callers: give --token (or NBO_TOKEN) of a client with the roles decide and report"
        )
        return 2
    return run_demo(chosen, customers=opts.customers, seed=opts.seed, keep_serving=opts.serve, token=given)
