"""Scenarios that take Redis away: `redis-pause` (SIGSTOP/SIGCONT) and `redis-restart` (SIGKILL, down,
start again from its append-only file)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass

import grpc

from loadtest.faults.driver import Call, open_loop, report_outcome
from loadtest.faults.env import BUDGETED, KEYS, NBO, Env, budget_counter, settled_stream
from loadtest.faults.report import Result, codes, ms, pct, percentile
from server.config import Settings
from server.gen.nbo.v1 import decisioning_pb2_grpc as pb_grpc

RATE = 200.0
LEAD = 3.0  # seconds of normal traffic before the fault


@dataclass(frozen=True)
class Window:
    start: float  # monotonic
    end: float

    def sent_in(self, c: Call) -> bool:
        return self.start <= c.sent < self.end


async def redis_pause(env: Env, pause: float = 5.0, after: float = 4.0) -> Result:
    res = Result("redis-pause", f"Redis SIGSTOP {pause:.0f} s at {RATE:.0f} req/s")
    timeout = Settings().redis_timeout_seconds
    start = time.monotonic() + 1.0
    load = asyncio.create_task(
        open_loop(env.server.target, RATE, LEAD + pause + after, 5.0, env.customers, start_at=start)
    )
    await asyncio.sleep(start + LEAD - time.monotonic())
    env.redis.signal(signal.SIGSTOP)
    down = Window(time.monotonic(), 0.0)
    await asyncio.sleep(pause)
    env.redis.signal(signal.SIGCONT)
    down = Window(down.start, time.monotonic())
    calls = await load

    during = [c for c in calls if down.sent_in(c)]
    lat = [c.latency for c in during]
    res.info("calls sent while Redis was paused", f"{len(during)}: {codes(c.code for c in during)}")
    res.info("answers while paused: degraded", pct(sum(c.degraded for c in during), len(during)))
    res.check(
        f"every answer while paused within redis_timeout_seconds + 20 ms = {ms(timeout + 0.02)}",
        f"p50 {ms(percentile(lat, 50))}, p99 {ms(percentile(lat, 99))}, max {ms(max(lat, default=float('nan')))}",
        bool(lat) and max(lat) <= timeout + 0.02,
    )
    unchecked = [c for c in during if c.received < down.end and BUDGETED in c.offers]
    res.check("budgeted awards answered while Redis was down", f"{len(unchecked)}", not unchecked)
    res.values.update(during=len(during), unchecked=len(unchecked), failed=sum(not c.ok for c in calls))
    back = [c for c in calls if c.received >= down.end and c.normal]
    first = min((c.received for c in back), default=float("nan")) - down.end
    res.check("first normal answer after SIGCONT within 1 s", ms(first), first <= 1.0)
    late = [c for c in calls if c.sent >= down.end and not c.normal]
    res.info("calls sent after SIGCONT not answered normally", f"{len(late)} ({codes(c.code for c in late)})")
    res.notes.append(f"redis_timeout_seconds {timeout}; {len(calls)} calls in all: {codes(c.code for c in calls)}")
    return res


async def _outcomes(target: str, calls: list[Call], until: float, sent: list[tuple[str, str, str]]) -> None:
    """PRESENTED outcomes at ~20/s for decisions already answered, each once, until `until`."""
    reported: set[str] = set()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.DecisioningStub(channel)  # type: ignore[no-untyped-call]
        while time.monotonic() < until:
            fresh = [c for c in calls if c.latency and c.normal and c.offers and c.decision_id not in reported]
            if fresh:
                c = fresh[-1]
                reported.add(c.decision_id)
                sent.append((c.decision_id, c.offers[0], await report_outcome(stub, c.decision_id, c.offers[0])))
            await asyncio.sleep(0.05)


async def redis_restart(env: Env, down_for: float = 60.0, after: float = 5.0) -> Result:
    res = Result("redis-restart", f"Redis SIGKILL, down {down_for:.0f} s, restarted (AOF) at {RATE:.0f} req/s")
    start = time.monotonic() + 1.0
    total = LEAD + down_for + after
    calls: list[Call] = []
    outcomes: list[tuple[str, str, str]] = []
    load = asyncio.create_task(
        open_loop(env.server.target, RATE, total, 5.0, env.customers, start_at=start, sink=calls)
    )
    reporter = asyncio.create_task(_outcomes(env.server.target, calls, start + total, outcomes))
    await asyncio.sleep(start + LEAD - time.monotonic())
    env.redis.kill()
    down = Window(time.monotonic(), 0.0)
    await asyncio.sleep(down_for)
    await asyncio.to_thread(env.redis.start)
    down = Window(down.start, time.monotonic())
    await asyncio.gather(load, reporter)

    during = [c for c in calls if down.sent_in(c)]
    res.info(
        "calls sent while Redis was down",
        f"{len(during)}: {codes(c.code for c in during)}; degraded {sum(c.degraded for c in during)}",
    )
    with env.redis.client() as client:
        records = await asyncio.to_thread(settled_stream, client, KEYS.decision_stream, 5.0, 120.0)
        outcome_records = settled_stream(client, KEYS.outcome_stream, 1.0, 30.0)
        counter = budget_counter(client)
    logged = {str(r["decision_id"]) for r in records}
    for label, answered in (
        ("normal", {c.decision_id for c in calls if c.normal}),
        ("degraded", {c.decision_id for c in calls if c.ok and c.degraded and c.decision_id}),
    ):
        lost = answered - logged
        res.check(
            f"{label} decisions answered but missing from the decision log", f"{len(lost)} of {len(answered)}", not lost
        )
    recorded = {(d, o) for d, o, status in outcomes if status == "recorded"}
    in_log = {(str(r["decision_id"]), str(r["offer_id"])) for r in outcome_records}
    res.check(
        "outcomes answered `recorded` but missing from the outcome log",
        f"{len(recorded - in_log)} of {len(recorded)}",
        not recorded - in_log,
    )
    res.info("outcome calls", codes(status for _, _, status in outcomes))
    logged_awards = sum(BUDGETED in r["chosen"] for r in records)
    res.check(
        "budget counter = budgeted awards in the log",
        f"counter {counter}, log {logged_awards}",
        counter == logged_awards,
    )
    lowered, said = await asyncio.to_thread(_reconcile_lowers, env)
    res.check("`nbo budgets reconcile --dry-run` proposes lowering no counter", f"{lowered} ({said})", not lowered)
    res.notes.append(f"{len(calls)} calls in all: {codes(c.code for c in calls)}")
    return res


def _reconcile_lowers(env: Env) -> tuple[int, str]:
    """How many counters `nbo budgets reconcile --dry-run` would lower, and its last line."""
    run = subprocess.run(
        [*NBO, "budgets", "reconcile", "--dry-run"],
        env={**os.environ, "REDIS_URL": env.redis.url},
        capture_output=True,
        text=True,
        check=False,
    )
    # its drift table ends each row with the difference, signed: a minus lowers a counter
    lowered = sum(bool(re.search(r"\s-\d+\s*$", line)) for line in run.stdout.splitlines())
    last = (run.stdout.strip().splitlines() or run.stderr.strip().splitlines() or [""])[-1]
    return lowered, f"exit {run.returncode}: {last[:120]}"
