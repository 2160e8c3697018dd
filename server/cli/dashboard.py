"""`nbo dashboard`: the live campaign page (server/dashboard), beside the servers on their Redis."""

from __future__ import annotations

import argparse
import ipaddress

from server.cli.common import checked_redis, err_console, print_lines, redis_flags, settings

NAME = "dashboard"
HELP = "a live campaign page (decisions/s, acceptance by campaign, budgets and pace, versions)"
DESCRIPTION = """\
Serve a live campaign page on http://HOST:PORT/ and its numbers as JSON on /api/live: decisions
per second, decisions, awards and acceptances per campaign, no-offer reasons, budget burn and
pace, and the live catalog, model, challenger and bandit versions.

It follows the decision and outcome log streams of the Redis the servers use (no consumer group,
nothing acknowledged or written) and counts the last --window seconds in memory; budgets and
versions are read when a page asks, at most once a second. The page has no authentication:
it binds the loopback address unless --host says otherwise, which needs --insecure."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    redis_flags(p)
    # --redis is accepted for --redis-url: the dashboard's users type it so
    p.add_argument(
        "--redis", dest="redis_url", metavar="URL", default=argparse.SUPPRESS, help="the same as --redis-url"
    )
    p.add_argument(
        "--host", dest="dashboard_host", metavar="HOST", default="127.0.0.1", help="bind address (default 127.0.0.1)"
    )
    p.add_argument(
        "--port",
        dest="dashboard_port",
        metavar="PORT",
        type=int,
        default=8050,
        help="port (default 8050; 0 = any free)",
    )
    p.add_argument(
        "--window",
        metavar="SECONDS",
        type=_window,
        default=3600,
        help="seconds of log the page counts (default 3600; at least 60)",
    )
    p.add_argument(
        "--insecure",
        dest="dashboard_insecure",
        action="store_true",
        help="serve a non-loopback --host although the page has no authentication",
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")


def run(opts: argparse.Namespace) -> int:
    import asyncio

    from server.config import configure_logging
    from server.dashboard.serve import DashboardOptions, serve_dashboard

    if not (_loopback(opts.dashboard_host) or opts.dashboard_insecure):
        err_console.print(
            f"error: --host {opts.dashboard_host} is not a loopback address and the page has no "
            "authentication; pass --insecure to serve it anyway (or put it behind a proxy that authenticates)"
        )
        return 2
    chosen = settings(opts)
    configure_logging(chosen.log_level, log_customer_ids=chosen.log_customer_ids)
    options = DashboardOptions(opts.dashboard_host, opts.dashboard_port, opts.window)
    with checked_redis(chosen) as url:
        asyncio.run(serve_dashboard(chosen, url, options, announce=lambda line: print_lines([line])))
    return 0


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _window(text: str) -> int:
    try:
        seconds = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if seconds < 60:
        raise argparse.ArgumentTypeError(f"must be at least 60 seconds, got {seconds}")
    return seconds
