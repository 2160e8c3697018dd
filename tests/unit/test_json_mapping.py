"""The HTTP front's body parsing: whatever JSON a caller sends, the answer is a decode or a
RequestError naming a field, never another exception (which would be a 500)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.api import converters
from server.api.json_mapping import message_from_json, message_to_json
from server.domain import Channel, Decision, NoOfferReason, RequestError

NAMES = ["customerId", "customer_id", "channel", "context", "events", "maxOffers", "requestId", "explain", "x"]
SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)
VALUES = st.recursive(
    SCALARS | st.sampled_from(["WEB", "EMAIL", "NaN", "-Infinity", "1e3"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=5))
def test_any_json_object_decodes_or_names_a_field(body: dict[str, Any]) -> None:
    for cls, decode in (
        (converters.DecideRequest, converters.decide_request_from_pb),
        (converters.ReportOutcomeRequest, converters.outcome_from_pb),
    ):
        try:
            decode(message_from_json(json.dumps(body).encode(), cls))
        except RequestError as err:
            assert err.field and str(err).startswith(err.field + ": ")


def test_a_valid_body_decodes_to_the_domain_request() -> None:
    body = b'{"customer_id": "c1", "channel": "EMAIL", "context": {"cart_value": "Infinity"}, "events": ["e"]}'
    req = converters.decide_request_from_pb(message_from_json(body, converters.DecideRequest))
    assert (req.customer_id, req.channel, req.context, req.events) == (
        "c1",
        Channel.EMAIL,
        {"cart_value": 1e999},
        ("e",),
    )


@pytest.mark.parametrize("body", [b"1", b"null", b'"x"', b"true"])
def test_a_body_that_is_not_an_object_is_refused(body: bytes) -> None:
    with pytest.raises(RequestError, match=r"^body: must be a JSON object, got "):
        message_from_json(body, converters.DecideRequest)


def test_answers_print_every_field_under_its_json_name() -> None:
    decision = Decision("d1", (), NoOfferReason.DEGRADED, "", "", degraded=True)
    assert json.loads(message_to_json(converters.decide_response_to_pb(decision))) == {
        "decisionId": "d1",
        "offers": [],
        "noOfferReason": "DEGRADED",
        "modelVersion": "",
        "catalogVersion": "",
        "degraded": True,
        "suppressed": [],
        "replayed": False,
    }
