from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Channel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_UNSPECIFIED: _ClassVar[Channel]
    CALL_CENTRE: _ClassVar[Channel]
    WEB: _ClassVar[Channel]
    MOBILE_APP: _ClassVar[Channel]
    EMAIL: _ClassVar[Channel]

class NoOfferReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NO_OFFER_REASON_UNSPECIFIED: _ClassVar[NoOfferReason]
    UNKNOWN_CUSTOMER: _ClassVar[NoOfferReason]
    NO_ELIGIBLE_OFFER: _ClassVar[NoOfferReason]
    CONTACT_POLICY: _ClassVar[NoOfferReason]
    BUDGET_EXHAUSTED: _ClassVar[NoOfferReason]
    BELOW_THRESHOLD: _ClassVar[NoOfferReason]
    CONTROL_GROUP: _ClassVar[NoOfferReason]
    OPTED_OUT: _ClassVar[NoOfferReason]
    DEGRADED: _ClassVar[NoOfferReason]
    DEADLINE: _ClassVar[NoOfferReason]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    PRESENTED: _ClassVar[Outcome]
    ACCEPTED: _ClassVar[Outcome]
    DECLINED: _ClassVar[Outcome]
    CONVERTED: _ClassVar[Outcome]
CHANNEL_UNSPECIFIED: Channel
CALL_CENTRE: Channel
WEB: Channel
MOBILE_APP: Channel
EMAIL: Channel
NO_OFFER_REASON_UNSPECIFIED: NoOfferReason
UNKNOWN_CUSTOMER: NoOfferReason
NO_ELIGIBLE_OFFER: NoOfferReason
CONTACT_POLICY: NoOfferReason
BUDGET_EXHAUSTED: NoOfferReason
BELOW_THRESHOLD: NoOfferReason
CONTROL_GROUP: NoOfferReason
OPTED_OUT: NoOfferReason
DEGRADED: NoOfferReason
DEADLINE: NoOfferReason
OUTCOME_UNSPECIFIED: Outcome
PRESENTED: Outcome
ACCEPTED: Outcome
DECLINED: Outcome
CONVERTED: Outcome

class DecideRequest(_message.Message):
    __slots__ = ("customer_id", "channel", "context", "events", "placement", "max_offers", "request_id", "explain")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    MAX_OFFERS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    channel: Channel
    context: _containers.ScalarMap[str, float]
    events: _containers.RepeatedScalarFieldContainer[str]
    placement: str
    max_offers: int
    request_id: str
    explain: bool
    def __init__(self, customer_id: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ..., context: _Optional[_Mapping[str, float]] = ..., events: _Optional[_Iterable[str]] = ..., placement: _Optional[str] = ..., max_offers: _Optional[int] = ..., request_id: _Optional[str] = ..., explain: _Optional[bool] = ...) -> None: ...

class RankedOffer(_message.Message):
    __slots__ = ("offer_id", "campaign_id", "rank", "propensity", "expected_value", "score", "selection_probability", "reasons", "title", "script", "campaign_type")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VALUE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SELECTION_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_TYPE_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    campaign_id: str
    rank: int
    propensity: float
    expected_value: float
    score: float
    selection_probability: float
    reasons: _containers.RepeatedScalarFieldContainer[str]
    title: str
    script: str
    campaign_type: str
    def __init__(self, offer_id: _Optional[str] = ..., campaign_id: _Optional[str] = ..., rank: _Optional[int] = ..., propensity: _Optional[float] = ..., expected_value: _Optional[float] = ..., score: _Optional[float] = ..., selection_probability: _Optional[float] = ..., reasons: _Optional[_Iterable[str]] = ..., title: _Optional[str] = ..., script: _Optional[str] = ..., campaign_type: _Optional[str] = ...) -> None: ...

class SuppressedOffer(_message.Message):
    __slots__ = ("offer_id", "reason", "campaign_id")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    reason: str
    campaign_id: str
    def __init__(self, offer_id: _Optional[str] = ..., reason: _Optional[str] = ..., campaign_id: _Optional[str] = ...) -> None: ...

class DecideResponse(_message.Message):
    __slots__ = ("decision_id", "offers", "no_offer_reason", "model_version", "catalog_version", "degraded", "suppressed", "replayed")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    NO_OFFER_REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    offers: _containers.RepeatedCompositeFieldContainer[RankedOffer]
    no_offer_reason: NoOfferReason
    model_version: str
    catalog_version: str
    degraded: bool
    suppressed: _containers.RepeatedCompositeFieldContainer[SuppressedOffer]
    replayed: bool
    def __init__(self, decision_id: _Optional[str] = ..., offers: _Optional[_Iterable[_Union[RankedOffer, _Mapping]]] = ..., no_offer_reason: _Optional[_Union[NoOfferReason, str]] = ..., model_version: _Optional[str] = ..., catalog_version: _Optional[str] = ..., degraded: _Optional[bool] = ..., suppressed: _Optional[_Iterable[_Union[SuppressedOffer, _Mapping]]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class ReportOutcomeRequest(_message.Message):
    __slots__ = ("decision_id", "offer_id", "outcome", "value", "event_id")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    offer_id: str
    outcome: Outcome
    value: float
    event_id: str
    def __init__(self, decision_id: _Optional[str] = ..., offer_id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., value: _Optional[float] = ..., event_id: _Optional[str] = ...) -> None: ...

class ReportOutcomeResponse(_message.Message):
    __slots__ = ("recorded", "duplicate")
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    recorded: bool
    duplicate: bool
    def __init__(self, recorded: _Optional[bool] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class RecordConversionRequest(_message.Message):
    __slots__ = ("customer_id", "kind", "value", "event_id", "occurred_at")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    kind: str
    value: float
    event_id: str
    occurred_at: float
    def __init__(self, customer_id: _Optional[str] = ..., kind: _Optional[str] = ..., value: _Optional[float] = ..., event_id: _Optional[str] = ..., occurred_at: _Optional[float] = ...) -> None: ...

class RecordConversionResponse(_message.Message):
    __slots__ = ("recorded", "duplicate")
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    recorded: bool
    duplicate: bool
    def __init__(self, recorded: _Optional[bool] = ..., duplicate: _Optional[bool] = ...) -> None: ...
