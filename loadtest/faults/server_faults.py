"""Scenarios that hit the server: `worker-kill`, `overload`, `deadlines`, `fuzz`."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import resource
import signal
import time
from collections import Counter

import grpc

from loadtest.faults.driver import Call, closed_loop, fuzz, open_loop, random_payloads, run_open_loop
from loadtest.faults.env import BUDGETED, KEYS, Env, budget_counter, settled_stream
from loadtest.faults.report import Result, codes, ms, pct, percentile
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.gen.nbo.v1 import decisioning_pb2_grpc as pb_grpc

RATE = 200.0


async def _replaced_after(env: Env, index: int, old_pid: int, killed_at: float, limit: float) -> float:
    """Seconds from the kill until a new `worker <index> (pid ...) serving` line (NaN: never)."""
    while time.monotonic() - killed_at < limit:
        if env.server.worker_pids().get(index, old_pid) != old_pid:
            return time.monotonic() - killed_at
        await asyncio.sleep(0.02)
    return float("nan")


async def worker_kill(env: Env, gap: float = 10.0) -> Result:
    """SIGKILL worker 0, then (gap seconds later) worker 1, under open-loop traffic."""
    res = Result("worker-kill", f"SIGKILL of worker 0, then worker 1, at {RATE:.0f} req/s")
    lead = 3.0
    start = time.monotonic() + 1.0
    load = asyncio.create_task(open_loop(env.server.target, RATE, lead + 2 * gap, 5.0, env.customers, start_at=start))
    await asyncio.sleep(start + lead - time.monotonic())
    kills: list[float] = []
    for index in (0, 1):
        pid = env.server.worker_pids().get(index)
        if pid is None:
            res.check(f"worker {index} found in the server log", "no `worker N (pid P) serving` line", False)
            continue
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        kills.append(killed_at)
        after = await _replaced_after(env, index, pid, killed_at, gap)
        res.values[f"replaced_{index}"] = after
        res.check(
            f"worker {index} (pid {pid}) replaced within 5 s",
            "never" if math.isnan(after) else f"{after:.2f} s",
            after <= 5.0,
        )
        await asyncio.sleep(max(0.0, killed_at + gap - time.monotonic()))
    calls = await load
    failed = [c for c in calls if not c.ok]
    res.check(
        "failed calls under 1 %",
        f"{pct(len(failed), len(calls))} ({len(failed)} of {len(calls)}: {codes(c.code for c in failed)})",
        len(failed) < 0.01 * len(calls),
    )
    alive = env.server.proc is not None and env.server.proc.poll() is None
    res.values.update(failed=len(failed), calls=len(calls), parent_alive=alive)
    res.check("the server (parent) still running", "yes" if alive else "no", alive)
    res.info("degraded answers", str(sum(c.degraded for c in calls)))
    res.info("failed calls by when they were sent", _by_kill(failed, start, kills))
    return res


def _by_kill(failed: list[Call], start: float, kills: list[float]) -> str:
    """Failed calls per period (before the first kill, after each), with the last one's offset."""
    edges = [start, *kills, float("inf")]
    parts = []
    for i, (lo, hi) in enumerate(itertools.pairwise(edges)):
        some = [c.sent - lo for c in failed if lo <= c.sent < hi]
        label = "before the first kill" if i == 0 else f"after kill {i}"
        parts.append(f"{label}: {len(some)}" + (f" (last sent +{max(some):.2f} s)" if some and i else ""))
    return "; ".join(parts)


async def saturation(env: Env, step: float, levels: tuple[int, ...] = (8, 32, 96)) -> tuple[float, list[str]]:
    """Best normal answers per second over a short closed-loop ramp (5 s deadline)."""
    best, notes = 0.0, []
    for level in levels:
        cpu = time.process_time()
        calls = await closed_loop(env.server.target, level, step, 5.0, env.customers)
        rate = sum(c.normal for c in calls) / step
        driver = (time.process_time() - cpu) / step  # the driver's own share of the machine
        notes.append(
            f"{level} callers: {rate:.0f} normal/s, p50 {ms(percentile([c.latency for c in calls], 50))}, "
            f"driver {driver:.2f} cores"
        )
        best = max(best, rate)
    return best, notes


async def overload(env: Env, sat: float, duration: float = 10.0, procs: int = 2) -> Result:
    res = Result("overload", f"open loop at 3x saturation ({3 * sat:.0f} req/s), 2 s deadline")
    cpu, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    calls = await run_open_loop(
        env.server.target, 3 * sat, duration, 2.0, env.customers, procs=procs, start_at=time.monotonic() + 5.0
    )
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    driver = (used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime) / (time.monotonic() - wall)
    res.info("driver CPU (its processes, start-up and the 5 s wait included)", f"{driver:.2f} cores")
    span = max(c.sent for c in calls) - min(c.sent for c in calls) if calls else 0.0
    res.info("calls sent (achieved rate)", f"{len(calls)} ({len(calls) / span if span else 0:.0f}/s)")
    good = sum(c.normal for c in calls) / duration
    res.check(
        "goodput (normal answers/s) at least 90 % of saturation",
        f"{good:.0f}/s = {pct(good, sat)} of {sat:.0f}/s",
        good >= 0.9 * sat,
    )
    shed = [c.latency for c in calls if c.code == "RESOURCE_EXHAUSTED"]
    res.check(
        "shed calls (RESOURCE_EXHAUSTED) answered in under 5 ms p99",
        f"{len(shed)} shed, p99 {ms(percentile(shed, 99))}",
        bool(shed) and percentile(shed, 99) < 0.005,
    )
    refused = [c.latency for c in calls if c.code == "CANCELLED"]
    res.info(
        "calls refused by gRPC's core for max_pending_rpcs (it answers CANCELLED), latency",
        f"{len(refused)}, p50 {ms(percentile(refused, 50))}, p99 {ms(percentile(refused, 99))}",
    )
    ok = [c for c in calls if c.ok]
    res.check(
        "DEGRADED answers under 50 % of OK answers",
        pct(sum(c.degraded for c in ok), len(ok)),
        sum(c.degraded for c in ok) < 0.5 * max(1, len(ok)),
    )
    res.info("status codes", codes(c.code for c in calls))
    res.info(
        "OK answers latency",
        f"p50 {ms(percentile([c.latency for c in ok], 50))}, p99 {ms(percentile([c.latency for c in ok], 99))}",
    )
    return res


