"""`nbo demo`: a private Redis, 10,000 synthetic customers, the demo catalog, the real server in
its worker processes, and a handful of real gRPC decisions printed for a person to read."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator
from importlib import resources

import redis
from rich.console import Console

from server.app import ServerGroup, _configure_logging
from server.catalog_store import publish
from server.client import NboClient, print_decision
from server.config import Settings
from server.control_groups import in_holdout
from server.embedded_redis import EmbeddedRedis
from server.features import FeatureStore, read_feature_file
from server.keys import Keys
from training.population import CATEGORICAL, Population, make_population

DEFAULT_PORT = 50051


def demo_catalog_text() -> str:
    return resources.files("server").joinpath("demo", "catalog.yaml").read_text()


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _pick(pop: Population, want: dict[str, object], skip: set[str], salt: str, fraction: float) -> str:
    """The first customer matching every (column, predicate-or-value) pair, outside the control group."""
    cols = pop.columns
    for i, cid in enumerate(pop.customer_ids):
        if cid in skip or in_holdout(salt, cid, fraction):
            continue
        ok = True
        for name, cond in want.items():
            value = cols[name][i]
            ok = cond(value) if callable(cond) else value == cond
            if not ok:
                break
        if ok:
            skip.add(cid)
            return cid
    raise LookupError(f"no demo customer matches {want}")


def run_demo(settings: Settings, *, customers: int, seed: int, keep_serving: bool) -> int:
    # the sample decisions are the output; routine worker logs would only interleave with them
    if settings.log_level == "INFO":
        settings = settings.model_copy(update={"log_level": "WARNING"})
    _configure_logging(settings.log_level)
    console = Console(width=max(Console().width, 110))
    if not settings.port:
        port = DEFAULT_PORT if _port_free(settings.host, DEFAULT_PORT) else 0
        settings = settings.model_copy(update={"port": port})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with _demo_redis(settings) as (url, settings):
        console.print(f"[bold]Redis[/] {url} (keys under {settings.key_prefix!r})")
        keys = Keys(settings.key_prefix)
        client = redis.Redis.from_url(url)
        # a fresh start each run: contact history from an earlier demo would change the answers
        for key in client.scan_iter(match=f"{settings.key_prefix}*", count=1000):
            client.unlink(key)
        pop = make_population(customers, seed=seed)
        csv_path = settings.data_dir / "demo_customers.csv"
        pop.write_csv(str(csv_path))
        store = FeatureStore(client, keys)
        table = read_feature_file(csv_path, CATEGORICAL, base=store.current_schema())
        result = store.load(table, replace_schema=True)
        console.print(
            f"[bold]Features[/] {result.rows} synthetic customers x {len(table.specs)} features "
            f"loaded from {csv_path} (schema v{result.schema_version})"
        )
        published = publish(client, keys, demo_catalog_text(), source="demo catalog")
        client.close()
        console.print(f"[bold]Catalog[/] demo catalog {published.version}")

        group = ServerGroup(settings, url)
        group.start()
        try:
            group.wait_ready()
            console.print(f"[bold]Server[/] {settings.workers} worker(s) on {group.target}\n")
            _sample_decisions(console, group.target, pop)
            if keep_serving:
                _serve_until_signal(console, group, url)
        finally:
            code = group.stop()
    return code


@contextlib.contextmanager
def _demo_redis(settings: Settings) -> Iterator[tuple[str, Settings]]:
    """The demo's own throw-away Redis, or its own key prefix inside the configured one."""
    url = settings.redis_url
    if url:
        if settings.key_prefix == Settings.model_fields["key_prefix"].default:
            settings = settings.model_copy(update={"key_prefix": "nbo-demo:"})
        yield url, settings
        return
    with EmbeddedRedis(settings.data_dir / "demo-redis", persist=False) as embedded:
        yield embedded.url, settings


def _sample_decisions(console: Console, target: str, pop: Population) -> None:
    salt, fraction = "demo-2026", 0.05
    used: set[str] = set()
    at_risk_vip = _pick(pop, {"tier": "A", "churn_risk": lambda v: v >= 0.3, "consent_call": 1.0}, used, salt, fraction)
    newbie = _pick(pop, {"days_since_signup": lambda v: v <= 90, "consent_web": 1.0}, used, salt, fraction)
    shopper = _pick(pop, {"consent_web": 1.0}, used, salt, fraction)
    returning = _pick(pop, {"consent_call": 1.0, "tier": "B"}, used, salt, fraction)
    opted_out = _pick(pop, {"consent_call": 0.0}, used, salt, fraction)
    control = next(c for c in pop.customer_ids if in_holdout(salt, c, fraction))

    client = NboClient(target)
    try:
        first = client.decide(at_risk_vip, "call_centre", max_offers=3, explain=True)
        print_decision(console, f"Call centre, top 3 with explanations: {at_risk_vip} (tier A, at risk)", first)
        print_decision(
            console,
            f"Call centre, caller mentions a billing problem after a long absence: {returning}",
            client.decide(
                returning, "call_centre", max_offers=3, explain=True, events=["login_after_absence", "billing_call"]
            ),
        )
        print_decision(console, f"Web, one offer: {newbie} (new customer)", client.decide(newbie, "web"))
        print_decision(
            console,
            f"Web, cart abandoned with 95 EUR in it: {shopper}",
            client.decide(shopper, "web", context={"cart_value": 95.0}, events=["cart_abandoned"]),
        )
        if first.offers:
            best = first.offers[0]
            result = client.report(first.decision_id, best.offer_id, "declined")
            again = client.report(first.decision_id, best.offer_id, "declined")
            console.rule("[bold]Outcome")
            console.print(
                f"{at_risk_vip} declined {best.offer_id}: recorded={result.recorded}; "
                f"the same report again: duplicate={again.duplicate}"
            )
            print_decision(
                console,
                f"Call centre again: {at_risk_vip} (the declined offer is now in its cooldown)",
                client.decide(at_risk_vip, "call_centre", max_offers=3, explain=True),
            )
        print_decision(console, f"Call centre: {opted_out} (no call consent)", client.decide(opted_out, "call_centre"))
        print_decision(console, f"Web: {control} (universal control group)", client.decide(control, "web"))
        print_decision(console, "Web: NOBODY-42 (not a known customer)", client.decide("NOBODY-42", "web"))
    finally:
        client.close()


def _serve_until_signal(console: Console, group: ServerGroup, url: str) -> None:
    console.print(
        f"\n[bold]Serving[/] on {group.target} (Redis {url}). Try:\n"
        f"  nbo decide C0000001 --target {group.target} --channel call_centre --max-offers 3 --explain\n"
        f"  grpcurl -plaintext {group.target} list\n"
        "Stop with Ctrl-C or SIGTERM."
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        if not all(p.is_alive() for p in group.procs):
            break


__all__ = ["demo_catalog_text", "run_demo"]
