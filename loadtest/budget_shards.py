"""Budget throughput on a 3-master Redis Cluster: every budget in one slot against one per campaign.

Starts a 3-master cluster (loadtest.redis_cluster), then for each layout runs `--procs` driver
processes for `--seconds`, each keeping `--concurrency` budget reservations in flight through the
server's own code (RedisStateStore.reserve over the cluster's script routing). Every reservation
is a walk of one offer of a random campaign with the checks a budgeted offer has (offer total,
spend and day, campaign total and day; limits far above the traffic, so all are awarded).

Layouts:
- one slot: the layout before issue 15, every counter under `{b}` (a Keys whose budget keys all
  carry that tag), so every reservation runs on the master owning it;
- spread: the server's layout, `{b:<campaign>}`, campaigns spread over the masters;
- spread + channel capacity: the same with an hourly capacity on the channel, whose counter is one
  slot for every award on that channel (the hot spot left).

For each it prints reservations/s and, per master, the scripts it ran and the share of the
measured time its main thread spent running them (INFO commandstats), from which the ceiling of
each layout follows: a master is saturated at 100 %.

    .venv/bin/python -m loadtest.budget_shards --seconds 10 --procs 2 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from loadtest.redis_cluster import LocalCluster
from server.catalog.budgets import DAY, HOUR, TOTAL, UNLIMITED, Check, Period, Reservation
from server.config import Settings
from server.state.keys import Keys
from server.state.redis_client import async_client
from server.state.redis_store import RedisStateStore

PERIOD = Period(day="2027-01-15", hour="2027-01-15T10", day_fraction=0.4)
BIG = 10**12


@dataclass(frozen=True, slots=True)
class OneSlotKeys(Keys):
    """The budget keys of the one-slot layout: every campaign's counters under `{b}`."""

    def budget_total(self, campaign: str) -> str:
        return f"{self.prefix}{{b}}:total"

    def budget_day(self, campaign: str, day: str) -> str:
        return f"{self.prefix}{{b}}:day:{day}"

    def budget_hour(self, channel: str, hour: str) -> str:
        return f"{self.prefix}{{b}}:hour:{hour}"


LAYOUTS = {"one slot": (OneSlotKeys(), False), "spread": (Keys(), False), "spread + channel capacity": (Keys(), True)}


def reservation(campaign: int, capacity: bool) -> Reservation:
    offer, camp = f"o{campaign}", f"c{campaign}"
    checks = [
        Check(TOTAL, f"o:{offer}:n", BIG, 1, "offer total"),
        Check(TOTAL, f"o:{offer}:spend", BIG, 250, "offer spend"),
        Check(DAY, f"o:{offer}:n", BIG, 1, "offer today"),
        Check(DAY, f"o:{offer}:spend", UNLIMITED, 250, "offer spend today"),
        Check(TOTAL, f"c:{camp}:n", BIG, 1, "campaign total"),
        Check(DAY, f"c:{camp}:n", BIG, 1, "campaign today"),
    ]
    if capacity:
        checks.append(Check(HOUR, "ch:web:n", BIG, 1, "web capacity"))
    return Reservation(offer, tuple(checks), camp, "web")


async def _drive(url: str, layout: str, campaigns: int, concurrency: int, until: float, seed: int) -> int:
    keys, capacity = LAYOUTS[layout]
    client = async_client(url, Settings(redis_url=url, redis_cluster=True))
    store = RedisStateStore(client, keys)
    walks = [[reservation(c, capacity)] for c in range(campaigns)]
    rng = random.Random(seed)
    done = 0

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < until:
            got = await store.reserve(PERIOD, 1, rng.choice(walks))
            done += len(got.awarded)

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    await store.aclose()
    await client.aclose()
    return done


def _process(args: tuple[str, str, int, int, float, int]) -> int:
    return asyncio.run(_drive(*args))


def _busy(cluster: LocalCluster) -> list[tuple[int, int]]:
    """(evalsha calls, µs spent in them) per master."""
    out = []
    for i in range(len(cluster.ports)):
        with cluster.node(i) as node:
            stats = node.info("commandstats").get("cmdstat_evalsha", {"calls": 0, "usec": 0})
            out.append((int(stats["calls"]), int(stats["usec"])))
    return out


def run_layout(cluster: LocalCluster, layout: str, opts: argparse.Namespace) -> str:
    cluster.flush()
    for i in range(len(cluster.ports)):
        with cluster.node(i) as node:
            node.config_resetstat()
    # one untimed warm-up second: connections, slot maps and script loading on every master
    warm = opts.procs * [(cluster.url, layout, opts.campaigns, 4, time.monotonic() + 1.0, 0)]
    with multiprocessing.get_context("spawn").Pool(opts.procs) as pool:
        pool.map(_process, warm)
        before = _busy(cluster)
        started = time.monotonic()
        until = started + opts.seconds
        jobs = [
            (cluster.url, layout, opts.campaigns, opts.concurrency, until, opts.seed + p) for p in range(opts.procs)
        ]
        awarded = sum(pool.map(_process, jobs))
        elapsed = time.monotonic() - started
    after = _busy(cluster)
    masters = [
        f"{(a[0] - b[0]) / elapsed:,.0f}/s at {(a[1] - b[1]) / elapsed / 1e4:.1f} %"
        for a, b in zip(after, before, strict=True)
    ]
    return f"| {layout} | {awarded / elapsed:,.0f} | " + " | ".join(masters) + " |"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--procs", type=int, default=2, help="driver processes")
    p.add_argument("--concurrency", type=int, default=64, help="reservations in flight per process")
    p.add_argument("--campaigns", type=int, default=30)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--layouts", nargs="*", default=list(LAYOUTS), choices=list(LAYOUTS))
    opts = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(Path(tmp)) as cluster:
        header = "| layout | awarded/s | " + " | ".join(f"master {i}: scripts, busy" for i in range(3)) + " |"
        lines = [header, "|---|---|---|---|---|"]
        for layout in opts.layouts:
            lines.append(run_layout(cluster, layout, opts))
            print(lines[-1], flush=True)
        with redis.Redis(port=cluster.ports[0]) as node:
            version = node.info("server")["redis_version"]
    print(
        f"\nredis-server {version}, 3 masters; {opts.procs} driver processes x {opts.concurrency} in flight, "
        f"{opts.seconds:g} s per layout, {opts.campaigns} campaigns\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
