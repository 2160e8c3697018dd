"""Redis memory per million customers, per customer's contact history and per million logged
decisions and outcomes: the figures of docs/operations.md "Sizing", measured on a real redis-server.

    .venv/bin/python -m loadtest.sizing [--redis-server /usr/bin/redis-server] [--customers 200000]
                                        [--awarded 2000] [--records 100000]

Starts its own redis-server (the given binary, else the embedded one; free port, no persistence)
and measures, as `used_memory` deltas of INFO memory and as MEMORY USAGE of the keys:

1. customers: `--customers` synthetic customers (training.population, 15 features) loaded with
   the real encoder (FeatureStore.load, what `nbo features load` runs), per customer and per
   million, and MEMORY USAGE of 1,000 sampled feature keys;
2. contact history: the load test's production catalog (100 offers, bandit on) in one
   in-process worker (server.app.Worker, log writer running); `--awarded` customers get three web
   decisions each (max_offers 1) and an outcome for each award (ACCEPTED for one in five, else
   DECLINED, which starts a cooldown); the keys left, by kind, per customer;
3. the log: the real decision records of step 2 read back, resized to exactly 10 and 100
   candidates (their candidate columns cycled) and re-encoded with DecisionRecord.to_fields;
   `--records` of each XADDed to a stream of its own as the log writer does; likewise the real
   outcome records of step 2; bytes per entry and per million.

Decisions per second per core come from the production load test run with 1 and 2 workers
(see loadtest/README.md, "Sizing"). Helpers shared with loadtest/state_bytes.py are imported from it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import yaml

from loadtest.make_body import DEFAULT_CONTEXT, DEFAULT_EVENTS
from loadtest.make_catalog import build_catalog
from loadtest.state_bytes import KEYS, census, load_customers, redis_parser, redis_server, run_measurement, show, used
from server.app import Worker
from server.config import Settings
from server.domain import Channel, DecideRequest, Outcome, OutcomeReport
from server.state.catalog_store import publish
from server.state.records import Candidates, DecisionRecord, decode_decision_record

MILLION = 1_000_000


def per_million(delta: int, n: int) -> str:
    return f"{delta / n:,.0f} B each, {delta / n * MILLION / 1e9:,.2f} GB per million"


def sample_features(client: redis.Redis, n: int, sample: int = 1000) -> None:
    ids = random.Random(7).sample(range(1, n + 1), min(sample, n))
    pipe = client.pipeline(transaction=False)
    for i in ids:
        pipe.memory_usage(KEYS.features(f"C{i:07d}"), samples=0)
    sizes = [int(s or 0) for s in pipe.execute()]
    print(f"  MEMORY USAGE of {len(sizes):,} sampled feature keys: mean {sum(sizes) / len(sizes):,.0f} B")


async def contact_history(client: redis.Redis, url: str, customers: int) -> list[dict[bytes, bytes]]:
    """Three awarded web decisions per customer and an outcome per award; the keys they leave.
    Returns the decision log entries (for the log figures)."""
    catalog = build_catalog(11, offers_n=100, production=True)
    publish(client, KEYS, yaml.safe_dump(catalog, sort_keys=False))
    # a measurement, not a latency test: Redis calls may wait on a machine other work shares
    settings = Settings(
        redis_url=url,
        port=0,
        workers=1,
        log_flush_seconds=0.01,
        log_spill_dir=None,
        model_cache_dir=None,
        redis_timeout_seconds=2.0,
    )
    worker = Worker(settings, url, 0)
    await worker.start()
    before, mem = census(client), used(client)
    rng = random.Random(7)
    awards = outcomes = 0
    try:
        for start in range(1, customers + 1, 50):
            batch = [f"C{i:07d}" for i in range(start, min(start + 50, customers + 1))]
            for _ in range(3):
                requests = [
                    DecideRequest(c, Channel.WEB, context=dict(DEFAULT_CONTEXT), events=tuple(DEFAULT_EVENTS))
                    for c in batch
                ]
                decisions = await asyncio.gather(*(worker.service.decide(r) for r in requests))
                reports = [
                    OutcomeReport(
                        d.decision_id, o.offer_id, Outcome.ACCEPTED if rng.random() < 0.2 else Outcome.DECLINED
                    )
                    for d in decisions
                    for o in d.offers
                ]
                awards += len(reports)
                results = await asyncio.gather(*(worker.service.report_outcome(r, admin=True) for r in reports))
                outcomes += sum(r.recorded for r in results)
        await worker.writer.close()  # every record written before measuring
        worker.writer.start()
    finally:
        await worker.stop(grace=0.5)
    delta = used(client) - mem
    print(f"contact history: {customers:,} customers, 3 web decisions each, {awards:,} awards, {outcomes:,} outcomes")
    print(f"  used_memory delta {delta:,} B = {delta / customers:,.0f} B per customer (every key, streams included)")
    show("the keys", before, census(client))
    return [fields for _, fields in stream(client, KEYS.decision_stream)]


def stream(client: redis.Redis, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return client.xrange(key)  # type: ignore[return-value]


def cycled(items: list[dict[Any, Any]]) -> Callable[[int], dict[Any, Any]]:
    return lambda i: items[i % len(items)]


def resized(record: DecisionRecord, n: int) -> DecisionRecord:
    """The record with exactly n candidates: its candidate rows cycled (offer ids made distinct)."""
    c = record.candidates
    rows = len(c.offer_id)

    def col(values: list[Any]) -> list[Any]:
        return [values[i % rows] for i in range(n)]

    cands = Candidates(
        offer_id=[f"{c.offer_id[i % rows]}~{i // rows}" if i >= rows else c.offer_id[i] for i in range(n)],
        campaign_id=col(c.campaign_id),
        propensity=col(c.propensity),
        expected_value=col(c.expected_value),
        score=col(c.score),
        selection_probability=col(c.selection_probability),
        status=col(c.status),
    )
    return dataclasses.replace(record, candidates=cands)


def stream_bytes(client: redis.Redis, key: str, n: int, entry: Callable[[int], dict[Any, Any]]) -> tuple[int, int]:
    """XADD n entries to a fresh stream; (used_memory delta, MEMORY USAGE of the stream)."""
    client.delete(key)
    mem = used(client)
    for start in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + 1000, n)):
            pipe.xadd(key, entry(i))
        pipe.execute()
    return used(client) - mem, int(client.memory_usage(key, samples=0) or 0)


def log_figures(client: redis.Redis, entries: list[dict[bytes, bytes]], n: int) -> None:
    records = [decode_decision_record(f) for f in entries]
    awarded = [r for r in records if r.chosen and len(r.candidates.offer_id) > 0]
    counts = [len(r.candidates.offer_id) for r in awarded]
    print(f"log: {len(records):,} real decision records, {len(awarded):,} awarded, candidates per awarded record")
    print(f"  min {min(counts)}, mean {sum(counts) / len(counts):.1f}, max {max(counts)}")
    for size in (10, 100):
        fields = [resized(r, size).to_fields() for r in awarded]
        delta, usage = stream_bytes(client, f"sizing:decisions:{size}", n, cycled(fields))
        print(f"  {n:,} decision records with {size} candidates: used_memory {per_million(delta, n)}")
        print(f"    MEMORY USAGE of the stream {usage / n:,.0f} B per entry")
    outcome_entries: list[dict[Any, Any]] = [f for _, f in stream(client, KEYS.outcome_stream)]
    delta, usage = stream_bytes(client, "sizing:outcomes", n, cycled(outcome_entries))
    print(f"  {n:,} outcome records (of {len(outcome_entries):,} real ones): used_memory {per_million(delta, n)}")
    print(f"    MEMORY USAGE of the stream {usage / n:,.0f} B per entry")


async def run(opts: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, redis_server(opts.redis_server, Path(tmp)) as client:
        info = client.info("server")
        print(f"redis-server: {opts.redis_server} ({info['redis_version']}, {client.info('memory')['mem_allocator']})")
        load_customers(client, opts.customers, Path(tmp))
        sample_features(client, opts.customers)
        url = f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0"
        entries = await contact_history(client, url, opts.awarded)
        log_figures(client, entries, opts.records)


def main() -> int:
    parser = redis_parser(__doc__, customers=200_000)
    parser.add_argument("--awarded", type=int, default=2_000, help="customers given three decisions each")
    parser.add_argument("--records", type=int, default=100_000, help="log entries written per kind")
    return run_measurement(parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
