"""An asyncio client of the Decisioning API, for callers that keep many requests in flight (the
closed-loop simulation). API-side code like server.api.client: it speaks protobuf as any
caller would, so nothing outside server/api needs the generated code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from server.api.client import CHANNELS, OUTCOMES, credentials
from server.api.tls import ClientTls, aio_channel
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.gen.nbo.v1 import decisioning_pb2_grpc as pb_grpc


class AsyncNboClient:
    """One channel to a server. `own_connection`: a TCP connection of its own rather than one
    shared by every channel to the same target, so several clients spread over the worker
    processes behind one SO_REUSEPORT port. `tls`: connect with TLS; None: plaintext. `token`:
    the API token sent with every call."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 10.0,
        own_connection: bool = True,
        tls: ClientTls | None = None,
        token: str | None = None,
    ) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
        self.channel = aio_channel(target, tls, options)
        self.stub = pb_grpc.DecisioningStub(self.channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout
        self.metadata = credentials(token)

    async def decide(
        self,
        customer_id: str,
        channel: str,
        *,
        context: Mapping[str, float] | None = None,
        events: Sequence[str] = (),
        max_offers: int = 1,
    ) -> Any:
        request = pb.DecideRequest(
            customer_id=customer_id,
            channel=CHANNELS[channel],
            context=dict(context or {}),
            events=list(events),
            max_offers=max_offers,
        )
        return await self.stub.Decide(request, timeout=self.timeout, metadata=self.metadata)

    async def report(self, decision_id: str, offer_id: str, outcome: str, value: float = 0.0) -> Any:
        request = pb.ReportOutcomeRequest(
            decision_id=decision_id, offer_id=offer_id, outcome=OUTCOMES[outcome], value=value
        )
        return await self.stub.ReportOutcome(request, timeout=self.timeout, metadata=self.metadata)

    async def convert(self, customer_id: str, kind: str, value: float, event_id: str, occurred_at: float = 0.0) -> Any:
        request = pb.RecordConversionRequest(
            customer_id=customer_id, kind=kind, value=value, event_id=event_id, occurred_at=occurred_at
        )
        return await self.stub.RecordConversion(request, timeout=self.timeout, metadata=self.metadata)

    async def close(self) -> None:
        await self.channel.close()
