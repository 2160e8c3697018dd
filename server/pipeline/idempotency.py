"""What a repeat of an idempotent call must match: fingerprints of requests and outcomes.

A `request_id` (Decide) or an `event_id` (ReportOutcome) makes a call safe to retry: a repeat
gets the first answer. It must be the same call, though. An id reused for a different request
would be answered with a decision made for other inputs, and an event id reused for another
outcome would be answered `duplicate` while the outcome is lost; both are refused with
ConflictError (ALREADY_EXISTS). To tell them apart the id's key in Redis keeps a fingerprint of
the call: 16 hex of blake2b over a canonical encoding of the inputs that shape the answer, then
2 hex (of a CRC) per input, so a refusal can name what differs. The stores only store and compare these
strings; this module is their one implementation. A key written before fingerprints existed
holds none ("" here, "1" for event keys) and matches any repeat.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence

from server.domain import ConflictError, ConversionReport, DecideRequest, OutcomeReport

REQUEST_PARTS = ("channel", "placement", "max_offers", "explain", "context", "events")
OUTCOME_PARTS = ("decision_id", "offer_id", "outcome", "value")
# occurred_at as sent (0 for "now"), so that a retry of a "now" conversion is the same call
CONVERSION_PARTS = ("customer_id", "kind", "value", "occurred_at")
_WHOLE_HEX = 16


def fingerprint(parts: Sequence[str]) -> str:
    """`<16 hex of the whole>-<2 hex per part>`. Parts must not contain a newline (they are
    validated ids, enum values and numbers), so joining them with one is unambiguous. Built by
    hand rather than as JSON: a json.dumps with options costs microseconds per call."""
    encoded = [p.encode() for p in parts]
    whole = hashlib.blake2b(b"\n".join(encoded), digest_size=_WHOLE_HEX // 2).hexdigest()
    return whole + "-" + bytes(zlib.crc32(p) & 0xFF for p in encoded).hex()


def differing(names: Sequence[str], stored: str, current: str) -> list[str]:
    """The names whose per-value tags differ (possibly none: two values may share a tag)."""
    a, b = stored.partition("-")[2], current.partition("-")[2]
    if len(a) != 2 * len(names) or len(b) != 2 * len(names):
        return []
    return [n for i, n in enumerate(names) if a[2 * i : 2 * i + 2] != b[2 * i : 2 * i + 2]]


def request_fingerprint(req: DecideRequest, k: int) -> str:
    """Of what decides the answer besides the customer (in the key already) and time. `k` is the
    effective max_offers, so 0 and 1 are the same request."""
    # context keys are [a-z_][a-z0-9_]* and events ids without ',': both joins are unambiguous
    context = ",".join(f"{key}={value!r}" for key, value in sorted(req.context.items()))
    events = ",".join(sorted(req.events))
    return fingerprint([req.channel.value, req.placement, str(k), "1" if req.explain else "0", context, events])


def _differ(names: list[str], fallback: str) -> str:
    if not names:
        return f"{fallback} differ"
    return ", ".join(names) + (" differs" if len(names) == 1 else " differ")


def check_request_repeat(req: DecideRequest, k: int, stored: str) -> None:
    """Raise ConflictError unless a repeat of `req`'s request id matches the stored fingerprint."""
    current = request_fingerprint(req, k)
    if stored and stored != current:
        what = _differ(differing(REQUEST_PARTS, stored, current), "its inputs")
        raise ConflictError(
            "request_id", f"{req.request_id!r} was already used for a different request ({what}); use a new request_id"
        )


def outcome_fingerprint(report: OutcomeReport) -> str:
    return fingerprint([report.decision_id, report.offer_id, report.outcome.value, repr(report.value)])


def outcome_conflict(report: OutcomeReport, stored: str) -> ConflictError:
    """The refusal of an outcome whose event id was recorded for a different outcome."""
    names = differing(OUTCOME_PARTS, stored, outcome_fingerprint(report))
    if not report.event_id:
        # the default id is decision:offer:outcome, so only the value can differ
        return ConflictError(
            "event_id",
            "not set, and this decision, offer and outcome were already reported with a different value; "
            "set an event_id per report",
        )
    what = _differ(names, "its fields")
    return ConflictError(
        "event_id", f"{report.event_id!r} was already used for a different outcome ({what}); use a new event_id"
    )


def conversion_fingerprint(report: ConversionReport) -> str:
    return fingerprint([report.customer_id, report.kind, repr(report.value), repr(report.occurred_at)])


def conversion_conflict(report: ConversionReport, stored: str) -> ConflictError:
    """The refusal of a conversion whose event id was recorded for a different conversion."""
    what = _differ(differing(CONVERSION_PARTS, stored, conversion_fingerprint(report)), "its fields")
    return ConflictError(
        "event_id", f"{report.event_id!r} was already used for a different conversion ({what}); use a new event_id"
    )
