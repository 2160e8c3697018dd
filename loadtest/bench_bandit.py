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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_reserve import alternate, catalog_text, decision_service, load_customers, summarise

from server.catalog.compiler import parse_catalog
from server.domain import Channel, DecideRequest
from server.pipeline.service import DecisionService, LiveConfig
from server.state.embedded_redis import EmbeddedRedis

VARIANTS = {
    "no bandit": "",
    "bandit, 64 samples": "bandit: {seed: 1, samples: 64, epsilon: 0.05}\n",
    "bandit, 256 samples (default)": "bandit: {seed: 1, samples: 256, epsilon: 0.05}\n",
    "bandit, 1024 samples": "bandit: {seed: 1, samples: 1024, epsilon: 0.05}\n",
}


async def run(opts: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis", persist=False) as server:
        customers, schema = load_customers(server.url, opts.customers, opts.seed, Path(tmp))
        base = catalog_text(budgeted=[], capacity=False)
        catalogs = {name: parse_catalog(base + extra, schema, version=name) for name, extra in VARIANTS.items()}
        readable = frozenset({schema.version})
        rng = random.Random(opts.seed)
        block = 1000
        sequences = [[rng.choice(customers) for _ in range(block)] for _ in range(max(opts.decisions // block, 1))]
        below_one: dict[str, int] = dict.fromkeys(VARIANTS, 0)

        async def decide(service: DecisionService, name: str, cid: str) -> None:
            d = await service.decide(DecideRequest(customer_id=cid, channel=Channel.WEB, max_offers=1))
            below_one[name] += bool(d.offers) and d.offers[0].selection_probability < 1.0

        def reset(name: str) -> None:
            below_one[name] = 0

        live = {name: LiveConfig(catalogs[name], schema, readable) for name in VARIANTS}
        async with decision_service(server.url) as service:
            seq_ns, conc = await alternate(service, live, sequences, opts.concurrency, decide, warmed_up=reset)
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
