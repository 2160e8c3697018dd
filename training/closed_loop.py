"""`nbo simulate`: the real server (gRPC, Redis, learner) against the synthetic world, closed loop.

The world draws a channel, a consenting customer and a context (as `World.simulate_log` does);
the server decides over gRPC; the world draws the customer's answer from its true response and
reports it through ReportOutcome (ACCEPTED, else DECLINED, so the contact policy's decline
cooldown applies as in real life); the learner learns from the outcome stream and every worker
picks up what it learned. Worlds (`--world`): `default` (training/world_default.py) and `alt`
(training/world_alt.py: other offers, customers and response). Scenarios: `stationary`; `drift`
(at half time some offers' true response moves up or down by 1.5 in log-odds; the model stays
stale); `response-drift` (at half time how eight offers respond to one of two customer features
changes: slopes flip sign or double, see training/scenarios.py; the model stays stale);
`new-offer` (at a fifth of the run a new, good offer the model has never seen is published in
the catalog). `--arm-inputs` adds standardised customer features to the catalog's bandit
section as the arms' inputs.

Baselines are evaluated on the same decisions, from the decision log: each decision's candidate
set is what the server could have awarded (status "chosen" or "ranked below": after
eligibility, contact policy and thresholds), and every policy is scored by its *expected* reward
under the world's true response (P(accept) x value, at the decision's own timestamp), which
removes outcome noise from the comparison. Policies: the server as it ran; oracle (best true
expected value within the best tier present: the same business rule the server follows); random
(uniform within that tier); model-greedy (the server's own ranking, P x C x V x L from the logged
model propensity and the catalog: no exploration, no learning); rules-only (highest value within
the tier). With `--no-bandit` the server *is* model-greedy, decision for decision, which checks
the baseline. The scoring is in training/closed_loop_scoring.py, what a run writes in
training/closed_loop_report.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import redis
import yaml

from server.api.aio_client import AsyncNboClient
from server.catalog.compiler import parse_catalog
from server.config import Settings
from server.features.file import merged_schema
from server.models.registry import publish as model_publish
from server.reporting.build import build_report
from server.reporting.html import render_html
from server.reporting.model import Report
from server.state.catalog_store import current_schema, publish
from server.state.embedded_redis import EmbeddedRedis
from server.state.feature_store import FeatureStore, read_feature_file
from server.state.keys import Keys
from server.state.log_reader import LogReader
from server.state.records import DecisionRecord
from server.supervisor import ServerGroup
from training.closed_loop_catalog import arm_input_stats, catalog_text
from training.closed_loop_lift import (
    Conversion,
    convert,
    first_seen,
    organic_conversions,
    organic_propensity,
    reported_lift,
    retried,
    send_organic,
    true_lift,
)
from training.closed_loop_report import SimulationResult, plot, summarise, summary_markdown, write_decisions
from training.closed_loop_scoring import (
    Request,
    Scores,
    Sent,
    Skipped,
    catalog_terms,
    new_offer_progress,
    score_decisions,
)
from training.dataset import write_dataset
from training.export import ExportOptions, export_log
from training.population import CATEGORICAL, CHANNEL_LEVELS
from training.scenarios import changed_offers, drifted, response_drifted, with_new_offer
from training.train import train
from training.world import CC, WEB, WEB_SHARE, WORLDS, World

log = logging.getLogger(__name__)
SCENARIOS = ("stationary", "drift", "response-drift", "new-offer")
NEW_OFFER_TEMPLATE = {"default": ("spring_sale", "loyalty"), "alt": ("device_refresh", "streaming")}


@dataclass(frozen=True)
class SimulationConfig:
    scenario: str = "stationary"
    decisions: int = 50_000
    seed: int = 1
    workers: int = 2
    concurrency: int = 16
    customers: int = 20_000
    log_decisions: int = 60_000  # the simulated history the model is trained on
    bandit: bool = True  # the catalog's bandit section and the learner; off = the model alone
    out: Path = Path("simulation")
    world: str = "default"  # a training.world.WORLDS name
    arm_inputs: tuple[str, ...] = ()  # customer features the catalog declares as the arms' inputs
    bandit_yaml: str | None = None  # a `bandit:` section in place of BANDIT_YAML


@dataclass(frozen=True)
class Scenario:
    """Which truth answers when, and what the catalog becomes at the change."""

    world: World  # the world the model is trained on and the run starts with
    truths: tuple[World, World]  # the true response before and after `change_at`
    change_at: int | None
    new_catalog: World | None  # published at `change_at` (new-offer)


def build_scenario(cfg: SimulationConfig) -> Scenario:
    if cfg.world not in WORLDS:
        raise ValueError(f"unknown world {cfg.world!r} (worlds: {', '.join(WORLDS)})")
    world = World.create(n_customers=cfg.customers, spec=WORLDS[cfg.world])
    if cfg.scenario == "drift":
        return Scenario(world, (world, drifted(world, cfg.seed)), cfg.decisions // 2, None)
    if cfg.scenario == "response-drift":
        return Scenario(world, (world, response_drifted(world, cfg.seed)), cfg.decisions // 2, None)
    if cfg.scenario == "new-offer":
        campaign, kind = NEW_OFFER_TEMPLATE[cfg.world]
        extended = with_new_offer(world, campaign=campaign, kind=kind)
        # the other offers' truth is the same in both worlds, so the extended one answers
        # throughout: a decision in flight when the catalog switches is scored without a gap
        return Scenario(world, (extended, extended), cfg.decisions // 5, extended)
    if cfg.scenario == "stationary":
        return Scenario(world, (world, world), None, None)
    raise ValueError(f"unknown scenario {cfg.scenario!r} (scenarios: {', '.join(SCENARIOS)})")


def _draw_requests(world: World, n: int, seed: int) -> list[Request]:
    rng = np.random.default_rng([world.seed, seed, 101])
    channel = np.where(rng.random(n) < WEB_SHARE, WEB, CC)
    customer = np.zeros(n, dtype=np.int64)
    for ch in (CC, WEB):
        rows = np.flatnonzero(channel == ch)
        pool = np.flatnonzero(world.consent[:, ch] == 1)
        customer[rows] = pool[rng.integers(0, pool.size, rows.size)]
    context = world._draw_context(rng, channel)
    out = []
    for i in range(n):
        ctx = {k: float(v[i]) for k, v in context.items() if not math.isnan(v[i])}
        out.append(Request(i, int(customer[i]), CHANNEL_LEVELS[channel[i]], ctx))
    return out


def _setup(cfg: SimulationConfig, url: str, keys: Keys, world: World) -> None:
    """Features, catalog, and a model trained on a simulated history, all published."""
    client = redis.Redis.from_url(url)
    cfg.out.mkdir(parents=True, exist_ok=True)
    features = cfg.out / "customers.csv"
    world.write_features(features)
    store = FeatureStore(client, keys)
    table = read_feature_file(features, CATEGORICAL, base=store.current_schema())
    store.load(table, replace_schema=True)
    catalog = cfg.out / "catalog.yaml"
    catalog.write_text(_catalog_text(world, cfg))
    publish(client, keys, catalog.read_text(), source=str(catalog))
    history = cfg.out / "history.parquet"
    write_dataset(history, world.simulate_log(n_decisions=cfg.log_decisions, seed=11))
    model_dir = cfg.out / "model"
    train(
        history,
        model_dir,
        catalog=catalog,
        progress=False,
        oracle=world.oracle_for_log,
        live_schema=merged_schema(table, None),
    )
    model_publish(client, keys, model_dir, current_schema(client, keys))
    client.close()


def _catalog_text(world: World, cfg: SimulationConfig) -> str:
    return catalog_text(world, cfg.seed, bandit=cfg.bandit, arm_inputs=cfg.arm_inputs, bandit_yaml=cfg.bandit_yaml)


async def _drive(
    cfg: SimulationConfig, target: str, url: str, keys: Keys, scenario: Scenario, requests: list[Request]
) -> list[Sent]:
    queue: asyncio.Queue[Request] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    sent: list[Sent] = []
    rng = np.random.default_rng([scenario.world.seed, cfg.seed, 202])
    draws = rng.random(len(requests))  # the customers' answers, fixed in advance per request
    changed = asyncio.Event()
    ids = scenario.world.population.customer_ids
    events = {  # every trigger event of the channel: the world counts decisions as carrying them
        ch: [e for c in scenario.world.spec.campaigns if ch in c.channels for e in c.events]
        for ch in ("web", "call_centre")
    }
    change_at = scenario.change_at

    async def publish_change(new: World) -> None:
        client = redis.Redis.from_url(url)
        publish(client, keys, _catalog_text(new, cfg), source=f"simulate:{cfg.scenario}")
        client.close()
        await asyncio.sleep(1.5)  # workers poll the catalog every second
        changed.set()

    async def client_task(client: AsyncNboClient) -> None:
        while not queue.empty():
            r = queue.get_nowait()
            after = change_at is not None and r.index >= change_at
            if scenario.new_catalog is not None and after:
                # every later decision waits until the workers serve the new catalog
                if r.index == change_at:
                    await publish_change(scenario.new_catalog)
                await changed.wait()
            world = scenario.truths[int(after)]
            resp = await client.decide(ids[r.customer], r.channel, context=r.context, events=events[r.channel])
            # the response carries no timestamp; this is within milliseconds of the decision's
            s = Sent(r, resp.decision_id, resp.offers[0].offer_id if resp.offers else "", int(after), time.time())
            sent.append(s)
            if not s.offer:
                continue
            j = world.offer_ids.index(s.offer)
            ctx = {k: np.array([v]) for k, v in r.context.items()}
            p = float(world.oracle(np.array([r.customer]), np.array([j]), r.channel, ctx, np.array([s.ts]))[0])
            accepted = bool(draws[r.index] < p)
            value = float(world.offer_value[j]) if accepted else 0.0
            outcome = "accepted" if accepted else "declined"
            s.report_retries = await retried(partial(client.report, s.decision_id, s.offer, outcome, value))
            if accepted:  # the customer buys what they accepted: the shop's order feed says so
                bought = Conversion(ids[r.customer], value, f"offer-{s.decision_id}", s.ts)
                s.report_retries += await retried(partial(convert, client, bought))

    # one connection per client, so SO_REUSEPORT spreads the load over the workers
    clients = [AsyncNboClient(target, own_connection=True) for _ in range(cfg.concurrency)]
    try:
        await asyncio.gather(*(client_task(c) for c in clients))
    finally:
        for c in clients:
            await c.close()
    return sent


def _read_log(url: str, keys: Keys) -> dict[str, DecisionRecord]:
    """Every logged decision by id (each once: the log is at least once)."""
    with redis.Redis.from_url(url) as client:
        return {rec.decision_id: rec for rec in LogReader(client, keys).decisions()}


def run(cfg: SimulationConfig) -> SimulationResult:
    started = time.perf_counter()
    scenario = build_scenario(cfg)
    requests = _draw_requests(scenario.world, cfg.decisions, cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    # a fresh Redis each run, kept (saved on shutdown): `nbo report --data-dir OUT` reads the
    # run's logs afterwards
    (cfg.out / "redis" / "dump.rdb").unlink(missing_ok=True)
    with EmbeddedRedis(cfg.out / "redis") as redis_server:
        settings = Settings(
            redis_url=redis_server.url,
            port=0,
            workers=cfg.workers,
            learner=cfg.bandit,
            log_level="WARNING",
            model_cache_dir=cfg.out / "models",
            # a private server on loopback: no callers but ours, whatever NBO_* says
            auth_tokens_file=None,
            rate_limit_per_second=None,
        )
        keys = Keys(settings.key_prefix)
        _setup(cfg, redis_server.url, keys, scenario.world)
        group = ServerGroup(settings, redis_server.url)
        group.start()
        try:
            group.wait_ready(timeout=60)
            loop_started = time.perf_counter()
            sent = asyncio.run(_drive(cfg, group.target, redis_server.url, keys, scenario, requests))
            loop_seconds = time.perf_counter() - loop_started
            p0 = organic_propensity(scenario.world, cfg.seed)
            organic = organic_conversions(scenario.world, first_seen(sent), p0, cfg.seed)
            conversion_retries = asyncio.run(send_organic(group.target, organic, cfg.concurrency))
            time.sleep(1.0)  # the last log batches (written at most log_flush_seconds late)
        finally:
            group.stop()
        records = _read_log(redis_server.url, keys)
        report = _campaign_report(cfg, redis_server.url, keys)
        # the run's log in the dataset schema, for `nbo train` / `nbo ope` on what the server did;
        # every outcome is reported at once, so no decision is waiting for its reward
        with redis.Redis.from_url(redis_server.url) as client:
            exported = export_log(client, keys, cfg.out / "log.parquet", ExportOptions(include_open=True))
            schema = current_schema(client, keys)
    final_catalog = scenario.new_catalog or scenario.world
    if schema is None:
        raise RuntimeError("no feature schema in Redis after set-up")  # _setup loads it: a bug
    terms = catalog_terms(parse_catalog(final_catalog.catalog_yaml(), schema))
    scores, skipped = score_decisions(sent, records, scenario.truths, terms)
    result = _summarise(cfg, scores, skipped, scenario, time.perf_counter() - started)
    result.outcome_retries = sum(x.report_retries for x in sent) + conversion_retries
    truths = {x.decision_id: scenario.truths[x.world_index] for x in sent}
    index = {cid: i for i, cid in enumerate(scenario.world.population.customer_ids)}
    result.true_lift = asdict(true_lift(records.values(), truths, p0, index))
    result.reported_lift = reported_lift(report, result.true_lift)
    result.decisions_per_second = round(cfg.decisions / loop_seconds, 1)
    result.exported_rows = exported.rows
    (cfg.out / "summary.json").write_text(json.dumps(asdict(result), indent=2, default=str))
    (cfg.out / "summary.md").write_text(summary_markdown(result))
    write_decisions(cfg.out / "decisions.csv", scores)
    plot(cfg.out / "reward.png", scores, result, scenario.change_at)
    return result


def _campaign_report(cfg: SimulationConfig, url: str, keys: Keys) -> Report:
    """`nbo report` on the run's log, written as report.html."""
    with redis.Redis.from_url(url) as client:
        report = build_report(client, keys, title=f"nbo simulate: {cfg.world} world, {cfg.scenario}")
    (cfg.out / "report.html").write_text(render_html(report))
    return report


