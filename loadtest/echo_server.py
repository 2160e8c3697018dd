"""The load-test baseline: nbo.v1.Decisioning/Decide answered with a constant, without any work.

Same stack as the real server (grpc.aio on uvloop, N worker processes sharing the port with
SO_REUSEPORT, the generated servicer so requests are parsed and responses serialised), but the
handler returns one prebuilt DecideResponse: no Redis, no catalog, no rules. What h2load gets
from this server is the ceiling the Python gRPC stack allows on this machine.

    .venv/bin/python loadtest/echo_server.py --port 50070 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.gen.nbo.v1 import decisioning_pb2_grpc as pb_grpc


def constant_response() -> Any:
    return pb.DecideResponse(
        decision_id="echo-0000000000",
        offers=[
            pb.RankedOffer(
                offer_id="echo_offer",
                campaign_id="echo",
                rank=1,
                propensity=0.2,
                expected_value=10.0,
                score=12.0,
                selection_probability=1.0,
                reasons=["Campaign: echo (ad hoc)"],
                title="Echo offer",
                campaign_type="ad_hoc",
            )
        ],
        model_version="echo",
        catalog_version="echo",
    )


class EchoServicer(pb_grpc.DecisioningServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.response = constant_response()

    async def Decide(self, request: Any, context: Any) -> Any:
        return self.response

    async def ReportOutcome(self, request: Any, context: Any) -> Any:
        return pb.ReportOutcomeResponse(recorded=True)


async def _serve(host: str, port: int, index: int) -> None:
    import grpc

    server = grpc.aio.server(options=[("grpc.so_reuseport", 1), ("grpc.keepalive_permit_without_calls", 1)])
    pb_grpc.add_DecisioningServicer_to_server(EchoServicer(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound != port:
        raise SystemExit(f"echo worker {index}: could not bind {host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"echo worker {index} (pid {os.getpid()}) serving on {host}:{port}", flush=True)
    await stop.wait()
    await server.stop(1.0)


def worker_main(host: str, port: int, index: int) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(host, port, index))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50070, help="0 = a free port (printed)")
    parser.add_argument("--workers", type=int, default=2)
    opts = parser.parse_args()
    port = opts.port or free_port()
    # spawn, not fork: gRPC must not be initialised before the worker processes exist
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=worker_main, args=(opts.host, port, i), name=f"echo-worker-{i}") for i in range(opts.workers)
    ]

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.start()
    print(f"echo server on {opts.host}:{port} with {opts.workers} worker(s)", flush=True)
    code = 0
    for p in procs:
        p.join()
        if p.exitcode not in (0, -signal.SIGTERM):
            code = 1
            forward(signal.SIGTERM, None)
    return code


if __name__ == "__main__":
    sys.exit(main())
