"""The request mix of the production load test, and running it with h2load.

h2load sends one body (`-d FILE`) on every request of a process, so the mix is made of
processes: each h2load process is one customer and one request kind, the customers drawn with
replacement from a Zipf law over the eligible customers (P(rank r) ~ 1/r^s), so a few hot
customers take many processes and the tail a few each. Kinds: web top-1 (the body of
make_body.py) and call-centre top-3 with explain=true, in a fixed ratio of processes.
Every process gets the same connections and streams, so the request ratio is close to the
process ratio (a slower kind gets slightly fewer requests in a closed loop).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from loadtest.make_body import frame, request
from loadtest.percentiles import parse_h2load, summarize
from server.pipeline.control_groups import in_holdout
from training.population import make_population

PATH_RPC = "/nbo.v1.Decisioning/Decide"
HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]


@dataclass(frozen=True)
class Body:
    customer: str
    kind: str  # "web" | "call_centre"
    path: Path


def eligible_customers(population: int, seed: int, catalog: Path) -> list[str]:
    """Customers with web and call-centre consent, outside the universal control group (so
    both kinds of request can get offers), in population order (= Zipf rank order)."""
    spec = yaml.safe_load(catalog.read_text())
    cg, consent = spec.get("control_group") or {}, spec.get("consent") or {}
    pop = make_population(population, seed=seed)
    cols = [pop.columns[consent[ch]] for ch in ("web", "call_centre")]
    return [
        cid
        for i, cid in enumerate(pop.customer_ids)
        if all(float(c[i]) == 1.0 for c in cols)
        and not in_holdout(cg.get("salt", "nbo"), cid, float(cg.get("fraction", 0.0)))
    ]


def zipf_draw(customers: list[str], k: int, s: float, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(customers) + 1) ** s
    picks = rng.choice(len(customers), size=k, p=weights / weights.sum())
    return [customers[i] for i in picks]


def write_bodies(customers: list[str], call_centre_every: int, out_dir: Path) -> list[Body]:
    """One body per process; every `call_centre_every`-th process is a call-centre one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bodies = []
    for i, cid in enumerate(customers):
        web = (i + 1) % call_centre_every != 0
        if web:
            msg = request(cid)
        else:
            msg = request(cid, channel="call_centre", max_offers=3, context={}, events=[], placement="")
            msg.explain = True
        path = out_dir / f"body_{i:02d}_{'web' if web else 'cc'}.bin"
        path.write_bytes(frame(msg.SerializeToString()))
        bodies.append(Body(cid, "web" if web else "call_centre", path))
    return bodies


def run(
    bodies: list[Body],
    port: int,
    prefix: Path,
    *,
    streams: int,
    duration: float | None = None,
    warmup: float = 0.0,
    requests: int | None = None,
    rps: float | None = None,
) -> dict[str, Any]:
    """One h2load process per body (1 connection each), side by side. Returns the merged
    per-request summary (percentiles.summarize), h2load's own counts summed, and the
    generator's CPU (user + system seconds of all h2load processes, via /usr/bin/time)."""
    procs = []
    for i, body in enumerate(bodies):
        cmd = ["h2load", "-c", "1", "-m", str(streams), "-t", "1", *HEADERS, "-d", str(body.path)]
        cmd += ["-n", str(requests)] if requests else ["-D", f"{duration:g}"]
        if warmup and not requests:
            cmd += ["--warm-up-time", f"{warmup:g}"]
        if rps:
            cmd += ["--rps", f"{rps:g}"]
        cmd += ["--log-file", f"{prefix}.log.{i}", f"http://127.0.0.1:{port}{PATH_RPC}"]
        timed = ["/usr/bin/time", "-f", "%U %S %e", "-o", f"{prefix}.time.{i}", *cmd]
        if rps and i:
            # Open loop: each process sends on its own 1/rps timer; started together, all
            # timers would fire at once (bursts of len(bodies)). Spread their phases instead.
            time.sleep(1.0 / rps / len(bodies))
        out = open(f"{prefix}.out.{i}", "w")  # noqa: SIM115 - closed after the wait below
        procs.append((subprocess.Popen(timed, stdout=out, stderr=subprocess.STDOUT), out))
    t0 = time.monotonic()
    for proc, out in procs:
        proc.wait()
        out.close()
    elapsed = time.monotonic() - t0
    res = summarize(Path(f"{prefix}.log.{i}") for i in range(len(bodies)))
    counts: dict[str, int] = {}
    cpu = 0.0
    for i in range(len(bodies)):
        for key, val in parse_h2load(Path(f"{prefix}.out.{i}").read_text()).items():
            if isinstance(val, int):
                counts[key] = counts.get(key, 0) + val
        user, system, _ = Path(f"{prefix}.time.{i}").read_text().split()[-3:]
        cpu += float(user) + float(system)
    res["h2load"] = counts
    res["generator_cpu_s"] = round(cpu, 2)
    res["generator_cores"] = round(cpu / elapsed, 2) if elapsed > 0 else None
    Path(f"{prefix}.json").write_text(json.dumps(res))
    return res
