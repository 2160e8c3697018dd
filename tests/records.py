"""Log records for tests: a decision with neutral values, so a test names only the fields it is about."""

from __future__ import annotations

from typing import Any

from server.state.records import NO_CANDIDATES, DecisionRecord

_NEUTRAL: dict[str, Any] = {
    "decision_id": "d0",
    "ts": 1_800_000_000.0,
    "customer_id": "c1",
    "channel": "web",
    "placement": "",
    "context": {},
    "events": [],
    "request_id": "",
    "schema_version": None,
    "features": None,
    "candidates": NO_CANDIDATES,
    "chosen": [],
    "no_offer_reason": "",
    "model_version": "",
    "catalog_version": "",
    "bandit_version": "",
    "degraded": False,
    "control_group": False,
    "would_offer": [],
}


def decision_record(**fields: Any) -> DecisionRecord:
    """A DecisionRecord of `fields`, every other field neutral (empty, false, no features)."""
    return DecisionRecord(**{**_NEUTRAL, **fields})
