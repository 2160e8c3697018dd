"""A small synchronous client of the Decisioning API, for the CLI, the demo and examples.

It lives beside the server but is API-side code: it speaks protobuf, as any caller would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from server.api.tls import ClientTls, channel
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.gen.nbo.v1 import decisioning_pb2_grpc as pb_grpc

CHANNELS = {"call_centre": pb.CALL_CENTRE, "web": pb.WEB, "mobile_app": pb.MOBILE_APP, "email": pb.EMAIL}
OUTCOMES = {"presented": pb.PRESENTED, "accepted": pb.ACCEPTED, "declined": pb.DECLINED, "converted": pb.CONVERTED}


def credentials(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that authenticates a caller with `token` (none without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


class NboClient:
    """`tls`: connect with TLS (and a client certificate for mutual TLS); None: plaintext.
    `token`: the API token sent with every call (servers with authentication need one)."""

    def __init__(
        self, target: str, timeout: float = 5.0, *, tls: ClientTls | None = None, token: str | None = None
    ) -> None:
        self.channel = channel(target, tls)
        self.stub = pb_grpc.DecisioningStub(self.channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout
        self.metadata = credentials(token)

    def decide(
        self,
        customer_id: str,
        channel: str,
        *,
        max_offers: int = 1,
        explain: bool = False,
        context: Mapping[str, float] | None = None,
        events: Sequence[str] = (),
        placement: str = "",
        request_id: str = "",
    ) -> Any:
        return self.stub.Decide(
            pb.DecideRequest(
                customer_id=customer_id,
                channel=CHANNELS[channel],
                max_offers=max_offers,
                explain=explain,
                context=dict(context or {}),
                events=list(events),
                placement=placement,
                request_id=request_id,
            ),
            timeout=self.timeout,
            metadata=self.metadata,
        )

    def report(self, decision_id: str, offer_id: str, outcome: str, value: float = 0.0) -> Any:
        return self.stub.ReportOutcome(
            pb.ReportOutcomeRequest(decision_id=decision_id, offer_id=offer_id, outcome=OUTCOMES[outcome], value=value),
            timeout=self.timeout,
            metadata=self.metadata,
        )

    def convert(self, customer_id: str, kind: str, value: float, event_id: str, occurred_at: float = 0.0) -> Any:
        return self.stub.RecordConversion(
            pb.RecordConversionRequest(
                customer_id=customer_id, kind=kind, value=value, event_id=event_id, occurred_at=occurred_at
            ),
            timeout=self.timeout,
            metadata=self.metadata,
        )

    def close(self) -> None:
        self.channel.close()


def print_decision(console: Console, title: str, response: Any) -> None:
    """Render a DecideResponse for a person: offers with reasons, or why nothing was sent."""
    console.rule(f"[bold]{title}")
    if not response.offers:
        reason = pb.NoOfferReason.Name(response.no_offer_reason)
        console.print(f"[yellow]Send nothing[/]: {reason}" + ("  (degraded)" if response.degraded else ""))
    for offer in response.offers:
        console.print(
            f"[bold green]#{offer.rank} {offer.title}[/]  [dim]{offer.offer_id} / {offer.campaign_id} "
            f"({offer.campaign_type})[/]\n"
            f"   P(accept) {offer.propensity:.0%}   expected value {offer.expected_value:.2f}   "
            f"score {offer.score:.2f}"
        )
        if offer.script:
            console.print(f"   [italic]Say:[/] {offer.script}")
        for reason in offer.reasons:
            console.print(f"   - {reason}")
    if response.suppressed:
        table = Table("suppressed offer", "campaign", "why", box=None, pad_edge=False)
        for s in response.suppressed:
            table.add_row(s.offer_id, s.campaign_id, s.reason)
        console.print(table)
    console.print(
        f"[dim]decision {response.decision_id} | catalog {response.catalog_version} | "
        f"model {response.model_version}{' | replayed' if response.replayed else ''}[/]"
    )
