"""The fault suite: `python -m loadtest.faults [--quick] [--only NAME ...] [--out FILE]`.

Each scenario gets its own redis-server and `nbo serve --workers 2` (see env.py), injects its
fault under gRPC load and measures what the issue-10 targets ask for. The markdown report is
written to --out and printed; the server and Redis logs stay in a directory next to it.
Exit status 0 when every scenario ran (whether or not it met its targets), 1 if one crashed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from loadtest.faults import edge_faults, redis_faults, server_faults
from loadtest.faults.env import Env, start_env
from loadtest.faults.report import Result, machine, render

DEFAULT_OUT = Path("loadtest/results/faults.md")


@dataclass(frozen=True)
class Plan:
    quick: bool

    def value(self, full: float, quick: float) -> float:
        return quick if self.quick else full


@dataclass
class Suite:
    plan: Plan
    saturation: float = 0.0  # measured once, shared by overload and deadlines
    saturation_notes: tuple[str, ...] = ()

    async def sat(self, env: Env) -> float:
        if not self.saturation:
            best, notes = await server_faults.saturation(env, self.plan.value(4.0, 2.0))
            self.saturation, self.saturation_notes = max(best, 1.0), tuple(notes)
        return self.saturation


Scenario = Callable[[Suite, Env], Awaitable[Result]]


async def _overload(suite: Suite, env: Env) -> Result:
    sat = await suite.sat(env)
    res = await server_faults.overload(env, sat, duration=suite.plan.value(10.0, 4.0))
    res.notes.append("saturation ramp (closed loop): " + "; ".join(suite.saturation_notes))
    return res


async def _deadlines(suite: Suite, env: Env) -> Result:
    sat = await suite.sat(env)
    return await server_faults.deadlines(env, sat, duration=suite.plan.value(8.0, 4.0))


async def _tight_deadlines(suite: Suite, env: Env) -> Result:
    sat = await suite.sat(env)
    return await server_faults.deadlines(env, sat, deadline=0.005, duration=suite.plan.value(8.0, 4.0), load=1.0)


SCENARIOS: dict[str, Scenario] = {
    "redis-pause": lambda s, env: redis_faults.redis_pause(env, pause=s.plan.value(5.0, 2.0)),
    "redis-restart": lambda s, env: redis_faults.redis_restart(env, down_for=s.plan.value(60.0, 5.0)),
    "worker-kill": lambda s, env: server_faults.worker_kill(env, gap=s.plan.value(10.0, 7.0)),
    "overload": _overload,
    "deadlines": _deadlines,
    "tight-deadlines": _tight_deadlines,
    "fuzz": lambda s, env: server_faults.fuzz_decide(env, n=int(s.plan.value(100_000, 2_000))),
    "edges": lambda s, env: edge_faults.edges(env),
}


async def run_one(suite: Suite, name: str, work: Path) -> Result:
    started = time.monotonic()
    print(f"== {name}", file=sys.stderr, flush=True)
    env = None
    try:
        env = await asyncio.to_thread(start_env, work / name)
        res = await SCENARIOS[name](suite, env)
    except Exception as err:  # one broken scenario must not hide the others' figures
        last = (str(err).strip().splitlines() or [""])[-1][:300]  # the whole traceback is on stderr
        res = Result(name, "did not complete", error=f"{type(err).__name__}: {last}")
        traceback.print_exc()
    finally:
        if env is not None:
            await asyncio.to_thread(env.stop)
    res.seconds = time.monotonic() - started
    if env is not None:
        res.notes.append(f"server log: {env.server.stderr_path}")
    return res


async def main_async(names: list[str], plan: Plan, out: Path) -> int:
    header = machine() + f"; {'quick' if plan.quick else 'full'} run"
    work = out.with_suffix("")  # loadtest/results/faults/<scenario>/: logs and data
    shutil.rmtree(work, ignore_errors=True)
    suite = Suite(plan)
    results = [await run_one(suite, name, work) for name in names]
    text = render(results, header)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)  # noqa: ASYNC240
    print(text)
    return 1 if any(r.error for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m loadtest.faults", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="shorter outages and runs (about 2 minutes in all)")
    ap.add_argument("--only", nargs="+", choices=list(SCENARIOS), metavar="NAME", help=", ".join(SCENARIOS))
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the report (default {DEFAULT_OUT})")
    opts = ap.parse_args(argv)
    return asyncio.run(main_async(opts.only or list(SCENARIOS), Plan(opts.quick), opts.out))


if __name__ == "__main__":
    sys.exit(main())
