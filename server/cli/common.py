"""What the `nbo` commands share: consoles, Settings from flags, the Redis they work on, times."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path

import redis
from pydantic import ValidationError
from rich.console import Console

from server.config import Settings
from server.state.keys import Keys

console = Console()
err_console = Console(stderr=True)


def settings(opts: argparse.Namespace) -> Settings:
    """Settings from NBO_* env vars, overridden by the flags that were given."""
    fields = set(Settings.model_fields)
    overrides = {k: v for k, v in vars(opts).items() if k in fields and v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as err:
        for e in err.errors():
            where = ".".join(map(str, e["loc"]))
            # a rule over several settings has no single field; its message names them
            err_console.print(f"error: setting {where}: {e['msg']}" if where else f"error: settings: {e['msg']}")
        raise SystemExit(2) from None


def redis_flags(p: argparse.ArgumentParser, *, nested: bool = False) -> None:
    """--redis-url, --data-dir, --key-prefix and --redis-cluster: which Redis (a single node or a
    cluster), and which deployment's keys in it."""
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
    p.add_argument(
        "--redis-cluster",
        dest="redis_cluster",
        action="store_true",
        default=default,
        help="the Redis URL is a node of a Redis Cluster (default: NBO_REDIS_CLUSTER, else no)",
    )


def serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="gRPC port (default 50051; 0 = any free port)")
    p.add_argument("--http-port", type=int, help="also serve HTTP/JSON on this port (default off; 0 = any free port)")
    p.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")
    p.add_argument(
        "--metrics-port",
        type=int,
        help="the one Prometheus endpoint, every process added up (worker i alone: +1+i; 0 = any free port)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="serve a non-loopback --host without TLS and authentication (refused otherwise)",
    )


def token_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token", help="API token to send to the server (default: NBO_TOKEN; none if unset)")


def token(opts: argparse.Namespace) -> str | None:
    """The API token of --token, else of NBO_TOKEN (the command's caller identity), else None."""
    given: str | None = opts.token or os.environ.get("NBO_TOKEN")
    return given or None


def client_tls_flags(p: argparse.ArgumentParser) -> None:
    """TLS towards the server for commands that call it (else NBO_TLS_CA_FILE and its siblings)."""
    p.add_argument("--tls-ca-file", type=Path, help="connect with TLS, trusting this PEM CA (default: plaintext)")
    p.add_argument("--tls-client-cert-file", type=Path, help="PEM certificate for a mutual-TLS server")
    p.add_argument("--tls-client-key-file", type=Path, help="PEM private key of --tls-client-cert-file")


@contextlib.contextmanager
def open_redis(opts: argparse.Namespace) -> Iterator[tuple[redis.Redis, Keys]]:
    """A client of the configured (or private) Redis and the key names, closed on exit."""
    from server.app import redis_for
    from server.state.redis_client import sync_client

    chosen = settings(opts)
    with redis_for(chosen) as url:
        client = sync_client(url, chosen)
        try:
            yield client, Keys(chosen.key_prefix)
        finally:
            client.close()


@contextlib.contextmanager
def checked_redis(chosen: Settings) -> Iterator[str]:
    """The URL of the configured (or private) Redis once it answers with the access a server
    process needs; else the reason on stderr and exit status 2."""
    from server.app import redis_for
    from server.state.redis_client import RedisAccessError, check_access

    with redis_for(chosen) as url:
        try:
            check_access(url, chosen)
        except RedisAccessError as err:
            err_console.print(f"error: {err}")
            raise SystemExit(2) from None
        yield url


def parse_at(text: str | None, tz: tzinfo) -> float:
    """Epoch seconds of an ISO 8601 time (naive: in `tz`); now when None. ValueError if unreadable."""
    if text is None:
        return time.time()
    at = datetime.fromisoformat(text)
    return (at if at.tzinfo is not None else at.replace(tzinfo=tz)).timestamp()


def iso_epoch(text: str) -> float:
    """An argparse type: epoch seconds of an ISO 8601 time (naive = UTC)."""
    try:
        return parse_at(text, UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {text!r}") from None


def names(text: str) -> list[str]:
    """The names of a comma-separated list."""
    return [n.strip() for n in text.split(",") if n.strip()]


def print_lines(lines: Sequence[str], *, stderr: bool = False) -> None:
    """Plain lines, one per line however narrow the terminal, for people and scripts alike."""
    for line in lines:
        (err_console if stderr else console).print(line, highlight=False, markup=False, emoji=False, soft_wrap=True)


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else words or word + 's'}"
