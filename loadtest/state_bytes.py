"""Bytes of Redis per customer, per decision and per logged record, measured on a real redis-server.

    .venv/bin/python loadtest/state_bytes.py [--redis-server /usr/bin/redis-server] [--customers 100000]
                                             [--calls 5000]

Starts its own redis-server (the given binary, else the embedded one; free port, no persistence),
loads `--customers` synthetic customers (training.population, as the load test does) and the
load-test catalog (loadtest/make_catalog.py: 100 offers), starts one in-process worker
(server.app.Worker, log writer running) and measures, as `used_memory` deltas of INFO memory and
as MEMORY USAGE summed per kind of key:

1. customers: the feature keys, per customer;
2. no-offer calls: `--calls` Decide calls for unknown customers, each with its own request id
   (the flood of issue 11), and `--calls` without a request id;
3. awarded decisions: `--calls` Decide calls for known customers (WEB, max_offers 1, the load
   test's context and events), each with its own request id;
and, after each phase, which keys are left with which expiry. The stream figures give the bytes
per logged decision. It runs the server code on the import path, so the same script measures an
older checkout: `PYTHONPATH=/path/to/checkout .venv/bin/python loadtest/state_bytes.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import yaml

from loadtest.make_body import DEFAULT_CONTEXT, DEFAULT_EVENTS
from loadtest.make_catalog import build_catalog
from server.app import Worker
from server.config import Settings
from server.domain import Channel, DecideRequest
from server.state.catalog_store import publish
from server.state.embedded_redis import find_redis_server, free_port
from server.state.feature_store import FeatureStore, read_feature_file
from server.state.keys import Keys
from training.population import make_population

KEYS = Keys()
DAY = 86_400


@contextmanager
def redis_server(binary: str, data: Path) -> Iterator[redis.Redis]:
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait()


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def kind_of(key: str) -> str:
    """A key's kind: the part after the customer's hash tag, or the whole (global) key."""
    if "}:" in key and "{c:" in key:
        rest = key.split("}:", 1)[1]
        return rest.split(":", 1)[0]
    return key.removeprefix(KEYS.prefix)


def census(client: redis.Redis) -> dict[str, tuple[int, int, int]]:
    """kind -> (keys, bytes by MEMORY USAGE, keys expiring in more than a day or never)."""
    out: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    keys = [k.decode() for k in client.scan_iter(count=1000)]
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.memory_usage(k, samples=0)
        pipe.ttl(k)
    answers = pipe.execute()
    for i, k in enumerate(keys):
        size, ttl = answers[2 * i], answers[2 * i + 1]
        row = out[kind_of(k)]
        row[0] += 1
        row[1] += int(size or 0)
        row[2] += 1 if ttl == -1 or ttl > DAY else 0
    return {k: (v[0], v[1], v[2]) for k, v in sorted(out.items())}


def show(title: str, before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]) -> None:
    print(f"  {title}: keys added, by kind (count, bytes by MEMORY USAGE, of them living > 1 day)")
    for kind, (n, size, long) in after.items():
        n0, size0, long0 = before.get(kind, (0, 0, 0))
        if (n, size, long) != (n0, size0, long0):
            print(f"    {kind:<28} {n - n0:>8,} keys {size - size0:>12,} B {long - long0:>8,} long-lived")


async def calls(worker: Worker, requests: list[DecideRequest]) -> collections.Counter[str]:
    reasons: collections.Counter[str] = collections.Counter()
    for start in range(0, len(requests), 50):
        batch = await asyncio.gather(*(worker.service.decide(r) for r in requests[start : start + 50]))
        reasons.update(d.no_offer_reason.value if not d.offers else "awarded" for d in batch)
    await worker.writer.close()  # everything written before measuring
    worker.writer.start()
    return reasons


async def phase(client: redis.Redis, worker: Worker, title: str, requests: list[DecideRequest]) -> tuple[float, float]:
    before, stream_before = census(client), census_stream(client)
    mem = used(client)
    reasons = await calls(worker, requests)
    delta = used(client) - mem
    stream_after = census_stream(client)
    n = len(requests)
    stream_bytes = (stream_after[1] - stream_before[1]) / max(1, stream_after[0] - stream_before[0])
    print(f"{title}: {n:,} calls ({dict(reasons)})")
    print(f"  used_memory delta {delta:,} B = {delta / n:,.0f} B per call")
    print(f"  decision stream: {stream_after[0] - stream_before[0]:,} entries, {stream_bytes:,.0f} B per entry")
    show(title, before, census(client))
    return delta / n, stream_bytes


def census_stream(client: redis.Redis) -> tuple[int, int]:
    stream = KEYS.decision_stream
    return int(client.xlen(stream)), int(client.memory_usage(stream, samples=0) or 0)


def load_customers(client: redis.Redis, n: int, work: Path) -> None:
    path = work / "customers.csv"
    make_population(n, seed=7).write_csv(str(path))
    store = FeatureStore(client, KEYS)
    before = used(client)
    table = read_feature_file(path, ["tier", "preferred_channel"], base=store.current_schema())
    store.load(table)
    delta = used(client) - before
    sample = client.memory_usage(KEYS.features("C0000001"), samples=0)
    print(f"customers: {n:,} with {len(table.specs)} features")
    print(f"  used_memory delta {delta:,} B = {delta / n:,.0f} B per customer ({delta / n:,.0f} MB per million)")
    print(f"  MEMORY USAGE of one features key: {sample} B")


async def run(opts: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, redis_server(opts.redis_server, Path(tmp)) as client:
        work = Path(tmp)
        print(f"redis-server: {opts.redis_server} ({client.info('server')['redis_version']})")
        load_customers(client, opts.customers, work)
        publish(client, KEYS, yaml.safe_dump(build_catalog(11), sort_keys=False))
        url = f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0"
        settings = Settings(
            redis_url=url, port=0, workers=1, log_flush_seconds=0.01, log_spill_dir=None, model_cache_dir=None
        )
        worker = Worker(settings, url, 0)
        await worker.start()
        try:
            n = opts.calls
            unknown = [
                DecideRequest(f"U{i:07d}", Channel.WEB, request_id=f"{i:08x}-0000-4000-8000-000000000000")
                for i in range(n)
            ]
            await phase(client, worker, "no-offer calls with a request id (unknown customers)", unknown)
            bare = [DecideRequest(f"V{i:07d}", Channel.WEB) for i in range(n)]
            await phase(client, worker, "no-offer calls without a request id (unknown customers)", bare)
            awarded = [
                DecideRequest(
                    f"C{i:07d}",
                    Channel.WEB,
                    context=dict(DEFAULT_CONTEXT),
                    events=tuple(DEFAULT_EVENTS),
                    request_id=f"{i:08x}-0000-4000-8000-000000000001",
                )
                for i in range(n)
            ]
            await phase(client, worker, "decisions for known customers with a request id", awarded)
        finally:
            await worker.stop(grace=0.5)


def redis_parser(doc: str | None, customers: int) -> argparse.ArgumentParser:
    """The options of a script that measures a private redis-server (this one, loadtest/sizing.py)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-server", default=None, help="redis-server binary (default: the embedded one)")
    parser.add_argument("--customers", type=int, default=customers)
    return parser


def run_measurement(
    parser: argparse.ArgumentParser, measure: Callable[[argparse.Namespace], Coroutine[Any, Any, None]]
) -> int:
    opts = parser.parse_args()
    opts.redis_server = opts.redis_server or find_redis_server()
    asyncio.run(measure(opts))
    return 0


def main() -> int:
    parser = redis_parser(__doc__, customers=100_000)
    parser.add_argument("--calls", type=int, default=5_000)
    return run_measurement(parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
