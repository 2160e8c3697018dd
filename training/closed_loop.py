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
under the world's true response (P(accept) x value), which removes outcome noise from the
comparison. Policies: the server as it ran; oracle (best true expected value within the best
tier present: the same business rule the server follows); random (uniform within that tier);
model-greedy (the server's own ranking from the logged model propensity: no exploration, no
learning); rules-only (highest value within the tier).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import redis

from server.app import ServerGroup
from server.catalog_store import current_schema, publish
from server.config import Settings
from server.embedded_redis import EmbeddedRedis
from server.feature_file import merged_schema
from server.features import FeatureStore, read_feature_file
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.gen.nbo.v1 import decisioning_pb2_grpc as pb_grpc
from server.keys import Keys
from server.model_registry import publish as model_publish
from training.dataset import write_dataset
from training.population import CATEGORICAL, CHANNEL_LEVELS
from training.scenarios import NEW_OFFER_ID, changed_offers, drifted, with_new_offer
from training.train import train
from training.world import CAMPAIGNS, CC, WEB, WEB_SHARE, World

log = logging.getLogger(__name__)
SCENARIOS = ("stationary", "drift", "new-offer")
CHANNEL_PB = {"web": pb.WEB, "call_centre": pb.CALL_CENTRE}
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
HIGH_PRIORITY_TRIGGER = 50  # the world catalog's arbitration.high_priority_trigger (the default)


@dataclass(frozen=True)
class SimulationConfig:
    scenario: str = "stationary"
    decisions: int = 50_000
    seed: int = 1
    workers: int = 2
    concurrency: int = 16
    customers: int = 20_000
    log_decisions: int = 60_000  # the simulated history the model is trained on
    bandit: bool = True
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
    world_index: int = 0  # 0 before the change, 1 after (drift / new offer)
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
    new_offer: dict[str, Any] = field(default_factory=dict)
    changed_offers: list[str] = field(default_factory=list)


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


def _setup(cfg: SimulationConfig, url: str, world: World) -> None:
    """Features, catalog, and a model trained on a simulated history, all published."""
    keys = Keys()
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
    cfg: SimulationConfig, target: str, url: str, worlds: list[World], requests: list[Request], change_at: int | None
) -> list[Sent]:
    queue: asyncio.Queue[Request] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    sent: list[Sent] = []
    rng = np.random.default_rng([worlds[0].seed, cfg.seed, 202])
    draws = rng.random(len(requests))  # the customers' answers, fixed in advance per request
    changed = asyncio.Event()
    ids = worlds[-1].population.customer_ids

    async def publish_change() -> None:
        client = redis.Redis.from_url(url)
        publish(client, Keys(), _catalog_text(worlds[1], cfg), source="simulate:new-offer")
        client.close()
        await asyncio.sleep(1.5)  # workers poll the catalog every second
        changed.set()

    async def client_task(channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.DecisioningStub(channel)  # type: ignore[no-untyped-call]
        while not queue.empty():
            r = queue.get_nowait()
            if change_at is not None and r.index == change_at and cfg.scenario == "new-offer":
                await publish_change()
            world_index = 1 if change_at is not None and r.index >= change_at else 0
            if cfg.scenario == "new-offer" and world_index == 1 and not changed.is_set():
                await changed.wait()
            world = worlds[world_index]
            resp = await stub.Decide(
                pb.DecideRequest(
                    customer_id=ids[r.customer],
                    channel=CHANNEL_PB[r.channel],
                    context=r.context,
                    events=EVENTS[r.channel],
                ),
                timeout=10,
            )
            s = Sent(r, resp.decision_id, resp.offers[0].offer_id if resp.offers else "", world_index, time.time())
            sent.append(s)
            if not s.offer:
                continue
            j = world.offer_ids.index(s.offer)
            ctx = {k: np.array([v]) for k, v in r.context.items()}
            p = float(world.oracle(np.array([r.customer]), np.array([j]), r.channel, ctx, np.array([s.ts]))[0])
            outcome = pb.ACCEPTED if draws[r.index] < p else pb.DECLINED
            value = float(world.offer_value[j]) if outcome == pb.ACCEPTED else 0.0
            await stub.ReportOutcome(
                pb.ReportOutcomeRequest(decision_id=s.decision_id, offer_id=s.offer, outcome=outcome, value=value),
                timeout=10,
            )

    # one connection per client, so SO_REUSEPORT spreads the load over the workers
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(cfg.concurrency)
    ]
    try:
        await asyncio.gather(*(client_task(c) for c in channels))
    finally:
        for c in channels:
            await c.close()
    return sent


