"""`nbo simulate`: the real server (gRPC, Redis, learner) against the synthetic world, closed loop.

The world draws a channel, a consenting customer and a context (as `World.simulate_log` does);
the server decides over gRPC; the world draws the customer's answer from its true response and
reports it through ReportOutcome (ACCEPTED, else DECLINED, so the contact policy's decline
cooldown applies as in real life); the learner learns from the outcome stream and every worker
picks up what it learned. Scenarios: `stationary`; `drift` (at half time some offers' true
response moves up or down by 1.5 in log-odds; the model stays stale); `new-offer` (at a fifth
of the run a new, good offer the model has never seen is published in the catalog).

Baselines are evaluated on the same decisions, from the decision log: each decision's candidate
set is what the server could have awarded (status "chosen" or "ranked below": after
eligibility, contact policy and thresholds), and every policy is scored by its *expected* reward
under the world's true response (P(accept) x value, at the decision's own timestamp), which
removes outcome noise from the comparison. Policies: the server as it ran; oracle (best true
expected value within the best tier present: the same business rule the server follows); random
(uniform within that tier); model-greedy (the server's own ranking, P x C x V x L from the logged
model propensity and the catalog: no exploration, no learning); rules-only (highest value within
the tier). With `--no-bandit` the server *is* model-greedy, decision for decision, which checks
the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from server.api.aio_client import AsyncNboClient
from server.app import ServerGroup
from server.catalog.spec import Catalog, parse_catalog
from server.config import Settings
from server.features.file import merged_schema
from server.models.registry import publish as model_publish
from server.state.catalog_store import current_schema, publish
from server.state.embedded_redis import EmbeddedRedis
from server.state.feature_store import FeatureStore, read_feature_file
from server.state.keys import Keys
from server.state.log_reader import LogReader
from server.state.records import DecisionRecord
from training.dataset import write_dataset
from training.export import ExportOptions, export_log
from training.population import CATEGORICAL, CHANNEL_LEVELS
from training.scenarios import NEW_OFFER_ID, changed_offers, drifted, with_new_offer
from training.train import train
from training.world import CAMPAIGNS, CC, WEB, WEB_SHARE, World

log = logging.getLogger(__name__)
SCENARIOS = ("stationary", "drift", "new-offer")
EVENTS = {  # every trigger event of the channel: the world counts decisions as carrying them
    "web": [e for c in CAMPAIGNS if "web" in c.channels for e in c.events],
    "call_centre": [e for c in CAMPAIGNS if "call_centre" in c.channels for e in c.events],
}
BANDIT_YAML = """
bandit:
  seed: {seed}
  samples: 256
  prior_sd: 0.4
  new_offer_sd: 1.5
  decay: 0.998
  channels:
    web: {{exploration: 1.0, epsilon: 0.02}}
    call_centre: {{exploration: 0.6, epsilon: 0.0}}