def _summarise(
    cfg: SimulationConfig, scores: Scores, skipped: Skipped, scenario: Scenario, seconds: float
) -> SimulationResult:
    result = summarise(cfg.scenario, cfg.bandit, cfg.decisions, scores, skipped, scenario.change_at, seconds)
    result.world = cfg.world
    if cfg.bandit:  # the settings the run had, for the record
        result.bandit_settings = yaml.safe_load(_catalog_text(scenario.world, cfg))["bandit"]
    if cfg.arm_inputs:
        result.arm_inputs = arm_input_stats(scenario.world, cfg.arm_inputs)
    if cfg.scenario in ("drift", "response-drift"):
        result.changed_offers = changed_offers(*scenario.truths)
    if cfg.scenario == "new-offer" and scenario.change_at is not None:
        result.new_offer = new_offer_progress(scores, scenario.change_at)
    return result


# -- command line (`nbo simulate`, registered in server/cli/simulate.py) -----------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", choices=SCENARIOS, default="stationary")
    p.add_argument("--world", choices=sorted(WORLDS), default="default", help="synthetic world (default: default)")
    p.add_argument("--decisions", type=int, default=50_000, help="decisions to simulate (default 50,000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=2, help="server worker processes")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent simulated callers")
    p.add_argument("--customers", type=int, default=20_000, help="customers in the synthetic world")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("simulation"),
        help="results go to OUT/<scenario>/ (another world than default: OUT/<world>-<scenario>/)",
    )
    p.add_argument("--no-bandit", dest="bandit", action="store_false", help="the model alone: no bandit, no learner")
    p.add_argument(
        "--arm-inputs",
        type=lambda s: tuple(x.strip() for x in s.split(",") if x.strip()),
        default=(),
        metavar="NAME[,NAME]",
        help="customer features the catalog's bandit section declares as the arms' standardised inputs",
    )
    p.add_argument(
        "--bandit-file",
        type=Path,
        metavar="FILE",
        help="YAML with a `bandit:` section to run instead of the simulation's (e.g. docs/learning.md's example)",
    )