def _tiers(world: World) -> dict[str, int]:
    by_campaign = {c.id: c for c in CAMPAIGNS}
    out = {}
    for offer, camp_id in zip(world.offer_ids, world.offer_campaign, strict=True):
        c = by_campaign[camp_id]
        if c.type == "ad_hoc":
            out[offer] = 0
        elif c.type == "trigger":
            out[offer] = 1 if c.priority >= HIGH_PRIORITY_TRIGGER else 3
        else:
            out[offer] = 2
    return out


def _read_log(url: str) -> dict[str, dict[str, Any]]:
    client = redis.Redis.from_url(url)
    out: dict[str, dict[str, Any]] = {}
    last = "-"
    while True:
        entries: Any = client.xrange(Keys().decision_stream, min=last, count=10_000)
        if last != "-":
            entries = entries[1:]
        if not entries:
            break
        for _, fields in entries:
            rec = json.loads(fields[b"r"])
            out[rec["decision_id"]] = rec
        last = entries[-1][0].decode()
    client.close()
    return out


@dataclass
class _Scores:
    ev: dict[str, list[float]]  # per policy, expected value per evaluated decision
    p: dict[str, list[float]]  # per policy, expected acceptance
    index: list[int]  # request index of each evaluated decision
    new_in_set: list[bool]
    server_new: list[bool]
    oracle_new: list[bool]


def _score(sent: list[Sent], records: dict[str, dict[str, Any]], worlds: list[World]) -> tuple[_Scores, int]:
    scores = _Scores({k: [] for k in POLICIES}, {k: [] for k in POLICIES}, [], [], [], [])
    skipped = 0
    tiers = _tiers(worlds[-1])
    for s in sorted(sent, key=lambda x: x.request.index):
        rec = records.get(s.decision_id)
        if rec is None or rec["control_group"] or rec["degraded"]:
            skipped += 1
            continue
        world = worlds[s.world_index]
        cand = rec["candidates"]
        rows = [
            (o, float(p))
            for o, p, st in zip(cand["offer_id"], cand["propensity"], cand["status"], strict=True)
            if st == "chosen" or st.startswith("ranked below")
        ]
        scores.index.append(s.request.index)
        if not rows:
            for k in POLICIES:
                scores.ev[k].append(0.0)
                scores.p[k].append(0.0)
            scores.new_in_set.append(False)
            scores.server_new.append(False)
            scores.oracle_new.append(False)
            continue
        offers = [o for o, _ in rows]
        j = np.array([world.offer_ids.index(o) for o in offers])
        r = s.request
        ctx = {k: np.full(len(j), v) for k, v in r.context.items()}
        true_p = world.oracle(np.full(len(j), r.customer), j, r.channel, ctx, np.full(len(j), s.ts))
        value = world.offer_value[j]
        ev = true_p * value
        tier = np.array([tiers[o] for o in offers])
        top = tier == tier.min()
        model_p = np.array([p for _, p in rows])
        pick = {
            "server": offers.index(s.offer) if s.offer in offers else -1,
            "oracle": int(np.flatnonzero(top)[ev[top].argmax()]),
            "model_greedy": int(np.flatnonzero(top)[(model_p * value)[top].argmax()]),
            "rules_only": int(np.flatnonzero(top)[value[top].argmax()]),
        }
        for k, i in pick.items():
            scores.ev[k].append(float(ev[i]) if i >= 0 else 0.0)
            scores.p[k].append(float(true_p[i]) if i >= 0 else 0.0)
        scores.ev["random"].append(float(ev[top].mean()))
        scores.p["random"].append(float(true_p[top].mean()))
        scores.new_in_set.append(NEW_OFFER_ID in offers)
        scores.server_new.append(s.offer == NEW_OFFER_ID)
        scores.oracle_new.append(offers[pick["oracle"]] == NEW_OFFER_ID)
    return scores, skipped


