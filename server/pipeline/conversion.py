"""RecordConversion: a customer's business result (a purchase, a sign-up) kept once per event id.

Conversions are not tied to a decision, so unlike outcomes they carry no proof of a decision: a
caller with the `report` role may report any customer's. Lift is measured on them (`nbo report`),
customers in control groups included. The event id is required: a batch system resending a file
must not count a purchase twice.
"""

from __future__ import annotations

import asyncio
import math
import re

from server.domain import ConversionReport, OutcomeResult, RequestError
from server.ids import id_problem
from server.pipeline.context import Services
from server.pipeline.guard import ServiceUnavailable, bounded
from server.pipeline.idempotency import conversion_conflict, conversion_fingerprint
from server.state.conversions import ConversionRecord
from server.state.store import CONFLICT, RECORDED, StateUnavailable

KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_EVENT_ID = 128
FUTURE_SLACK_SECONDS = 300.0  # clocks of reporting systems drift; beyond this it is a mistake


def validate_conversion(report: ConversionReport, now: float, window: int) -> float:
    """When the conversion happened (occurred_at, or `now` for 0); raise RequestError naming the
    field otherwise."""
    if problem := id_problem(report.customer_id):
        raise RequestError("customer_id", problem)
    if not KIND_RE.fullmatch(report.kind):
        raise RequestError("kind", f"must be 1-32 of a-z, 0-9 and _ starting with a letter, got {report.kind!r}")
    if not math.isfinite(report.value) or report.value < 0:
        raise RequestError("value", f"must be finite and >= 0, got {report.value!r}")
    event_id = report.event_id
    if not event_id or len(event_id) > MAX_EVENT_ID or not all("!" <= ch <= "~" for ch in event_id):
        raise RequestError("event_id", f"must be 1-{MAX_EVENT_ID} printable ASCII characters without spaces")
    at = report.occurred_at
    if at == 0.0:
        return now
    if not math.isfinite(at) or at < 0:
        raise RequestError("occurred_at", f"must be Unix seconds, or 0 for now; got {at!r}")
    if at > now + FUTURE_SLACK_SECONDS:
        raise RequestError("occurred_at", f"is {at - now:.0f} s in the future")
    if at < now - window:
        days = window / 86_400
        raise RequestError(
            "occurred_at",
            f"is older than the conversion window ({days:g} days, conversion_window_seconds): "
            "a repeat of it could not be recognised",
        )
    return at


def conversion_record(report: ConversionReport, occurred: float, now: float, source: str) -> ConversionRecord:
    return ConversionRecord(
        event_id=report.event_id,
        customer_id=report.customer_id,
        kind=report.kind,
        value=report.value,
        ts=occurred,
        recorded=now,
        source=source,
    )


async def record_conversion(svc: Services, report: ConversionReport, *, now: float, source: str) -> OutcomeResult:
    """Record `report`; raise RequestError, ConflictError or ServiceUnavailable otherwise."""
    settings, breaker, metrics = svc.settings, svc.breaker, svc.metrics
    try:
        occurred = validate_conversion(report, now, settings.conversion_window_seconds)
    except RequestError:
        metrics.conversions.labels("invalid").inc()
        raise
    if not breaker.allow():
        raise ServiceUnavailable("could not record the conversion: Redis is down (circuit open); retry later")
    record = conversion_record(report, occurred, now, source)
    fingerprint = conversion_fingerprint(report)
    recording = svc.store.record_conversion(record, fingerprint, settings.conversion_window_seconds)
    try:
        status, stored = await bounded(
            recording, asyncio.get_running_loop().time() + settings.redis_timeout_seconds, breaker
        )
    except StateUnavailable as err:
        svc.metrics.redis_errors.labels("conversion").inc()
        raise ServiceUnavailable(f"could not record the conversion: {err}") from err
    if status == CONFLICT:
        metrics.conversions.labels("conflict").inc()
        raise conversion_conflict(report, stored)
    recorded = status == RECORDED
    metrics.conversions.labels("recorded" if recorded else "duplicate").inc()
    return OutcomeResult(recorded=recorded, duplicate=not recorded)
