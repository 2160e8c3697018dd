"""The production decision in-process: `DecisionService.decide` as a worker runs it, without gRPC.

    .venv/bin/python loadtest/bench_decide.py [--offers 100] [--decisions 3000] [--concurrency 1,8]
                                              [--profile] [--top 40]

The production mix's set-up (loadtest/production.py: 10,000 customers, the --production catalog,
a LightGBM model trained on a synthetic log and published, bandit on, budgets) on a private
redis-server; a real Worker's service, reloaders and log writer (the model compiled with lleaves as
in `nbo serve`); then decisions for the Zipf-drawn web and call-centre customers of the production
mix, one at a time (the latency of the pipeline alone) and `concurrency` at once (decisions per
second of one core). `--profile` adds a cProfile of the sequential run, by own and cumulative time:
the profile this issue's speed-ups were chosen from.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtest import h2mix, production  # noqa: E402
from server.app import Worker  # noqa: E402
from server.config import Settings  # noqa: E402
from server.domain import Channel, DecideRequest  # noqa: E402
from server.state import catalog_store  # noqa: E402
from server.state.embedded_redis import EmbeddedRedis  # noqa: E402
from server.state.keys import Keys  # noqa: E402
from server.state.redis_client import sync_client  # noqa: E402


def requests(opts: argparse.Namespace, catalog: Path) -> list[DecideRequest]:
    pool = h2mix.eligible_customers(opts.customers, opts.seed, catalog)
    drawn = h2mix.zipf_draw(pool, opts.draws, opts.zipf, opts.seed)
    every = opts.call_centre_every
    return [
        DecideRequest(c, Channel.CALL_CENTRE, max_offers=3, explain=True)
        if (i + 1) % every == 0
        else DecideRequest(c, Channel.WEB)
        for i, c in enumerate(drawn)
    ]


def publish(url: str, settings: Settings, catalog: Path) -> None:
    client = sync_client(url, settings)
    catalog_store.publish(client, Keys(settings.key_prefix), catalog.read_text(), source=str(catalog))
    client.close()


async def run(opts: argparse.Namespace, url: str, catalog: Path) -> None:
    settings = Settings(redis_url=url, model_cache_dir=opts.work / "models")
    publish(url, settings, catalog)
    worker = Worker(settings, url, 0)
    for poller in (worker.reloader, worker.model_reloader, worker.arms_reloader, worker.id_secret):
        await poller.check()
    worker.writer.start()
    service = worker.service
    assert service.live is not None
    scorer = service.live.scorer
    print(f"scorer {type(scorer).__name__} {scorer.version} compiled={getattr(scorer, 'compiled', None)}")
    reqs = requests(opts, catalog)
    for i in range(300):  # warm-up: caches, lazy imports, the first connections
        await service.decide(reqs[i % len(reqs)])
    lat = []
    profiler = cProfile.Profile() if opts.profile else None
    cpu0 = time.process_time()
    for i in range(opts.decisions):
        if profiler:
            profiler.enable()
        t = time.perf_counter_ns()
        await service.decide(reqs[i % len(reqs)])
        lat.append(time.perf_counter_ns() - t)
        if profiler:
            profiler.disable()
    lat.sort()
    p50, p99 = lat[len(lat) // 2] / 1e6, lat[int(len(lat) * 0.99)] / 1e6
    mean, cpu = statistics.fmean(lat) / 1e6, (time.process_time() - cpu0) / opts.decisions * 1e3
    # CPU time of this process (Redis's not included): steadier than wall time on a shared machine
    print(f"sequential: {opts.decisions} decisions, mean {mean:.3f} ms, p50 {p50:.3f}, p99 {p99:.3f}; CPU {cpu:.3f} ms")
    for conc in opts.concurrency:
        t0, done = time.perf_counter(), 0

        async def one(start: int, conc: int = conc) -> None:
            nonlocal done
            for i in range(start, opts.decisions, conc):
                await service.decide(reqs[i % len(reqs)])
                done += 1

        await asyncio.gather(*(one(s) for s in range(conc)))
        print(f"{conc} at once: {done / (time.perf_counter() - t0):,.0f} decisions/s on one core")
    await worker.writer.close()
    await worker.store.aclose()
    await worker.client.aclose(close_connection_pool=True)
    if profiler:
        for key in ("tottime", "cumulative"):
            pstats.Stats(profiler).strip_dirs().sort_stats(key).print_stats(opts.top)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--offers", type=int, default=100)
    p.add_argument("--decisions", type=int, default=3000)
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",") if x], default=[1, 8])
    p.add_argument("--profile", action="store_true")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--work", type=Path, default=None, help="keep the set-up here (default: a temporary folder)")
    opts = p.parse_args()
    prod = production.parse(["--sizes", str(opts.offers)])
    for name in ("customers", "seed", "zipf", "call_centre_every", "log_rows"):
        setattr(opts, name, getattr(prod, name))
    opts.draws = 64
    with tempfile.TemporaryDirectory(prefix="nbo-bench-decide-") as tmp:
        opts.work = opts.work or Path(tmp)
        prod.results = opts.work
        opts.work.mkdir(parents=True, exist_ok=True)
        with EmbeddedRedis(opts.work / "redis", persist=False) as redis_server:
            url = redis_server.url
            env = {**os.environ, "REDIS_URL": url}
            catalogs, _ = production.setup(prod, opts.work, env)
            if opts.uvloop:
                import uvloop

                uvloop.install()
            asyncio.run(run(opts, url, catalogs[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