"""
POLICIES = ("server", "oracle", "random", "model_greedy", "rules_only")
PICKING = ("server", "oracle", "model_greedy", "rules_only")  # random is a mean, it picks nothing
COLOURS = dict(zip(POLICIES, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"), strict=True))
NEW_OFFER_WINDOW = 2_000
NEW_OFFER_HORIZON = 10_000  # the new offer should reach half its oracle share within this


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


@dataclass(frozen=True)
class Request:
    index: int
    customer: int
    channel: str
    context: dict[str, float]


@dataclass
class Sent:
    request: Request
    decision_id: str = ""
    offer: str = ""
    world_index: int = 0  # which truth answered: 0 before the change, 1 after (drift / new offer)
    ts: float = 0.0


@dataclass
class SimulationResult:
    scenario: str
    decisions: int
    evaluated: int
    control_or_degraded: int
    seconds: float
    reward: dict[str, float]  # expected reward (value) per evaluated decision, per policy
    acceptance: dict[str, float]  # expected acceptance rate per evaluated decision
    share_of_oracle: dict[str, float]
    regret: dict[str, float]  # total, vs the oracle
    vs_model_greedy: dict[str, float]  # mean per-decision difference and its 95% CI
    vs_model_greedy_after_change: dict[str, float] = field(default_factory=dict)
    reward_after_change: dict[str, float] = field(default_factory=dict)  # per decision, from the change on
    share_of_oracle_after_change: dict[str, float] = field(default_factory=dict)
    new_offer: dict[str, Any] = field(default_factory=dict)
    changed_offers: list[str] = field(default_factory=list)
    degraded: int = 0  # of control_or_degraded; more than a handful means the loop overloads Redis
    missing_records: int = 0  # decisions answered but absent from the log: lost log batches
    outside_top_tier: int = 0  # server awards below the best tier present (the epsilon floor)
    bandit: bool = True
    decisions_per_second: float = 0.0
    exported_rows: int = 0  # rows of log.parquet: the awards, in the dataset schema


@dataclass(frozen=True)
class Terms:
    """What the server ranks with, per offer, as the published catalog says."""

    tier: dict[str, int]  # arbitration tier: ad hoc 0 > high-priority trigger 1 > lifecycle 2 > trigger 3
    weight: dict[tuple[str, str], float]  # (offer, channel) -> C
    lever: dict[str, float]  # L
    priority: dict[str, int]  # the campaign's: breaks ties inside a tier


def catalog_terms(catalog: Catalog) -> Terms:
    """Tiers, channel weights, levers and priorities as the server compiled them (server/catalog.py)."""
    tier: dict[str, int] = {}
    weight: dict[tuple[str, str], float] = {}
    lever: dict[str, float] = {}
    priority: dict[str, int] = {}
    for channel, view in catalog.views.items():
        for pos, offer in enumerate(view.offer_ids):
            tier[offer] = int(view.tier[pos])
            weight[(offer, channel.value)] = float(view.weight[pos])
            lever[offer] = float(view.lever[pos])
            priority[offer] = int(view.priority[pos])
    return Terms(tier, weight, lever, priority)


def _best(top: npt.NDArray[np.intp], key: npt.NDArray[np.float64], priority: npt.NDArray[np.int64]) -> int:
    """The top-tier candidate with the highest key; ties go to campaign priority, then catalog
    order (the log lists candidates in catalog order), as server/arbitration.py breaks them."""
    return int(top[np.lexsort((top, -priority[top], -key[top]))[0]])


@dataclass(frozen=True)
class Scenario:
    """Which truth answers when, and what the catalog becomes at the change."""

    world: World  # the world the model is trained on and the run starts with
    truths: tuple[World, World]  # the true response before and after `change_at`
    change_at: int | None
    new_catalog: World | None  # published at `change_at` (new-offer)


def build_scenario(cfg: SimulationConfig) -> Scenario:
    world = World.create(n_customers=cfg.customers)
    if cfg.scenario == "drift":
        return Scenario(world, (world, drifted(world, cfg.seed)), cfg.decisions // 2, None)
    if cfg.scenario == "new-offer":
        extended = with_new_offer(world)
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
    text = world.catalog_yaml()
    return text + BANDIT_YAML.format(seed=cfg.seed) if cfg.bandit else text


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
            resp = await client.decide(ids[r.customer], r.channel, context=r.context, events=EVENTS[r.channel])
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
            await client.report(s.decision_id, s.offer, "accepted" if accepted else "declined", value)

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


@dataclass
class Scores:
    """Per evaluated decision (in request order), what each policy would have earned."""

    ev: dict[str, list[float]]  # per policy, expected value
    p: dict[str, list[float]]  # per policy, expected acceptance
    pick: dict[str, list[str]]  # per picking policy, the offer ("" = nothing)
    index: list[int] = field(default_factory=list)  # request index
    decision_id: list[str] = field(default_factory=list)
    world_index: list[int] = field(default_factory=list)
    candidates: list[int] = field(default_factory=list)  # size of the candidate set
    top_tier: list[int] = field(default_factory=list)  # candidates in the best tier present
    server_in_top_tier: list[bool] = field(default_factory=list)
    new_in_set: list[bool] = field(default_factory=list)  # the new offer is a candidate
    new_contested: list[bool] = field(default_factory=list)  # ... with another top-tier candidate

    @classmethod
    def empty(cls) -> Scores:
        return cls({k: [] for k in POLICIES}, {k: [] for k in POLICIES}, {k: [] for k in PICKING})


@dataclass(frozen=True)
class Skipped:
    control_group: int
    degraded: int
    missing: int


def _score(
    sent: list[Sent], records: dict[str, DecisionRecord], scenario: Scenario, terms: Terms
) -> tuple[Scores, Skipped]:
    scores = Scores.empty()
    control = degraded = missing = 0
    for s in sorted(sent, key=lambda x: x.request.index):
        rec = records.get(s.decision_id)
        if rec is None:
            missing += 1
            continue
        if rec.control_group:
            control += 1
            continue
        if rec.degraded:
            degraded += 1
            continue
        world = scenario.truths[s.world_index]
        cand = rec.candidates
        rows = [
            (o, float(p))
            for o, p, st in zip(cand.offer_id, cand.propensity, cand.status, strict=True)
            if st == "chosen" or st.startswith("ranked below")
        ]
        scores.index.append(s.request.index)
        scores.decision_id.append(s.decision_id)
        scores.world_index.append(s.world_index)
        scores.candidates.append(len(rows))
        if not rows:
            for k in POLICIES:
                scores.ev[k].append(0.0)
                scores.p[k].append(0.0)
            for k in PICKING:
                scores.pick[k].append("")
            scores.top_tier.append(0)
            scores.server_in_top_tier.append(True)
            scores.new_in_set.append(False)
            scores.new_contested.append(False)
            continue
        offers = [o for o, _ in rows]
        j = np.array([world.offer_ids.index(o) for o in offers])
        r = s.request
        ctx = {k: np.full(len(j), v) for k, v in r.context.items()}
        true_p = world.oracle(np.full(len(j), r.customer), j, r.channel, ctx, np.full(len(j), rec.ts))
        value = world.offer_value[j]
        ev = true_p * value
        tier = np.array([terms.tier[o] for o in offers])
        top = np.flatnonzero(tier == tier.min())
        model_p = np.array([p for _, p in rows])
        cvl = np.array([terms.weight.get((o, r.channel), 1.0) * terms.lever[o] for o in offers]) * value
        priority = np.array([terms.priority[o] for o in offers])
        pick = {
            "server": offers.index(s.offer) if s.offer in offers else -1,
            "oracle": _best(top, ev, priority),
            "model_greedy": _best(top, model_p * cvl, priority),
            "rules_only": _best(top, value, priority),
        }
        for k, i in pick.items():
            scores.ev[k].append(float(ev[i]) if i >= 0 else 0.0)
            scores.p[k].append(float(true_p[i]) if i >= 0 else 0.0)
            scores.pick[k].append(offers[i] if i >= 0 else "")
        scores.ev["random"].append(float(ev[top].mean()))
        scores.p["random"].append(float(true_p[top].mean()))
        scores.top_tier.append(int(top.size))
        scores.server_in_top_tier.append(pick["server"] < 0 or pick["server"] in top)
        scores.new_in_set.append(NEW_OFFER_ID in offers)
        scores.new_contested.append(NEW_OFFER_ID in [offers[i] for i in top] and top.size > 1)
    return scores, Skipped(control, degraded, missing)


def _diff_ci(a: npt.ArrayLike, b: npt.ArrayLike) -> dict[str, float]:
    """Mean paired difference with its 95% interval (normal approximation)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size < 2:
        return {"mean": float(d.mean()) if d.size else 0.0, "low": math.nan, "high": math.nan, "n": float(d.size)}
    half = 1.96 * float(d.std(ddof=1)) / math.sqrt(d.size)
    return {"mean": float(d.mean()), "low": float(d.mean()) - half, "high": float(d.mean()) + half, "n": float(d.size)}


