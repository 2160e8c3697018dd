"""`nbo demo` (registered in server/cli/demo.py): a private Redis, a synthetic world of 10,000
customers and its catalog, a propensity model trained on its simulated history, the real server
in its worker processes, and a handful of real gRPC decisions printed for a person to read."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from rich.console import Console

from server.api.client import NboClient, print_decision
from server.api.tls import ClientTls
from server.config import Settings, configure_logging
from server.features.file import FeatureTable, merged_schema
from server.models.registry import publish as model_publish
from server.pipeline.control_groups import in_holdout
from server.state.catalog_store import current_schema, publish
from server.state.embedded_redis import EmbeddedRedis
from server.state.feature_store import FeatureStore, read_feature_file
from server.state.keys import Keys
from server.state.redis_client import redacted, sync_client
from server.supervisor import ServerGroup
from training.dataset import write_dataset
from training.population import CATEGORICAL, Population
from training.train import train
from training.world import World

DEMO_LOG_DECISIONS = 60_000


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


def run_demo(settings: Settings, *, customers: int, seed: int, keep_serving: bool, token: str | None = None) -> int:
    """`token`: the API token the sample decisions send (needed only if auth_tokens_file is set)."""
    # the sample decisions are the output; routine worker logs would only interleave with them
    if settings.log_level == "INFO":
        settings = settings.model_copy(update={"log_level": "WARNING"})
    configure_logging(settings.log_level, log_customer_ids=settings.log_customer_ids)
    console = Console(width=max(Console().width, 110))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with _demo_redis(settings) as (url, settings):
        console.print(f"[bold]Redis[/] {redacted(url)} (keys under {settings.key_prefix!r})")
        keys = Keys(settings.key_prefix)
        client = sync_client(url, settings)
        # a fresh start each run: contact history from an earlier demo would change the answers
        for key in client.scan_iter(match=f"{settings.key_prefix}*", count=1000):
            client.unlink(key)
        world = World.create(n_customers=customers, seed=seed)
        csv_path = settings.data_dir / "demo_customers.csv"
        world.write_features(csv_path)
        store = FeatureStore(client, keys)
        table = read_feature_file(csv_path, CATEGORICAL, base=store.current_schema())
        result = store.load(table, replace_schema=True)
        console.print(
            f"[bold]Features[/] {result.rows} synthetic customers x {len(table.specs)} features "
            f"loaded from {csv_path} (schema v{result.schema_version})"
        )
        catalog_path = settings.data_dir / "demo_catalog.yaml"
        catalog_path.write_text(world.catalog_yaml())
        published = publish(client, keys, catalog_path.read_text(), source=str(catalog_path))
        console.print(f"[bold]Catalog[/] {catalog_path} {published.version}: {world.n_offers} offers")
        version = _train_and_publish(console, client, keys, world, settings.data_dir, table)
        client.close()
        console.print(f"[bold]Model[/] {version} published")
        pop = world.population

        group = ServerGroup(settings, url)
        group.start()
        try:
            group.wait_ready()
            console.print(f"[bold]Server[/] {settings.workers} worker(s) on {group.target}\n")
            _sample_decisions(console, group.target, pop, seed, ClientTls.from_settings(settings), token)
            if keep_serving:
                _serve_until_signal(console, group, url)
        finally:
            code = group.stop()
    return code


def _train_and_publish(
    console: Console, client: redis.Redis, keys: Keys, world: World, data_dir: Path, table: FeatureTable
) -> str:
    """Train a propensity model on a simulated history of this world and make it live."""
    started = time.perf_counter()
    log_path = data_dir / "demo_log.parquet"
    write_dataset(log_path, world.simulate_log(n_decisions=DEMO_LOG_DECISIONS, seed=11))
    out = data_dir / "demo_model"
    result = train(
        log_path,
        out,
        catalog=data_dir / "demo_catalog.yaml",
        progress=False,
        oracle=world.oracle_for_log,
        live_schema=merged_schema(table, None),
    )
    m = result.metrics
    console.print(
        f"[bold]Training[/] {DEMO_LOG_DECISIONS:,} simulated past decisions -> validation AUC {m['auc']:.3f} "
        f"(oracle {m['oracle_auc']:.3f}, catalog priors {m['prior_auc']:.3f}), calibration error {m['ece']:.3f}, "
        f"{time.perf_counter() - started:.1f}s"
    )
    return model_publish(client, keys, out, current_schema(client, keys))


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


def _sample_decisions(
    console: Console, target: str, pop: Population, seed: int, tls: ClientTls | None, token: str | None
) -> None:
    salt, fraction = f"world-{seed}", 0.05  # the world catalog's universal control group
    used: set[str] = set()
    at_risk_vip = _pick(pop, {"tier": "A", "churn_risk": lambda v: v >= 0.3, "consent_call": 1.0}, used, salt, fraction)
    newbie = _pick(pop, {"days_since_signup": lambda v: v <= 90, "consent_web": 1.0}, used, salt, fraction)
    shopper = _pick(pop, {"consent_web": 1.0}, used, salt, fraction)
    returning = _pick(pop, {"consent_call": 1.0, "tier": "B"}, used, salt, fraction)
    opted_out = _pick(pop, {"consent_call": 0.0}, used, salt, fraction)
    control = next(c for c in pop.customer_ids if in_holdout(salt, c, fraction))

    client = NboClient(target, tls=tls, token=token)
    try:
        first = client.decide(at_risk_vip, "call_centre", max_offers=3, explain=True)
        print_decision(console, f"Call centre, top 3 with explanations: {at_risk_vip} (tier A, at risk)", first)
        print_decision(
            console,
            f"Call centre, caller mentions a billing problem after a long absence: {returning}",
            client.decide(
                returning,
                "call_centre",
                max_offers=3,
                explain=True,
                events=["login_after_absence", "billing_call"],
                context={"call_reason_billing": 1.0},
            ),
        )
        print_decision(console, f"Web, one offer: {newbie} (new customer)", client.decide(newbie, "web"))
        print_decision(
            console,
            f"Web, viewing a cart with 95 EUR in it: {shopper}",
            client.decide(shopper, "web", context={"cart_value": 95.0}, events=["cart_view"]),
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
                f"Call centre again: {at_risk_vip} (the declined offer is in its cooldown; the daily call cap is used)",
                client.decide(at_risk_vip, "call_centre", max_offers=3, explain=True),
            )
        print_decision(console, f"Call centre: {opted_out} (no call consent)", client.decide(opted_out, "call_centre"))
        print_decision(console, f"Web: {control} (universal control group)", client.decide(control, "web"))
        print_decision(console, "Web: NOBODY-42 (not a known customer)", client.decide("NOBODY-42", "web"))
    finally:
        client.close()


def _serve_until_signal(console: Console, group: ServerGroup, url: str) -> None:
    console.print(
        f"\n[bold]Serving[/] on {group.target} (Redis {redacted(url)}). Try:\n"
        f"  nbo decide C0000001 --target {group.target} --channel call_centre --max-offers 3 --explain\n"
        f"  grpcurl -plaintext {group.target} list\n"
        + (
            f"  curl -s http://{group.target.rpartition(':')[0]}:{group.settings.http_port}/v1/decide "
            '-H \'content-type: application/json\' -d \'{"customerId":"C0000001","channel":"WEB"}\'\n'
            if group.settings.http_port is not None
            else ""
        )
        + "Stop with Ctrl-C or SIGTERM."
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # dead workers are replaced by the group; only a crash loop ends the demo early
    while not stop.wait(0.5):
        if group.failed:
            break


__all__ = ["run_demo"]