def run_command(opts: argparse.Namespace) -> int:
    """`nbo simulate` (`run` is the simulation itself, from a SimulationConfig)."""
    logging.basicConfig(level=logging.WARNING)
    cfg = SimulationConfig(
        scenario=opts.scenario,
        decisions=opts.decisions,
        seed=opts.seed,
        workers=opts.workers,
        concurrency=opts.concurrency,
        customers=opts.customers,
        bandit=opts.bandit,
        # the default world's runs keep their directories; another world's go beside them
        out=opts.out / (opts.scenario if opts.world == "default" else f"{opts.world}-{opts.scenario}"),
        world=opts.world,
        arm_inputs=opts.arm_inputs,
        bandit_yaml=opts.bandit_file.read_text() if opts.bandit_file else None,
    )
    result = run(cfg)
    print(summary_markdown(result), end="")
    print(
        f"wrote {cfg.out / 'summary.md'}, {cfg.out / 'summary.json'}, {cfg.out / 'reward.png'}, "
        f"{cfg.out / 'decisions.csv'}, the campaign report {cfg.out / 'report.html'} and the decision log "
        f"as a dataset, {cfg.out / 'log.parquet'} ({result.exported_rows:,} rows); the run's Redis is kept: "
        f"nbo report --data-dir {cfg.out}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nbo simulate", description="closed loop: the real server and learner against the synthetic world"
    )
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