def _new_offer_progress(scores: Scores, change_at: int) -> dict[str, Any]:
    """Share of decisions awarding the new offer, among those whose candidate set held it.
    "contested": it shared the best tier present with another candidate, so awarding it took a
    judgement of its worth (alone in the best tier, every policy that keeps the tiers awards it)."""
    idx = np.asarray(scores.index)
    after = idx >= change_at
    in_set = np.asarray(scores.new_in_set, dtype=bool) & after
    contested = np.asarray(scores.new_contested, dtype=bool) & after
    chose = {k: np.asarray(scores.pick[k]) == NEW_OFFER_ID for k in ("server", "oracle", "model_greedy")}

    def shares(sel: npt.NDArray[np.bool_]) -> dict[str, float]:
        out: dict[str, float] = {"n": float(sel.sum())}
        for k, c in chose.items():
            out[f"{k}_share"] = float(c[sel].mean()) if sel.any() else math.nan
        return out

    windows: list[dict[str, Any]] = []
    for start in range(change_at, int(idx.max()) + 1 if idx.size else change_at, NEW_OFFER_WINDOW):
        in_window = (idx >= start) & (idx < start + NEW_OFFER_WINDOW)
        if (in_set & in_window).any():
            windows.append(
                {
                    "from": start - change_at,
                    **shares(in_set & in_window),
                    "contested": shares(contested & in_window),
                }
            )
    half_at = next(
        (w["from"] for w in windows if w["server_share"] >= 0.5 * w["oracle_share"] and w["oracle_share"] > 0), None
    )
    horizon = idx < change_at + NEW_OFFER_HORIZON
    late = idx >= change_at + NEW_OFFER_HORIZON - NEW_OFFER_WINDOW
    return {
        "introduced_at": change_at,
        "first_10000": shares(in_set & horizon),
        "first_10000_contested": shares(contested & horizon),
        "decisions_8000_to_10000": shares(in_set & horizon & late),
        "decisions_8000_to_10000_contested": shares(contested & horizon & late),
        "half_of_oracle_share_from": half_at,  # first window (decisions since) at >= half the oracle's share
        "windows": windows,
    }


