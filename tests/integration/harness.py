"""An in-process server for integration tests: real Redis, real gRPC server, real channel."""

from __future__ import annotations

import asyncio
import csv
import logging
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from server.app import Worker
from server.config import Settings
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.gen.nbo.v1 import decisioning_pb2_grpc as pb_grpc
from server.state.catalog_store import publish
from server.state.feature_store import FeatureStore, read_feature_file
from server.state.keys import Keys
from tests.redis_cluster import cluster_settings, sync_redis

COLUMNS = ("tier", "tenure_months", "churn_risk", "consent_web", "consent_call")


class Clock:
    """A settable clock, so cooldowns and windows can be crossed without waiting."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def load_customers(redis_url: str, rows: Mapping[str, Mapping[str, Any]], tmp: Path) -> None:
    path = tmp / "customers.csv"
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["customer_id", *COLUMNS])
        for cid, values in rows.items():
            out.writerow([cid, *(values.get(c, "") for c in COLUMNS)])
    client = sync_redis(redis_url)
    store = FeatureStore(client, Keys())
    table = read_feature_file(path, ["tier"], base=store.current_schema())
    assert not table.errors, table.errors
    store.load(table)
    client.close()


def publish_text(redis_url: str, text: str) -> str:
    client = sync_redis(redis_url)
    try:
        return publish(client, Keys(), text).version
    finally:
        client.close()


class Harness:
    def __init__(self, redis_url: str, clock: Clock, **settings: Any) -> None:
        self.settings = Settings(
            redis_url=redis_url,
            port=0,
            workers=1,
            catalog_poll_seconds=0.1,
            log_flush_seconds=0.01,
            grace_seconds=1.0,
            **{**cluster_settings(redis_url), **settings},
        )
        self.clock = clock
        self.worker = Worker(self.settings, redis_url, 0, clock=clock)
        self.channel: grpc.aio.Channel | None = None
        self.stub: Any = None

    async def start(self) -> None:
        port = await self.worker.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.DecisioningStub(self.channel)

    async def stop(self) -> None:
        if self.channel is not None:
            try:
                async with asyncio.timeout(5):
                    await self.channel.close()
            except TimeoutError:
                logging.getLogger(__name__).error("test channel did not close within 5 s")
        await self.worker.stop(grace=0.5)

    async def decide(
        self,
        customer_id: str,
        channel: int = pb.WEB,
        *,
        max_offers: int = 0,
        events: Sequence[str] = (),
        context: Mapping[str, float] | None = None,
        explain: bool = False,
        request_id: str = "",
    ) -> Any:
        return await self.stub.Decide(
            pb.DecideRequest(
                customer_id=customer_id,
                channel=channel,
                max_offers=max_offers,
                events=list(events),
                context=dict(context or {}),
                explain=explain,
                request_id=request_id,
            ),
            timeout=5,
        )

    def unknown_decision_id(self, customer_id: str = "vip") -> str:
        """A decision id this server could have made (sealed with its secret) but never did."""
        ids = self.worker.service.ids
        assert ids is not None, "the worker has no decision id secret"
        return ids.seal("01KAAAAAAAAAAAAAAAAAAAAAAA", customer_id)

    async def report(self, decision_id: str, offer_id: str, outcome: int, event_id: str = "") -> Any:
        return await self.stub.ReportOutcome(
            pb.ReportOutcomeRequest(decision_id=decision_id, offer_id=offer_id, outcome=outcome, event_id=event_id),
            timeout=5,
        )


def terminate(proc: subprocess.Popen[str]) -> int:
    """Stop a server process as an operator would (SIGTERM, 30 s to drain), killing it only if it
    hangs; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
