"""Reservation benchmark: what the budget reservation costs per decision, against a real redis-server.

    .venv/bin/python loadtest/bench_reserve.py [--calls 20000] [--concurrency 32] [--decisions 12000]

Starts a private redis-server (server.state.embedded_redis, free port, no persistence), loads seeded
customers, compiles real catalogs (server.catalog.compiler.parse_catalog against the loaded schema) and
builds the reservations with server.catalog.budgets.reservation, as the decision pipeline does. Then:

1. Script calls through server.state.redis_store.RedisStateStore (redis.asyncio on uvloop, hiredis, the server's
   blocking pool): `reserve` for walks of 1, 3 and 10 candidates, each candidate with 9 checks
   (offer and campaign: total awards, spend, awards today, spend today; channel capacity per
   hour). A walk of n either awards its first candidate (the other n-1 are only sent along) or
   walks past n-1 candidates whose campaign's daily cap is used up (each refused at its 7th
   check) to award the last one. For comparison: `commit` (one pick, channel cap on), `release`
   (9 checks), the decision's single `read` script, and a bare `HGET` (the round-trip floor).
   Each: client-side round trip (mean, p50, p99) over `--calls` sequential calls and over
   `--calls` calls from `--concurrency` tasks at once (with calls/s); the Redis-side cost is
   `usec_per_call` of `cmdstat_evalsha` (`cmdstat_hget` for the floor) from INFO commandstats,
   reset before each measured phase.
2. Whole decisions through server.pipeline.service.DecisionService (read, filter, score, arbitrate,
   reserve, commit, log writer running), same 10-offer catalog three ways: no budgets, the top
   offer and its campaign budgeted (8 checks, walk of 2: the top offer and the next, unlimited,
   one), and every offer and campaign budgeted plus channel capacity (9 checks each, walk of 10).
   Variants alternate in blocks of 1,000 decisions over the same seeded customer sequence.

Limits are 10^9 (never reached) except the deliberately exhausted daily caps of part 1.
Everything is seeded (`--seed`); timings, of course, are not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import random
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis

from server.catalog.budgets import Period, Reservation, reservation
from server.catalog.compiled import Catalog
from server.catalog.compiler import parse_catalog
from server.config import Settings
from server.domain import Channel, DecideRequest
from server.features.schema import FeatureSchema
from server.ids import DecisionIds
from server.metrics import Metrics
from server.pipeline.service import DecisionService, LiveConfig
from server.state.embedded_redis import EmbeddedRedis
from server.state.feature_store import FeatureStore, read_feature_file
from server.state.keys import Keys
from server.state.log_writer import LogWriter
from server.state.redis_client import pooled_async_client
from server.state.redis_store import Pick, RedisStateStore

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC: fixed, so the day and hour counter keys are too
BIG = 1_000_000_000
N_OFFERS = 10
KEYS = Keys()


# -- set-up ------------------------------------------------------------------------------------
def load_customers(url: str, n: int, seed: int, tmp: Path) -> tuple[list[str], FeatureSchema]:
    rng = random.Random(seed)
    path = tmp / "customers.csv"
    ids = [f"c{i:05d}" for i in range(n)]
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["customer_id", "tier", "tenure_months", "churn_risk", "consent_web"])
        for cid in ids:
            out.writerow([cid, rng.choice("ABC"), rng.randint(0, 120), round(rng.random(), 3), 1])
    client = redis.Redis.from_url(url)
    try:
        store = FeatureStore(client, KEYS)
        table = read_feature_file(path, ["tier"])
        assert not table.errors, table.errors[:3]
        store.load(table)
        schema = store.current_schema()
        assert schema is not None
    finally:
        client.close()
    return ids, schema


def catalog_text(*, budgeted: range | list[int], capacity: bool, daily_cap_of: dict[int, int] | None = None) -> str:
    """Ten offers on web, one campaign each; c0 is ad hoc (so o0 ranks first), the rest lifecycle."""
    daily_cap_of = daily_cap_of or {}
    lines = ["name: bench-reserve", "timezone: UTC", "consent: {web: consent_web}"]
    lines += ["contact_policy:", "  window_hours: 24", "  max_per_window: {web: 1000000}"]
    if capacity:
        lines += ["channels:", f"  web: {{capacity_per_hour: {BIG}}}"]
    lines += ["segments:", "  loyal: {rule: 'tenure_months >= 12 or tier == \"A\"'}", "campaigns:"]
    for i in range(N_OFFERS):
        kind = "ad_hoc" if i == 0 else "lifecycle"
        budget = ""
        if i in budgeted:
            daily = daily_cap_of.get(i, BIG)
            budget = f", budget: {{total_awards: {BIG}, total_spend: {BIG}, daily_awards: {daily}}}"
        lines.append(f"  - {{id: c{i}, type: {kind}, priority: {90 - i}, channels: [web]{budget}}}")
    lines.append("offers:")
    for i in range(N_OFFERS):
        budget = f", budget: {{total_awards: {BIG}, total_spend: {BIG}, daily_awards: {BIG}}}" if i in budgeted else ""
        rule = ", eligibility: 'churn_risk >= 0 or is_missing(churn_risk)'" if i % 3 == 0 else ""
        lines.append(
            f"  - {{id: o{i}, campaign: c{i}, title: Offer {i}, value: {100 + 10 * i}, cost: 2.5, "
            f"prior_propensity: {0.05 + i / 100:.2f}{budget}{rule}}}"
        )
    return "\n".join(lines) + "\n"


# -- timing ------------------------------------------------------------------------------------
@dataclass
class Timing:
    mean: float
    p50: float
    p99: float
    per_second: float = 0.0


def summarise(ns: list[int], wall_s: float = 0.0) -> Timing:
    us = np.asarray(ns, dtype=np.float64) / 1000
    return Timing(
        float(us.mean()), float(np.percentile(us, 50)), float(np.percentile(us, 99)), len(ns) / wall_s if wall_s else 0
    )


async def sequential(fn: Callable[[int], Awaitable[object]], calls: int) -> Timing:
    lat = []
    clock = time.perf_counter_ns
    for i in range(calls):
        t = clock()
        await fn(i)
        lat.append(clock() - t)
    return summarise(lat)


async def concurrent(fn: Callable[[int], Awaitable[object]], calls: int, tasks: int) -> Timing:
    lat: list[int] = []
    todo = iter(range(calls))
    clock = time.perf_counter_ns

    async def one() -> None:
        for i in todo:
            t = clock()
            await fn(i)
            lat.append(clock() - t)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(tasks)))
    return summarise(lat, time.perf_counter() - started)


def server_usec(client: redis.Redis, command: str) -> float:
    stats = client.info("commandstats").get(f"cmdstat_{command}")
    return float(stats["usec_per_call"]) if stats else float("nan")


# -- part 1: the scripts -----------------------------------------------------------------------
@dataclass
class ScriptRow:
    name: str
    checks: str
    seq: Timing
    seq_server: float
    conc: Timing
    conc_server: float


async def bench_scripts(
    url: str, customers: list[str], schema: FeatureSchema, opts: argparse.Namespace
) -> tuple[list[ScriptRow], Timing]:
    settings = Settings(redis_url=url, redis_pool_size=opts.concurrency, redis_timeout_seconds=5.0)
    aclient = pooled_async_client(url, settings)
    sync = redis.Redis.from_url(url)
    store = RedisStateStore(aclient, KEYS)
    # c0..c8 have a daily cap of 1 that is already used; c9 never runs out
    catalog = parse_catalog(
        catalog_text(budgeted=range(N_OFFERS), capacity=True, daily_cap_of={i: 1 for i in range(9)}), schema
    )
    period = Period.at(NOW, catalog.timezone)
    for i in range(9):
        sync.hset(KEYS.budget_day(f"c{i}", period.day), f"c:c{i}:n", 1)
    res: dict[str, Reservation] = {}
    for o in catalog.offers:
        r = reservation(catalog, o, Channel.WEB, NOW, period)
        assert r is not None and len(r.checks) == 9
        res[o.id] = r
    walks: dict[str, tuple[list[Reservation], int]] = {"reserve, walk of 1": ([res["o9"]], 0)}  # walk, refused
    for n in (3, 10):
        before = [res[f"o{i}"] for i in range(n - 1)]
        walks[f"reserve, walk of {n}: the 1st fits"] = ([res["o9"], *before], 0)
        walks[f"reserve, walk of {n}: {n - 1} exhausted, then fits"] = ([*before, res["o9"]], n - 1)
    for name, (walk, refused) in walks.items():
        got = await store.reserve(period, 1, walk)
        assert got.awarded == ("o9",) and len(got.refused) == refused, (name, got)

    pick = Pick("o9", "c9", -1, -1, 0.1, 0.5)
    n_customers = len(customers)

    async def commit(i: int) -> object:
        return await store.commit(
            customer_id=customers[i % n_customers],
            channel="web",
            decision_id=f"bench{i:08d}.{customers[i % n_customers]}",
            request_id="",
            now=NOW,
            window_seconds=86_400,
            channel_cap=1_000_000,
            picks=[pick],
            may_retry=False,
            decision_ttl=3600,
            request_ttl=3600,
            history_ttl=3600,
            request_fingerprint="",
        )

    def reserve_fn(walk: list[Reservation]) -> Callable[[int], Awaitable[object]]:
        return lambda _i: store.reserve(period, 1, walk)

    ops: list[tuple[str, str, Callable[[int], Awaitable[object]], str]] = [
        (name, f"{len(walk)} x 9", reserve_fn(walk), "evalsha") for name, (walk, _) in walks.items()
    ]
    ops += [
        ("commit (1 pick, channel cap)", "-", commit, "evalsha"),
        ("release (9 checks)", "9", lambda _i: store.release(period, [res["o9"]]), "evalsha"),
        (
            "read (the decision's one read script)",
            "-",
            lambda i: store.read(customers[i % n_customers], "web", NOW, 86_400, ""),
            "evalsha",
        ),
        ("bare HGET (round-trip floor)", "-", lambda _i: aclient.hget(KEYS.budget_total("c9"), "o:o9:n"), "hget"),
    ]
    rows = []
    for name, checks, fn, command in ops:
        for i in range(1000):  # warm-up: connections, script cache, allocator
            await fn(i)
        sync.config_resetstat()
        seq = await sequential(fn, opts.calls)
        seq_server = server_usec(sync, command)
        sync.config_resetstat()
        conc = await concurrent(fn, opts.calls, opts.concurrency)
        conc_server = server_usec(sync, command)
        rows.append(ScriptRow(name, checks, seq, seq_server, conc, conc_server))
        print(f"  {name}: {seq.mean:.1f} us sequential, {conc.per_second:,.0f}/s at {opts.concurrency}", flush=True)

    # the Python side of building a walk, as _award does: Period.at + reservation() per candidate
    offers = list(catalog.offers)
    build = []
    for _ in range(opts.calls // 10):
        t = time.perf_counter_ns()
        p = Period.at(NOW, catalog.timezone)
        for o in offers:
            reservation(catalog, o, Channel.WEB, NOW, p)
        build.append(time.perf_counter_ns() - t)
    await aclient.aclose(close_connection_pool=True)
    sync.close()
    return rows, summarise(build)


# -- part 2: whole decisions -------------------------------------------------------------------
@dataclass
class DecisionRow:
    name: str
    walk: str
    seq: Timing
    conc: Timing
    outcomes: dict[str, int]
    n: int


@contextlib.asynccontextmanager
async def decision_service(url: str) -> AsyncIterator[DecisionService]:
    """A DecisionService on its own client and running log writer, as a worker has them."""
    settings = Settings(redis_url=url, redis_pool_size=32, redis_timeout_seconds=5.0)
    client = pooled_async_client(url, settings)
    metrics = Metrics()
    writer = LogWriter(client, KEYS, metrics, flush_seconds=settings.log_flush_seconds, maxlen=10_000)
    writer.start()
    try:
        yield DecisionService(RedisStateStore(client, KEYS), writer, metrics, settings, ids=DecisionIds.random())
    finally:
        await writer.close()
        await client.aclose(close_connection_pool=True)


async def alternate(
    service: DecisionService,
    live: Mapping[str, LiveConfig],
    sequences: list[list[str]],
    concurrency: int,
    decide: Callable[[DecisionService, str, str], Awaitable[None]],
    warmed_up: Callable[[str], None],
) -> tuple[dict[str, list[int]], dict[str, list[Timing]]]:
    """Each block of customers decided under every variant in turn (rotating which goes first),
    one at a time and then `concurrency` at once; the first block warms up and is not counted
    (`warmed_up(name)` then resets the caller's tallies). Per variant: sequential latencies (ns)
    and one concurrent Timing per block."""
    names = list(live)
    seq_ns: dict[str, list[int]] = {name: [] for name in names}
    conc_runs: dict[str, list[Timing]] = {name: [] for name in names}
    for b, sequence in enumerate([sequences[0], *sequences]):
        for name in names[b % len(names) :] + names[: b % len(names)]:
            service.live = live[name]
            lat = []
            for cid in sequence:
                t = time.perf_counter_ns()
                await decide(service, name, cid)
                lat.append(time.perf_counter_ns() - t)
            conc = await concurrent(lambda i, n=name, s=sequence: decide(service, n, s[i]), len(sequence), concurrency)
            if b > 0:
                seq_ns[name] += lat
                conc_runs[name].append(conc)
            else:
                warmed_up(name)
    return seq_ns, conc_runs


async def bench_decisions(
    url: str, customers: list[str], schema: FeatureSchema, opts: argparse.Namespace
) -> list[DecisionRow]:
    def compiled(budgeted: range | list[int], capacity: bool) -> Catalog:
        return parse_catalog(
            catalog_text(budgeted=budgeted, capacity=capacity), schema, version=f"{budgeted}{capacity}"
        )

    variants: dict[str, tuple[Catalog, str]] = {
        "no budgets": (compiled([], False), "-"),
        "top offer budgeted": (compiled([0], False), "2: 8 + 0 checks"),
        "top offer budgeted + channel capacity": (compiled([0], True), "2: 9 + 1 checks"),
        "all budgeted + channel capacity": (compiled(range(N_OFFERS), True), "10 x 9 checks"),
    }
    readable = frozenset({schema.version})
    rng = random.Random(opts.seed + 1)
    block = 1000
    blocks = max(opts.decisions // block, 1)
    sequences = [[rng.choice(customers) for _ in range(block)] for _ in range(blocks)]
    outcomes: dict[str, dict[str, int]] = {name: {} for name in variants}

    async def decide(service: DecisionService, name: str, cid: str) -> None:
        d = await service.decide(DecideRequest(customer_id=cid, channel=Channel.WEB, max_offers=1))
        key = d.offers[0].offer_id if d.offers else d.no_offer_reason.value
        outcomes[name][key] = outcomes[name].get(key, 0) + 1

    live = {name: LiveConfig(catalog, schema, readable) for name, (catalog, _) in variants.items()}
    async with decision_service(url) as service:
        seq_ns, conc_runs = await alternate(
            service, live, sequences, opts.concurrency, decide, warmed_up=lambda name: outcomes[name].clear()
        )
    rows = []
    for name, (_, walk) in variants.items():
        runs = conc_runs[name]
        per_second = sum(r.per_second for r in runs) / len(runs)
        conc = Timing(
            sum(r.mean for r in runs) / len(runs),
            float(np.median([r.p50 for r in runs])),
            float(np.median([r.p99 for r in runs])),
            per_second,
        )
        rows.append(DecisionRow(name, walk, summarise(seq_ns[name]), conc, outcomes[name], len(seq_ns[name])))
    return rows


# -- report ------------------------------------------------------------------------------------
def report(
    script_rows: list[ScriptRow], build: Timing, decision_rows: list[DecisionRow], opts: argparse.Namespace
) -> str:
    c = opts.concurrency
    out = [
        f"Script calls ({opts.calls:,} calls each; client-side round trip in µs; Redis-side µs per call "
        "from INFO commandstats)",
        "",
        f"| operation | checks | mean | p50 | p99 | Redis µs/call | {c} at once: mean | p50 | p99 | calls/s "
        "| Redis µs/call |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in script_rows:
        out.append(
            f"| {r.name} | {r.checks} | {r.seq.mean:.0f} | {r.seq.p50:.0f} | {r.seq.p99:.0f} | {r.seq_server:.1f} "
            f"| {r.conc.mean:.0f} | {r.conc.p50:.0f} | {r.conc.p99:.0f} | {r.conc.per_second:,.0f} "
            f"| {r.conc_server:.1f} |"
        )
    out += [
        "",
        f"Building a walk of 10 in Python (Period.at + reservation() x 10): mean {build.mean:.1f} µs, "
        f"p50 {build.p50:.1f}, p99 {build.p99:.1f}.",
        "",
        f"Whole decisions (DecisionService.decide, web, max_offers 1, 10 offers; per catalog "
        f"{decision_rows[0].n:,} sequential, then as many {c} at once)",
        "",
        f"| catalog | walk | mean µs | p50 | p99 | Δ mean vs no budgets | {c} at once: decisions/s "
        "| µs/decision | Δ | awarded (both phases) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = decision_rows[0]
    for r in decision_rows:
        per = 1e6 / r.conc.per_second
        base_per = 1e6 / base.conc.per_second
        shown = ", ".join(f"{k} {v:,}" for k, v in sorted(r.outcomes.items()))
        out.append(
            f"| {r.name} | {r.walk} | {r.seq.mean:.0f} | {r.seq.p50:.0f} | {r.seq.p99:.0f} "
            f"| {r.seq.mean - base.seq.mean:+.0f} | {r.conc.per_second:,.0f} | {per:.0f} | {per - base_per:+.0f} "
            f"| {shown} |"
        )
    return "\n".join(out)


async def run(opts: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis", persist=False) as server:
        customers, schema = load_customers(server.url, opts.customers, opts.seed, Path(tmp))
        print(f"redis-server on {server.url}; {len(customers)} customers; measuring scripts", flush=True)
        script_rows, build = await bench_scripts(server.url, customers, schema, opts)
        print("measuring whole decisions", flush=True)
        decision_rows = await bench_decisions(server.url, customers, schema, opts)
        redis_version = redis.Redis.from_url(server.url).info("server")["redis_version"]
    text = report(script_rows, build, decision_rows, opts)
    return f"redis-server {redis_version}, seed {opts.seed}\n\n{text}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per script measurement")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--decisions", type=int, default=12_000, help="decisions per catalog variant")
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, help="also write the tables to this file")
    opts = parser.parse_args()
    try:
        import uvloop  # as the server's workers run
    except ImportError:
        uvloop = None
    text = uvloop.run(run(opts)) if uvloop is not None else asyncio.run(run(opts))
    print("\n" + text)
    if opts.out:
        opts.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