def _plot(path: Path, scores: Scores, result: SimulationResult, change_at: int | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if result.new_offer else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    x = np.asarray(scores.index)
    for k in POLICIES:
        ax.plot(x, np.cumsum(scores.ev[k]), color=COLOURS[k], label=f"{k} ({result.share_of_oracle[k]:.1%} of oracle)")
    if change_at is not None:
        ax.axvline(change_at, color="grey", linestyle=":")
    ax.set_xlabel("decision")
    ax.set_ylabel("cumulative expected reward (value)")
    ax.set_title(f"{result.scenario}: {result.decisions:,} decisions")
    ax.legend(fontsize=8)
    if result.new_offer:
        ax2 = axes[0][1]
        w = result.new_offer["windows"]
        xs = [v["from"] for v in w]
        for k in ("server", "oracle", "model_greedy"):
            ax2.plot(xs, [v[f"{k}_share"] for v in w], "-", marker="o", color=COLOURS[k], label=k)
            ax2.plot(xs, [v["contested"][f"{k}_share"] for v in w], ":", marker=".", color=COLOURS[k])
        ax2.set_xlabel(f"decisions since {NEW_OFFER_ID} was published (windows of {NEW_OFFER_WINDOW:,})")
        ax2.set_ylabel("share awarding it where it was a candidate")
        ax2.set_ylim(0, 1)
        ax2.set_title("new offer (dotted: contested decisions only)")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_decisions(path: Path, scores: Scores) -> None:
    """Every evaluated decision and what each policy earned on it, for checks beyond the summary."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(
            [
                "index",
                "decision_id",
                "world",
                "candidates",
                "top_tier",
                "server_in_top_tier",
                "new_offer_candidate",
                "new_offer_contested",
                *(f"ev_{k}" for k in POLICIES),
                *(f"p_{k}" for k in POLICIES),
                *(f"pick_{k}" for k in PICKING),
            ]
        )
        for i in range(len(scores.index)):
            out.writerow(
                [
                    scores.index[i],
                    scores.decision_id[i],
                    scores.world_index[i],
                    scores.candidates[i],
                    scores.top_tier[i],
                    int(scores.server_in_top_tier[i]),
                    int(scores.new_in_set[i]),
                    int(scores.new_contested[i]),
                    *(repr(scores.ev[k][i]) for k in POLICIES),
                    *(repr(scores.p[k][i]) for k in POLICIES),
                    *(scores.pick[k][i] for k in PICKING),
                ]
            )


def run(cfg: SimulationConfig) -> SimulationResult:
    started = time.perf_counter()
    scenario = build_scenario(cfg)
    requests = _draw_requests(scenario.world, cfg.decisions, cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    with EmbeddedRedis(cfg.out / "redis", persist=False) as redis_server:
        settings = Settings(
            redis_url=redis_server.url,
            port=0,
            workers=cfg.workers,
            learner=cfg.bandit,
            log_level="WARNING",
            model_cache_dir=cfg.out / "models",
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
            time.sleep(1.0)  # the last log batches (written at most log_flush_seconds late)
        finally:
            group.stop()
        records = _read_log(redis_server.url, keys)
        # the run's log in the dataset schema, for `nbo train` / `nbo ope` on what the server did;
        # every outcome is reported at once, so no decision is waiting for its reward
        with redis.Redis.from_url(redis_server.url) as client:
            exported = export_log(client, keys, cfg.out / "log.parquet", ExportOptions(include_open=True))
            schema = current_schema(client, keys)
    final_catalog = scenario.new_catalog or scenario.world
    if schema is None:
        raise RuntimeError("no feature schema in Redis after set-up")  # _setup loads it: a bug
    terms = catalog_terms(parse_catalog(final_catalog.catalog_yaml(), schema))
    scores, skipped = _score(sent, records, scenario, terms)
    result = _summarise(cfg, scores, skipped, scenario, time.perf_counter() - started)
    result.decisions_per_second = round(cfg.decisions / loop_seconds, 1)
    result.exported_rows = exported.rows
    (cfg.out / "summary.json").write_text(json.dumps(asdict(result), indent=2, default=str))
    (cfg.out / "summary.md").write_text(summary_markdown(result))
    _write_decisions(cfg.out / "decisions.csv", scores)
    _plot(cfg.out / "reward.png", scores, result, scenario.change_at)
    return result


def _summarise(
    cfg: SimulationConfig, scores: Scores, skipped: Skipped, scenario: Scenario, seconds: float
) -> SimulationResult:
    n = len(scores.index)
    total = {k: float(np.sum(scores.ev[k])) for k in POLICIES}
    oracle = total["oracle"] or 1.0
    result = SimulationResult(
        scenario=cfg.scenario,
        decisions=cfg.decisions,
        evaluated=n,
        control_or_degraded=skipped.control_group + skipped.degraded,
        seconds=round(seconds, 1),
        reward={k: total[k] / max(n, 1) for k in POLICIES},
        acceptance={k: float(np.mean(scores.p[k])) if n else 0.0 for k in POLICIES},
        share_of_oracle={k: total[k] / oracle for k in POLICIES},
        regret={k: total["oracle"] - total[k] for k in POLICIES},
        vs_model_greedy=_diff_ci(scores.ev["server"], scores.ev["model_greedy"]),
        degraded=skipped.degraded,
        missing_records=skipped.missing,
        outside_top_tier=int(n - np.sum(scores.server_in_top_tier)),
        bandit=cfg.bandit,
    )
    change_at = scenario.change_at
    if change_at is not None:
        after = np.asarray(scores.index) >= change_at
        ev = {k: np.asarray(scores.ev[k])[after] for k in POLICIES}
        result.vs_model_greedy_after_change = _diff_ci(ev["server"], ev["model_greedy"])
        result.reward_after_change = {k: float(v.mean()) if v.size else 0.0 for k, v in ev.items()}
        oracle_after = float(ev["oracle"].sum()) or 1.0
        result.share_of_oracle_after_change = {k: float(v.sum()) / oracle_after for k, v in ev.items()}
    if cfg.scenario == "drift":
        result.changed_offers = changed_offers(*scenario.truths)
    if cfg.scenario == "new-offer" and change_at is not None:
        result.new_offer = _new_offer_progress(scores, change_at)
    return result


def _ci(d: dict[str, float]) -> str:
    return f"{d['mean']:+.3f} (95% CI {d['low']:+.3f} to {d['high']:+.3f}, n={d['n']:,.0f})"


def _share_line(label: str, s: dict[str, float]) -> str:
    return (
        f"- {label}: server {s['server_share']:.1%}, oracle {s['oracle_share']:.1%}, "
        f"model-greedy {s['model_greedy_share']:.1%} (n={s['n']:,.0f})"
    )


def summary_markdown(r: SimulationResult) -> str:
    lines = [
        f"# Closed-loop simulation: {r.scenario}",
        "",
        f"{r.decisions:,} decisions ({r.evaluated:,} evaluated; {r.control_or_degraded:,} in the control group "
        f"or degraded, of which {r.degraded:,} degraded; {r.missing_records:,} missing from the log), "
        f"bandit and learner {'on' if r.bandit else 'off'}, {r.seconds:.0f} s "
        f"({r.decisions_per_second:,.0f} decisions/s in the loop).",
        "",
        "| policy | expected value / decision | acceptance | % of oracle | regret (total) |",
        "|---|---|---|---|---|",
    ]
    for k in POLICIES:
        lines.append(
            f"| {k} | {r.reward[k]:.3f} | {r.acceptance[k]:.2%} | {r.share_of_oracle[k]:.1%} | {r.regret[k]:,.0f} |"
        )
    if r.reward_after_change:
        lines += [
            "",
            "from the change on:",
            "",
            "| policy | expected value / decision | % of oracle |",
            "|---|---|---|",
            *(f"| {k} | {r.reward_after_change[k]:.3f} | {r.share_of_oracle_after_change[k]:.1%} |" for k in POLICIES),
        ]
    lines += ["", f"server - model_greedy per decision: {_ci(r.vs_model_greedy)}"]
    if r.vs_model_greedy_after_change:
        lines.append(f"after the change: {_ci(r.vs_model_greedy_after_change)}")
    lines.append(f"server awards below the best tier present (epsilon floor): {r.outside_top_tier:,}")
    if r.changed_offers:
        lines.append(f"offers whose response changed: {', '.join(r.changed_offers)}")
    if r.new_offer:
        no = r.new_offer
        half = no["half_of_oracle_share_from"]
        lines += [
            "",
            f"new offer {NEW_OFFER_ID} (published at decision {no['introduced_at']:,}): share of the decisions "
            "awarding it, among those whose candidate set held it (contested: it shared the best tier "
            "present with another candidate):",
            _share_line("first 10,000 decisions", no["first_10000"]),
            _share_line("first 10,000 decisions, contested", no["first_10000_contested"]),
            _share_line("decisions 8,000-10,000", no["decisions_8000_to_10000"]),
            _share_line("decisions 8,000-10,000, contested", no["decisions_8000_to_10000_contested"]),
            f"- the server first reached half the oracle's share in the window from {half:,} decisions"
            if half is not None
            else "- the server never reached half the oracle's share",
            "",
            "| decisions since | server | oracle | model-greedy | n | contested: server | oracle | model-greedy | n |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for w in no["windows"]:
            c = w["contested"]
            lines.append(
                f"| {w['from']:,} | {w['server_share']:.1%} | {w['oracle_share']:.1%} | "
                f"{w['model_greedy_share']:.1%} | {w['n']:,.0f} | {c['server_share']:.1%} | "
                f"{c['oracle_share']:.1%} | {c['model_greedy_share']:.1%} | {c['n']:,.0f} |"
            )
    return "\n".join(lines) + "\n"


# -- command line (`nbo simulate`, registered in server/cli/simulate.py) -----------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", choices=SCENARIOS, default="stationary")
    p.add_argument("--decisions", type=int, default=50_000, help="decisions to simulate (default 50,000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=2, help="server worker processes")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent simulated callers")
    p.add_argument("--customers", type=int, default=20_000, help="customers in the synthetic world")
    p.add_argument("--out", type=Path, default=Path("simulation"), help="results go to OUT/<scenario>/")
    p.add_argument("--no-bandit", dest="bandit", action="store_false", help="the model alone: no bandit, no learner")


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
        out=opts.out / opts.scenario,
    )
    result = run(cfg)
    print(summary_markdown(result), end="")
    print(
        f"wrote {cfg.out / 'summary.md'}, {cfg.out / 'summary.json'}, {cfg.out / 'reward.png'}, "
        f"{cfg.out / 'decisions.csv'} and the decision log as a dataset, {cfg.out / 'log.parquet'} "
        f"({result.exported_rows:,} rows)"
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