def _diff_ci(a: list[float], b: list[float]) -> dict[str, float]:
    d = np.asarray(a) - np.asarray(b)
    if d.size < 2:
        return {"mean": float(d.mean()) if d.size else 0.0, "low": math.nan, "high": math.nan, "n": float(d.size)}
    half = 1.96 * float(d.std(ddof=1)) / math.sqrt(d.size)
    return {"mean": float(d.mean()), "low": float(d.mean()) - half, "high": float(d.mean()) + half, "n": float(d.size)}


def _new_offer_progress(scores: _Scores, change_at: int, window: int = 2000) -> dict[str, Any]:
    idx = np.asarray(scores.index)
    after = idx >= change_at
    in_set = np.asarray(scores.new_in_set) & after
    server, oracle = np.asarray(scores.server_new), np.asarray(scores.oracle_new)
    windows = []
    for start in range(change_at, int(idx.max()) + 1, window):
        sel = in_set & (idx >= start) & (idx < start + window)
        if sel.sum():
            windows.append(
                {
                    "from": start - change_at,
                    "server_share": float(server[sel].mean()),
                    "oracle_share": float(oracle[sel].mean()),
                    "n": int(sel.sum()),
                }
            )

    def shares(sel: npt.NDArray[np.bool_]) -> dict[str, float]:
        if not sel.any():
            return {"server_share": math.nan, "oracle_share": math.nan}
        return {"server_share": float(server[sel].mean()), "oracle_share": float(oracle[sel].mean())}

    return {
        "introduced_at": change_at,
        "first_10000": shares(in_set & (idx < change_at + 10_000)),
        "decisions_8000_to_10000": shares(in_set & (idx >= change_at + 8_000) & (idx < change_at + 10_000)),
        "windows": windows,
    }


