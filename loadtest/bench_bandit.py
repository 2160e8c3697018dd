"""What the bandit adds to a decision: whole `DecisionService.decide` calls against a real
redis-server, the same 10-offer web catalog without and with a `bandit:` section.

The bandit's cost is computing the policy (`samples` posterior draws ranked like the server
ranks, then an ordered draw from the result), so it grows with samples x candidates; every
offer of this catalog is a candidate. Run: `.venv/bin/python loadtest/bench_bandit.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_reserve import KEYS, Timing, catalog_text, concurrent, load_customers, summarise

from server.app import async_client
from server.catalog import parse_catalog
from server.config import Settings
from server.decision import DecisionService, LiveConfig
from server.decision_log import LogWriter
from server.domain import Channel, DecideRequest
from server.embedded_redis import EmbeddedRedis
from server.metrics import Metrics
from server.state import StateStore

VARIANTS = {
    "no bandit": "",
    "bandit, 64 samples": "bandit: {seed: 1, samples: 64, epsilon: 0.05}\n",
    "bandit, 256 samples (default)": "bandit: {seed: 1, samples: 256, epsilon: 0.05}\n",
    "bandit, 1024 samples": "bandit: {seed: 1, samples: 1024, epsilon: 0.05}\n",
}


async def run(opts: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis", persist=False) as server:
        customers, schema = load_customers(server.url, opts.customers, opts.seed, Path(tmp))
        settings = Settings(redis_url=server.url, redis_pool_size=32, redis_timeout_seconds=5.0)
        client = async_client(server.url, settings)
        metrics = Metrics()
        writer = LogWriter(client, KEYS, metrics, flush_seconds=settings.log_flush_seconds, maxlen=10_000)
        service = DecisionService(StateStore(client, KEYS), writer, metrics, settings)
        writer.start()
        base = catalog_text(budgeted=[], capacity=False)
        catalogs = {name: parse_catalog(base + extra, schema, version=name) for name, extra in VARIANTS.items()}
        readable = frozenset({schema.version})
        rng = random.Random(opts.seed)
        block = 1000
        sequences = [[rng.choice(customers) for _ in range(block)] for _ in range(max(opts.decisions // block, 1))]
        seq_ns: dict[str, list[int]] = {name: [] for name in VARIANTS}
        conc: dict[str, list[Timing]] = {name: [] for name in VARIANTS}
        below_one: dict[str, int] = {name: 0 for name in VARIANTS}

        async def decide(name: str, cid: str) -> None:
            d = await service.decide(DecideRequest(customer_id=cid, channel=Channel.WEB, max_offers=1))
            below_one[name] += bool(d.offers) and d.offers[0].selection_probability < 1.0

        names = list(VARIANTS)
        for b, sequence in enumerate([sequences[0], *sequences]):  # the first block warms up
            for name in names[b % len(names) :] + names[: b % len(names)]:
                service.live = LiveConfig(catalogs[name], schema, readable)
                lat = []
                for cid in sequence:
                    t = time.perf_counter_ns()
                    await decide(name, cid)
                    lat.append(time.perf_counter_ns() - t)
                c = await concurrent(lambda i, n=name, s=sequence: decide(n, s[i]), len(sequence), opts.concurrency)
                if b > 0:
                    seq_ns[name] += lat
                    conc[name].append(c)
                else:
                    below_one[name] = 0
        await writer.close()
        await client.aclose(close_connection_pool=True)
    base_mean = summarise(seq_ns["no bandit"]).mean
    lines = [
        f"DecisionService.decide, web, max_offers 1, 10 candidates, {len(seq_ns['no bandit']):,} decisions per "
        f"variant, seed {opts.seed}",
        "",
        f"| variant | mean µs | p50 | p99 | Δ mean | {opts.concurrency} at once: decisions/s "
        "| share of awards drawn with p < 1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        s = summarise(seq_ns[name])
        per_second = float(np.mean([c.per_second for c in conc[name]]))
        lines.append(
            f"| {name} | {s.mean:.0f} | {s.p50:.0f} | {s.p99:.0f} | {s.mean - base_mean:+.0f} | {per_second:,.0f} "
            f"| {below_one[name] / (2 * len(seq_ns[name])):.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=6_000, help="decisions per variant")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=7)
    opts = parser.parse_args()
    print(asyncio.run(run(opts)))


if __name__ == "__main__":
    main()
