"""Transport-free domain types shared by the decision pipeline and the API layer."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Channel(enum.StrEnum):
    CALL_CENTRE = "call_centre"
    WEB = "web"
    MOBILE_APP = "mobile_app"
    EMAIL = "email"


class CampaignType(enum.StrEnum):
    AD_HOC = "ad_hoc"
    TRIGGER = "trigger"
    LIFECYCLE = "lifecycle"


class NoOfferReason(enum.StrEnum):
    NONE = "none"
    UNKNOWN_CUSTOMER = "unknown_customer"
    NO_ELIGIBLE_OFFER = "no_eligible_offer"
    CONTACT_POLICY = "contact_policy"
    BUDGET_EXHAUSTED = "budget_exhausted"
    BELOW_THRESHOLD = "below_threshold"
    CONTROL_GROUP = "control_group"
    OPTED_OUT = "opted_out"
    DEGRADED = "degraded"
    DEADLINE = "deadline"


class Outcome(enum.StrEnum):
    PRESENTED = "presented"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    CONVERTED = "converted"


# the outcomes in which the customer took the offer: the reward of training, the bandit, and every
# report and page (an ACCEPTED then CONVERTED offer is one response, never two)
RESPONSES = frozenset({Outcome.ACCEPTED.value, Outcome.CONVERTED.value})


class RequestError(ValueError):
    """A caller mistake: the API layer maps it to INVALID_ARGUMENT."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFoundError(LookupError):
    """An id the caller named does not exist (NOT_FOUND)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ForbiddenError(PermissionError):
    """The caller may not do this to what it named (PERMISSION_DENIED): e.g. report an outcome
    of a decision another caller made."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ConflictError(ValueError):
    """An idempotency id (`request_id`, `event_id`) reused for a different call: the API layer
    maps it to ALREADY_EXISTS. Answering the first call's result, or "duplicate", would hand the
    caller an answer to a question it did not ask, or silently drop what it reported."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DecideRequest:
    customer_id: str
    channel: Channel
    context: dict[str, float] = field(default_factory=dict)
    events: tuple[str, ...] = ()
    placement: str = ""
    max_offers: int = 1
    request_id: str = ""
    explain: bool = False


@dataclass(frozen=True, slots=True)
class RankedOffer:
    offer_id: str
    campaign_id: str
    campaign_type: CampaignType
    rank: int
    propensity: float
    expected_value: float
    score: float
    selection_probability: float
    reasons: tuple[str, ...]
    title: str
    script: str


@dataclass(frozen=True, slots=True)
class SuppressedOffer:
    offer_id: str
    campaign_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    decision_id: str
    offers: tuple[RankedOffer, ...]
    no_offer_reason: NoOfferReason
    model_version: str
    catalog_version: str
    degraded: bool = False
    suppressed: tuple[SuppressedOffer, ...] = ()
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class OutcomeReport:
    decision_id: str
    offer_id: str
    outcome: Outcome
    value: float = 0.0
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class OutcomeResult:
    recorded: bool
    duplicate: bool


@dataclass(frozen=True, slots=True)
class ConversionReport:
    """A business result of a customer not tied to a decision (server.pipeline.conversion)."""

    customer_id: str
    kind: str
    value: float
    event_id: str
    occurred_at: float = 0.0  # Unix seconds; 0: when the server records it
