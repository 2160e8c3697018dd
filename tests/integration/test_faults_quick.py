"""The short fault suite: three cheap scenarios of `python -m loadtest.faults`, through the same code.

One redis-server and one `nbo serve --workers 2` subprocess for the module; raw-byte fuzzing
(500 payloads), Redis paused 2 s under 200 req/s, then SIGKILL of each worker. Only correctness
outcomes are asserted, never timings (the machine may be shared). The full suite with its timed
targets is `make faults`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.faults.env import Env, start_env
from loadtest.faults.redis_faults import redis_pause
from loadtest.faults.report import Result
from loadtest.faults.server_faults import fuzz_decide, worker_kill


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    started = start_env(Path(tmp_path_factory.mktemp("faults")), customers=1000)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
async def fuzzed(env: Env) -> Result:
    return await fuzz_decide(env, n=500, seed=3)


async def test_fuzz_no_internal_error_and_no_worker_restart(fuzzed: Result) -> None:
    assert fuzzed.values.get("INTERNAL", 0) == 0, fuzzed.rows
    assert fuzzed.values["restarts"] == 0 and fuzzed.values["died"] == 0, fuzzed.rows
    assert sum(fuzzed.values.get(code, 0) for code in ("OK", "INVALID_ARGUMENT", "UNKNOWN", "INTERNAL")) == 500


async def test_fuzz_no_unknown_status(fuzzed: Result) -> None:
    assert fuzzed.values.get("UNKNOWN", 0) == 0


async def test_redis_pause_awards_no_budget_unchecked(env: Env) -> None:
    res = await redis_pause(env, pause=2.0, after=3.0)
    assert res.values["during"] > 0, res.rows
    assert res.values["unchecked"] == 0, res.rows
    assert res.values["failed"] == 0, res.rows  # degraded answers, not errors


async def test_worker_kill_replaces_each_worker(env: Env) -> None:
    res = await worker_kill(env, gap=6.0)
    assert res.values["parent_alive"], res.rows
    # replaced at all within the gap (the 5 s target is the full suite's, a timed one)
    assert not math.isnan(res.values["replaced_0"]), res.rows
    assert not math.isnan(res.values["replaced_1"]), res.rows
    assert res.values["calls"] > 0
