"""gRPC load for the fault scenarios: open-loop at a fixed rate, closed-loop, raw-byte fuzzing.

Open loop means call i is sent at start + i / rate whether or not earlier calls have answered,
so a stalled server sees the traffic pile up the way real callers would make it. Every call is
recorded (send time on the system-wide monotonic clock, latency, status code, degraded flag,
offers, decision id), so a scenario can line the calls up with the faults it injected.

A rate a single Python process cannot send is split over `procs` driver processes (spawned, each
with its own event loop and channels), all starting at the same monotonic instant.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import grpc

from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.gen.nbo.v1 import decisioning_pb2_grpc as pb_grpc

DECIDE_PATH = "/nbo.v1.Decisioning/Decide"
# a connection per channel (not one shared by all), so SO_REUSEPORT spreads them over the workers
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


@dataclass(slots=True)
class Call:
    sent: float  # time.monotonic() when sent
    latency: float = 0.0
    code: str = ""  # grpc.StatusCode name
    degraded: bool = False
    offers: tuple[str, ...] = ()
    decision_id: str = ""
    customer_id: str = ""

    @property
    def received(self) -> float:
        return self.sent + self.latency

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    @property
    def normal(self) -> bool:
        """Answered OK and not degraded."""
        return self.code == "OK" and not self.degraded


def _code(err: grpc.aio.AioRpcError) -> str:
    return str(err.code().name)


async def _decide(stub: pb_grpc.DecisioningStub, call: Call, deadline: float) -> None:
    try:
        r = await stub.Decide(
            pb.DecideRequest(customer_id=call.customer_id, channel=pb.WEB, max_offers=1), timeout=deadline
        )
        call.code, call.degraded, call.decision_id = "OK", r.degraded, r.decision_id
        call.offers = tuple(o.offer_id for o in r.offers)
    except grpc.aio.AioRpcError as err:
        call.code = _code(err)
    call.latency = time.monotonic() - call.sent


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def open_loop(
    target: str,
    rate: float,
    duration: float,
    deadline: float,
    customers: Sequence[str],
    *,
    seed: int = 1,
    start_at: float = 0.0,
    channels: int = 16,
    sink: list[Call] | None = None,
) -> list[Call]:
    """Decide calls at `rate` per second for `duration` seconds from `start_at` (monotonic).

    Calls are appended to `sink` (if given) as they are sent, so a scenario can watch them live."""
    rng = random.Random(seed)
    chans = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(channels)]
    stubs = [pb_grpc.DecisioningStub(ch) for ch in chans]  # type: ignore[no-untyped-call]
    calls: list[Call] = [] if sink is None else sink
    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.gather(*(asyncio.wait_for(ch.channel_ready(), 10) for ch in chans))
        await _sleep_until(start_at)
        start = time.monotonic()
        total = int(rate * duration)
        while len(calls) < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            while len(calls) < due:
                call = Call(sent=time.monotonic(), customer_id=rng.choice(customers))
                calls.append(call)
                tasks.append(asyncio.create_task(_decide(stubs[len(calls) % channels], call, deadline)))
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)
    finally:
        await asyncio.gather(*(ch.close() for ch in chans))
    return calls


async def closed_loop(
    target: str, concurrency: int, duration: float, deadline: float, customers: Sequence[str], *, seed: int = 1
) -> list[Call]:
    """`concurrency` callers, each sending its next call as soon as the last one answers."""
    rng = random.Random(seed)
    chans = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(min(concurrency, 32))]
    calls: list[Call] = []
    try:
        await asyncio.gather(*(asyncio.wait_for(ch.channel_ready(), 10) for ch in chans))
        end = time.monotonic() + duration

        async def caller(i: int) -> None:
            stub = pb_grpc.DecisioningStub(chans[i % len(chans)])  # type: ignore[no-untyped-call]
            while time.monotonic() < end:
                call = Call(sent=time.monotonic(), customer_id=rng.choice(customers))
                calls.append(call)
                await _decide(stub, call, deadline)

        await asyncio.gather(*(caller(i) for i in range(concurrency)))
    finally:
        await asyncio.gather(*(ch.close() for ch in chans))
    return calls


def _open_loop_proc(args: tuple[str, float, float, float, list[str], int, float]) -> list[Call]:
    target, rate, duration, deadline, customers, seed, start_at = args
    return asyncio.run(open_loop(target, rate, duration, deadline, customers, seed=seed, start_at=start_at))


def run_open_loop(
    target: str,
    rate: float,
    duration: float,
    deadline: float,
    customers: Sequence[str],
    *,
    procs: int = 1,
    seed: int = 1,
    start_at: float,
) -> Awaitable[list[Call]]:
    """`open_loop` split over `procs` spawned processes; await the result from the event loop."""
    loop = asyncio.get_running_loop()
    pool = ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn"))
    jobs = [
        loop.run_in_executor(
            pool, _open_loop_proc, (target, rate / procs, duration, deadline, list(customers), seed + i, start_at)
        )
        for i in range(procs)
    ]

    async def gather() -> list[Call]:
        try:
            parts = await asyncio.gather(*jobs)
        finally:
            pool.shutdown()
        return sorted((c for part in parts for c in part), key=lambda c: c.sent)

    return gather()


async def fuzz(target: str, payloads: Sequence[bytes], concurrency: int = 64, deadline: float = 10.0) -> list[str]:
    """Send each payload as the raw message of a Decide call; returns the status code names."""
    chans = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(8)]
    codes = [""] * len(payloads)
    next_index = 0
    try:
        await asyncio.gather(*(asyncio.wait_for(ch.channel_ready(), 10) for ch in chans))
        # no serializers: the bytes go on the wire as they are, the response comes back as bytes
        methods: list[Callable[..., Awaitable[bytes]]] = [ch.unary_unary(DECIDE_PATH) for ch in chans]

        async def sender(i: int) -> None:
            nonlocal next_index
            while next_index < len(payloads):
                k, next_index = next_index, next_index + 1
                try:
                    await methods[i % len(methods)](payloads[k], timeout=deadline)
                    codes[k] = "OK"
                except grpc.aio.AioRpcError as err:
                    codes[k] = _code(err)

        await asyncio.gather(*(sender(i) for i in range(concurrency)))
    finally:
        await asyncio.gather(*(ch.close() for ch in chans))
    return codes


def random_payloads(n: int, seed: int = 1, max_len: int = 64) -> list[bytes]:
    """n seeded random byte strings of 1..max_len bytes (almost all invalid protobuf)."""
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(1, max_len)) for _ in range(n)]


async def report_outcome(stub: pb_grpc.DecisioningStub, decision_id: str, offer_id: str) -> str:
    """One PRESENTED outcome; returns 'recorded', 'duplicate' or the error code name."""
    try:
        r = await stub.ReportOutcome(
            pb.ReportOutcomeRequest(decision_id=decision_id, offer_id=offer_id, outcome=pb.PRESENTED), timeout=5
        )
    except grpc.aio.AioRpcError as err:
        return _code(err)
    return "recorded" if r.recorded else "duplicate" if r.duplicate else "not recorded"