def _plot(path: Path, scores: _Scores, result: SimulationResult, change_at: int | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if result.new_offer else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    for k in POLICIES:
        ax.plot(np.cumsum(scores.ev[k]), label=f"{k} ({result.share_of_oracle[k]:.0%} of oracle)")
    if change_at is not None:
        ax.axvline(change_at, color="grey", linestyle=":")
    ax.set_xlabel("decision")
    ax.set_ylabel("cumulative expected reward (value)")
    ax.set_title(f"{result.scenario}: {result.decisions:,} decisions")
    ax.legend(fontsize=8)
    if result.new_offer:
        ax2 = axes[0][1]
        w = result.new_offer["windows"]
        xs = [x["from"] for x in w]
        ax2.plot(xs, [x["server_share"] for x in w], marker="o", label="server")
        ax2.plot(xs, [x["oracle_share"] for x in w], marker="o", label="oracle")
        ax2.set_xlabel("decisions since the new offer was published")
        ax2.set_ylabel("share awarded the new offer (where eligible)")
        ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: SimulationConfig) -> SimulationResult:
    if cfg.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {cfg.scenario!r} (scenarios: {', '.join(SCENARIOS)})")
    started = time.perf_counter()
    world = World.create(n_customers=cfg.customers)
    worlds = [world]
    change_at: int | None = None
    if cfg.scenario == "drift":
        worlds.append(drifted(world, cfg.seed))
        change_at = cfg.decisions // 2
    elif cfg.scenario == "new-offer":
        worlds.append(with_new_offer(world))
        change_at = cfg.decisions // 5
    requests = _draw_requests(world, cfg.decisions, cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    with EmbeddedRedis(cfg.out / "redis", persist=False) as redis_server:
        _setup(cfg, redis_server.url, world)
        settings = Settings(
            redis_url=redis_server.url,
            port=0,
            workers=cfg.workers,
            learner=cfg.bandit,
            log_level="WARNING",
            model_cache_dir=cfg.out / "models",
        )
        group = ServerGroup(settings, redis_server.url)
        group.start()
        try:
            group.wait_ready(timeout=60)
            sent = asyncio.run(_drive(cfg, group.target, redis_server.url, worlds, requests, change_at))
            time.sleep(1.0)  # the last log batches
        finally:
            group.stop()
        records = _read_log(redis_server.url)
    scores, skipped = _score(sent, records, worlds)
    result = _summarise(cfg, scores, skipped, worlds, change_at, time.perf_counter() - started)
    (cfg.out / "summary.json").write_text(json.dumps(asdict(result), indent=2, default=str))
    (cfg.out / "summary.md").write_text(summary_markdown(result))
    _plot(cfg.out / "reward.png", scores, result, change_at)
    return result


def _summarise(
    cfg: SimulationConfig, scores: _Scores, skipped: int, worlds: list[World], change_at: int | None, seconds: float
) -> SimulationResult:
    n = len(scores.index)
    total = {k: float(np.sum(scores.ev[k])) for k in POLICIES}
    oracle = total["oracle"] or 1.0
    result = SimulationResult(
        scenario=cfg.scenario,
        decisions=cfg.decisions,
        evaluated=n,
        control_or_degraded=skipped,
        seconds=round(seconds, 1),
        reward={k: total[k] / max(n, 1) for k in POLICIES},
        acceptance={k: float(np.mean(scores.p[k])) if n else 0.0 for k in POLICIES},
        share_of_oracle={k: total[k] / oracle for k in POLICIES},
        regret={k: total["oracle"] - total[k] for k in POLICIES},
        vs_model_greedy=_diff_ci(scores.ev["server"], scores.ev["model_greedy"]),
    )
    if change_at is not None:
        after = np.asarray(scores.index) >= change_at
        a = list(np.asarray(scores.ev["server"])[after])
        b = list(np.asarray(scores.ev["model_greedy"])[after])
        result.vs_model_greedy_after_change = _diff_ci(a, b)
    if cfg.scenario == "drift":
        result.changed_offers = changed_offers(worlds[0], worlds[1])
    if cfg.scenario == "new-offer" and change_at is not None:
        result.new_offer = _new_offer_progress(scores, change_at)
    return result


def summary_markdown(r: SimulationResult) -> str:
    lines = [
        f"# Closed-loop simulation: {r.scenario}",
        "",
        f"{r.decisions:,} decisions ({r.evaluated:,} evaluated; {r.control_or_degraded:,} in the control group "
        f"or degraded), {r.seconds:.0f} s.",
        "",
        "| policy | expected value / decision | acceptance | % of oracle | regret (total) |",
        "|---|---|---|---|---|",
    ]
    for k in POLICIES:
        lines.append(
            f"| {k} | {r.reward[k]:.3f} | {r.acceptance[k]:.2%} | {r.share_of_oracle[k]:.1%} | {r.regret[k]:,.0f} |"
        )
    d = r.vs_model_greedy
    lines += ["", f"server - model_greedy per decision: {d['mean']:+.3f} (95% CI {d['low']:+.3f} to {d['high']:+.3f})"]
    if r.vs_model_greedy_after_change:
        d = r.vs_model_greedy_after_change
        lines.append(
            f"after the change: {d['mean']:+.3f} (95% CI {d['low']:+.3f} to {d['high']:+.3f}, n={d['n']:,.0f})"
        )
    if r.changed_offers:
        lines.append(f"offers whose response changed: {', '.join(r.changed_offers)}")
    if r.new_offer:
        f10 = r.new_offer["first_10000"]
        late = r.new_offer["decisions_8000_to_10000"]
        lines += [
            "",
            f"new offer {NEW_OFFER_ID} (published at decision {r.new_offer['introduced_at']:,}), share of the "
            f"decisions where it was a candidate:",
            f"- first 10,000 decisions: server {f10['server_share']:.1%}, oracle {f10['oracle_share']:.1%}",
            f"- decisions 8,000-10,000: server {late['server_share']:.1%}, oracle {late['oracle_share']:.1%}",
            "",
            "| decisions since | server share | oracle share | n |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {w['from']:,} | {w['server_share']:.1%} | {w['oracle_share']:.1%} | {w['n']:,} |"
            for w in r.new_offer["windows"]
        ]
    return "\n".join(lines) + "\n"


def main(opts: argparse.Namespace | Sequence[str]) -> int:
    """`nbo simulate` (its flags are defined in server/cli.py)."""
    if not isinstance(opts, argparse.Namespace):
        from server.cli import build_parser

        opts = build_parser().parse_args(["simulate", *opts])
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
    print(f"wrote {cfg.out / 'summary.md'}, {cfg.out / 'summary.json'}, {cfg.out / 'reward.png'}")
    return 0