def _flagged_undelivered(record: dict[str, object]) -> bool:
    """A log record marked as not delivered to its caller (`undelivered: true`)."""
    return bool(record.get("undelivered"))


async def deadlines(
    env: Env, sat: float, deadline: float = 0.3, duration: float = 8.0, procs: int = 2, *, load: float = 3.0
) -> Result:
    """`load` x saturation with every call's deadline `deadline`: at 3x and 300 ms the calls queue
    past it; at 1x and a few milliseconds the deadline falls inside the decision itself."""
    rate = max(load * sat, 300.0)
    name = "deadlines" if load == 3.0 else "tight-deadlines"
    res = Result(name, f"{deadline * 1000:.0f} ms deadline at {rate:.0f} req/s ({load:g}x saturation)")
    with env.redis.client() as client:
        counter0 = budget_counter(client)
        last = client.xrevrange(KEYS.decision_stream, count=1)
        after_id = last[0][0] if last else b"0-0"
        calls = await run_open_loop(
            env.server.target, rate, duration, deadline, env.customers, procs=procs, start_at=time.monotonic() + 5.0
        )
        # the log writers flush what they hold: wait until the stream stops growing
        records = await asyncio.to_thread(settled_stream, client, KEYS.decision_stream, 3.0, 60.0, after_id)
        counter = budget_counter(client) - counter0
    awarded = [r for r in records if BUDGETED in r["chosen"]]
    delivered = {c.decision_id for c in calls if c.ok and BUDGETED in c.offers}
    flagged = [r for r in awarded if _flagged_undelivered(r)]
    neither = [r for r in awarded if r["decision_id"] not in delivered and not _flagged_undelivered(r)]
    res.info("calls", f"{len(calls)}: {codes(c.code for c in calls)}")
    res.check(
        "leaked reservations (counter − log) = 0",
        f"counter {counter}, log {len(awarded)}: {counter - len(awarded)}",
        counter == len(awarded),
    )
    res.check(
        "log = delivered + undelivered (every logged award either reached its caller or is flagged)",
        f"log {len(awarded)}, delivered {len(delivered)}, flagged undelivered {len(flagged)}, neither {len(neither)}",
        not neither and len(awarded) == len(delivered) + len(flagged),
    )
    res.info(
        "flagged undelivered although the caller got it (the server's and the caller's clocks disagree at the edge)",
        str(sum(r["decision_id"] in delivered for r in flagged)),
    )
    expired = [c for c in calls if c.code == "DEADLINE_EXCEEDED"]
    res.info(
        "decision records with no OK answer (the caller had gone)",
        str(sum(r["decision_id"] not in {c.decision_id for c in calls if c.ok} for r in records)),
    )
    res.info("expired calls", f"{len(expired)} ({pct(len(expired), len(calls))})")
    return res


async def fuzz_decide(env: Env, n: int = 100_000, seed: int = 1) -> Result:
    res = Result("fuzz", f"{n:,} random byte payloads as Decide messages")
    before_lines, before_size = len(env.server.worker_lines()), env.server.stderr_size()
    started = time.monotonic()
    got = await fuzz(env.server.target, random_payloads(n, seed))
    took = time.monotonic() - started
    count = Counter(got)
    res.values.update(count)
    res.info("status codes", codes(got))
    for code in ("UNKNOWN", "INTERNAL"):
        res.check(f"{code} answers = 0", str(count[code]), not count[code])
    await asyncio.sleep(1.0)  # a worker that died needs a moment to show up
    restarts = len(env.server.worker_lines()) - before_lines
    died = env.server.stderr_text().count("died with exit code")
    res.values.update(restarts=restarts, died=died)
    res.check("no worker restarted", f"{restarts} new worker lines, {died} deaths logged", not restarts and not died)
    growth = env.server.stderr_size() - before_size
    res.info("server log growth", f"{growth / 1e6:.2f} MB ({growth / max(1, n):.0f} bytes per payload)")
    res.info("fuzz rate", f"{n / took:.0f} payloads/s")
    async with grpc.aio.insecure_channel(env.server.target) as channel:
        r = await pb_grpc.DecisioningStub(channel).Decide(  # type: ignore[no-untyped-call]
            pb.DecideRequest(customer_id=env.customers[0], channel=pb.WEB)
        )
    res.check("a valid Decide afterwards is answered normally", "degraded" if r.degraded else "normal", not r.degraded)
    return res
