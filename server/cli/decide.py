"""`nbo decide`: ask a running server for a decision, as any gRPC caller would."""

from __future__ import annotations

import argparse

from server.cli.common import client_tls_flags, console, err_console, settings, token, token_flag

NAME = "decide"
HELP = "ask a running server for a decision"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("customer_id")
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--channel", default="web", choices=["call_centre", "web", "mobile_app", "email"])
    p.add_argument("--max-offers", type=int, default=1)
    p.add_argument("--explain", action="store_true")
    p.add_argument("--context", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--event", action="append", default=[])
    p.add_argument("--request-id", default="")
    token_flag(p)
    client_tls_flags(p)


def _context(items: list[str]) -> dict[str, float] | None:
    """The --context pairs; None (after saying which) when one is not KEY=NUMBER."""
    context = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            context[key] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            err_console.print(f"error: --context {item!r}: expected KEY=NUMBER")
            return None
    return context


def run(opts: argparse.Namespace) -> int:
    import grpc

    from server.api.client import NboClient, print_decision
    from server.api.tls import ClientTls

    context = _context(opts.context)
    if context is None:
        return 2
    client = NboClient(opts.target, tls=ClientTls.from_settings(settings(opts)), token=token(opts))
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
