"""`edges`: the issue-10 rows that need no load: a second server on a live port, request and event
id conflicts, an unknown customer's concurrent repeats, what is counted as invalid, start-up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from loadtest.faults.driver import DECIDE_PATH
from loadtest.faults.env import NBO, Env
from loadtest.faults.report import Result, codes
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.gen.nbo.v1 import decisioning_pb2_grpc as pb_grpc


@dataclass
class Run:
    exit_code: int | None  # None: still running after the wait (then stopped by us)
    banner: str
    stderr: str
    seconds: float
    stop: str = ""  # how it went when we stopped it with SIGTERM


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:
        return []


def _stop(proc: subprocess.Popen[str], grace: float = 30.0) -> str:
    """SIGTERM (which should drain and stop every worker); SIGKILL what is left after `grace` s."""
    kids = _children(proc.pid)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
        said = f"exit {proc.returncode} {time.monotonic() - started:.1f} s after SIGTERM"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        said = f"still running {grace:.0f} s after SIGTERM; killed"
    settle = time.monotonic() + 3.0  # the resource tracker exits just after its parent
    while (left := [k for k in kids if Path(f"/proc/{k}").exists()]) and time.monotonic() < settle:
        time.sleep(0.1)
    for k in left:  # our own children, orphaned: they must not outlive the run
        with contextlib.suppress(OSError):
            os.kill(k, signal.SIGKILL)
    return said + (f"; {len(left)} child process(es) left running (killed)" if left else "")


def _run_serve(args: list[str], env: dict[str, str], cwd: Path, wait: float) -> Run:
    """Start `nbo serve ...`, wait up to `wait` s for its banner or its exit, then stop it."""
    started = time.monotonic()
    with (cwd / "serve.stderr").open("w") as err:
        proc = subprocess.Popen([*NBO, "serve", *args], stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=cwd)
    assert proc.stdout is not None
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline() if proc.stdout else ""), daemon=True)
    reader.start()
    reader.join(wait)  # the banner, or "" once it exited
    code = proc.poll()
    seconds = time.monotonic() - started
    stop = _stop(proc) if code is None else ""
    proc.stdout.close()
    return Run(code, "".join(first).strip(), (cwd / "serve.stderr").read_text(errors="replace"), seconds, stop)


def _err(err: grpc.aio.AioRpcError) -> str:
    return f"{err.code().name}: {err.details()}"


def _refused(err: grpc.aio.AioRpcError) -> bool:
    """The documented refusal of a reused id (docs/api.md); any other error is not one: an
    UNAVAILABLE, say, would leave the caller retrying the same conflicting call."""
    return err.code() == grpc.StatusCode.ALREADY_EXISTS


async def _conflicts(stub: pb_grpc.DecisioningStub, customer: str, res: Result) -> None:
    first = await stub.Decide(pb.DecideRequest(customer_id=customer, channel=pb.WEB, max_offers=1, request_id="edge-1"))
    try:
        again = await stub.Decide(
            pb.DecideRequest(customer_id=customer, channel=pb.CALL_CENTRE, max_offers=3, request_id="edge-1")
        )
        got = f"OK, replayed={again.replayed}, same decision={again.decision_id == first.decision_id}"
        refused = False
    except grpc.aio.AioRpcError as err:
        got, refused = _err(err), _refused(err)
    res.check("same request_id, other channel and max_offers: refused (ALREADY_EXISTS)", got, refused)
    if not first.offers:
        res.check("event_id reuse: the first decision has an offer", "no offer", False)
        return
    offer, event = first.offers[0].offer_id, "edge-event-1"
    await stub.ReportOutcome(
        pb.ReportOutcomeRequest(decision_id=first.decision_id, offer_id=offer, outcome=pb.PRESENTED, event_id=event)
    )
    try:
        r = await stub.ReportOutcome(
            pb.ReportOutcomeRequest(decision_id=first.decision_id, offer_id=offer, outcome=pb.DECLINED, event_id=event)
        )
        got, refused = f"OK, recorded={r.recorded}, duplicate={r.duplicate}", False
    except grpc.aio.AioRpcError as err:
        got, refused = _err(err), _refused(err)
    res.check("event_id reused for another outcome (PRESENTED, then DECLINED): refused (ALREADY_EXISTS)", got, refused)


async def _unknown_repeats(stub: pb_grpc.DecisioningStub, res: Result, n: int = 20) -> None:
    req = pb.DecideRequest(customer_id="nobody-edge", channel=pb.WEB, request_id="edge-unknown")
    answers = await asyncio.gather(*(stub.Decide(req) for _ in range(n)), return_exceptions=True)
    ids = {a.decision_id for a in answers if isinstance(a, pb.DecideResponse)}
    res.check(
        f"unknown customer, {n} concurrent repeats of one request_id: 1 decision id", str(len(ids)), len(ids) == 1
    )


def _invalid_total(env: Env) -> tuple[float, bool]:
    """nbo_invalid_requests_total over both workers, and whether per-code gRPC counters exist."""
    samples = [env.server.metrics(i) for i in range(env.server.workers)]
    total = sum(v for s in samples for k, v in s.items() if k.startswith("nbo_invalid_requests_total"))
    return total, any(k.startswith("grpc_server_handled_total") for s in samples for k in s)


async def _invalid(channel: grpc.aio.Channel, stub: pb_grpc.DecisioningStub, env: Env, res: Result) -> None:
    before, _ = _invalid_total(env)
    bad = [
        stub.Decide(pb.DecideRequest(customer_id="", channel=pb.WEB)),
        stub.Decide(pb.DecideRequest(customer_id=env.customers[0], channel=pb.CHANNEL_UNSPECIFIED)),
        stub.ReportOutcome(pb.ReportOutcomeRequest(decision_id="no-such-decision", offer_id="x", outcome=pb.ACCEPTED)),
        channel.unary_unary(DECIDE_PATH)(b"\x9c"),
    ]
    got = []
    for call in bad:
        try:
            await call
            got.append("OK")
        except grpc.aio.AioRpcError as err:
            got.append(err.code().name)
    await asyncio.sleep(0.5)
    after, per_code = _invalid_total(env)
    res.info("4 bad calls (empty customer, no channel, unknown decision, undecodable)", codes(got))
    res.check(
        "each rejected call counted in nbo_invalid_requests_total",
        f"+{after - before:.0f} of 4",
        after - before == len(bad),
    )
    res.check(
        "per-method, per-code counters (grpc_server_handled_total)", "present" if per_code else "absent", per_code
    )


async def edges(env: Env) -> Result:
    res = Result("edges", "conflicts, invalid input, a second server, start-up")
    res.check(
        "a call sent the moment `serving` is printed is answered", env.server.first_call, env.server.first_call == "OK"
    )
    async with grpc.aio.insecure_channel(env.server.target) as channel:
        stub = pb_grpc.DecisioningStub(channel)  # type: ignore[no-untyped-call]
        await _conflicts(stub, env.customers[1], res)
        await _unknown_repeats(stub, res)
        await _invalid(channel, stub, env, res)
    port = env.server.target.rsplit(":", 1)[1]
    second = env.tmp / "second"
    second.mkdir(exist_ok=True)
    plain = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "NBO_REDIS_URL")}
    run = await asyncio.to_thread(_run_serve, ["--workers", "1", "--port", port], plain, second, 60.0)
    refused = run.exit_code not in (None, 0) and "serving on" not in run.banner
    said = (run.stderr.strip().splitlines() or [""])[-1][:160]
    res.check(
        f"a second `nbo serve` on the live port {port} refuses to start",
        f"exit {run.exit_code} after {run.seconds:.1f} s: {run.banner or said!r}",
        refused,
    )
    quiet = {**os.environ, "REDIS_URL": env.redis.url, "NBO_METRICS_PORT": ""}
    run = await asyncio.to_thread(_run_serve, ["--workers", "1", "--port", "0"], quiet, second, 90.0)
    res.check(
        '`nbo serve` with NBO_METRICS_PORT="" starts',
        run.banner[:100] or f"exit {run.exit_code}",
        "serving on" in run.banner,
    )
    res.check(
        "it stops on SIGTERM within 30 s, leaving no worker",
        run.stop or "not started",
        run.stop.startswith("exit") and "left running" not in run.stop,
    )
    return res
