"""ReportOutcome: an outcome is recorded only if nobody could have forged it.

The decision id must be one this server sealed (server.ids.DecisionIds: a made-up or altered id
is unknown), the decision must still be kept (its key expires decision_ttl_seconds after it was
made: the reward window), the reporting caller must be the one that made the decision (or an
admin), the offer must be one the decision awarded, and the value must be within the offer's
bound, kept with the decision at award time. Each check is made in the one outcome script
(outcome.lua) before anything is written, so a refused outcome changes nothing.
"""

from __future__ import annotations

import asyncio
import math

from server.domain import ForbiddenError, NotFoundError, OutcomeReport, OutcomeResult, RequestError
from server.ids import DecisionIds, MalformedDecisionId, id_problem
from server.pipeline.context import LiveConfig, Services
from server.pipeline.guard import ServiceUnavailable, bounded
from server.pipeline.idempotency import outcome_conflict, outcome_fingerprint
from server.state.records import OutcomeRecord
from server.state.store import (
    CONFLICT,
    FORBIDDEN,
    NOT_OFFERED,
    RECORDED,
    TOO_LARGE,
    UNKNOWN_DECISION,
    Recorded,
    Reporter,
    StateUnavailable,
)


async def report_outcome(
    svc: Services,
    live: LiveConfig | None,
    ids: DecisionIds | None,
    report: OutcomeReport,
    *,
    caller: str,
    admin: bool,
    now: float,
) -> OutcomeResult:
    """Record `report` from `caller` (an `admin` may report on any decision); raise RequestError,
    NotFoundError, ForbiddenError, ConflictError or ServiceUnavailable otherwise."""
    validate_report(report)
    if ids is None:
        raise ServiceUnavailable("decision ids cannot be read yet (the shared secret is not loaded); retry")
    metrics, kind = svc.metrics, report.outcome.value
    customer_id = _customer_of(ids, report.decision_id)
    if customer_id is None:
        # altered, made up, or sealed under a secret since replaced: as unknown as an expired one
        metrics.outcomes.labels(kind, "not_found").inc()
        raise _unknown(report.decision_id)
    event_id = report.event_id or f"{report.decision_id}:{report.offer_id}:{report.outcome.value}"
    reporter = Reporter(caller, admin, report.value, _fallback_max_value(live, report.offer_id))
    result = await _record(svc, live, report, customer_id, event_id, reporter, now)
    if result.status == UNKNOWN_DECISION:
        metrics.outcomes.labels(kind, "not_found").inc()
        raise _unknown(report.decision_id)
    if result.status == FORBIDDEN:
        metrics.outcomes.labels(kind, "forbidden").inc()
        raise ForbiddenError("decision_id", "outcomes of this decision may be reported only by the caller that made it")
    if result.status == NOT_OFFERED:
        metrics.outcomes.labels(kind, "invalid").inc()
        raise RequestError("offer_id", f"offer {report.offer_id!r} was not offered in this decision")
    if result.status == TOO_LARGE:
        metrics.outcomes.labels(kind, "invalid").inc()
        raise RequestError(
            "value", f"must be at most {result.max_value:g} for offer {report.offer_id!r}, got {report.value:g}"
        )
    if result.status == CONFLICT:
        # nothing was recorded: the first outcome under this event id stands
        metrics.outcomes.labels(kind, "conflict").inc()
        raise outcome_conflict(report, result.fingerprint)
    recorded = result.status == RECORDED
    metrics.outcomes.labels(kind, "recorded" if recorded else "duplicate").inc()
    if recorded:
        metrics.campaign_outcome(_campaign_of(live, report.offer_id), kind)
        svc.writer.outcome(_record_of(report, event_id, customer_id, result, now))
    return OutcomeResult(recorded=recorded, duplicate=not recorded)


def _record_of(report: OutcomeReport, event_id: str, customer_id: str, result: Recorded, now: float) -> OutcomeRecord:
    return OutcomeRecord(
        event_id=event_id,
        decision_id=report.decision_id,
        customer_id=customer_id,
        offer_id=report.offer_id,
        outcome=report.outcome.value,
        value=report.value,
        ts=now,
        channel=result.channel,
        propensity=result.propensity,
        prior_sd=result.prior_sd,
        arm_inputs=result.inputs,
    )


def _campaign_of(live: LiveConfig | None, offer_id: str) -> str:
    """The offer's campaign in the live catalog; "unknown" for an offer a newer catalog dropped."""
    if live is None or (index := live.catalog.offer_index.get(offer_id)) is None:
        return "unknown"
    return live.catalog.offers[index].campaign_id


def validate_report(report: OutcomeReport) -> None:
    """Raise RequestError naming the field."""
    if problem := id_problem(report.offer_id):
        raise RequestError("offer_id", problem)
    if not math.isfinite(report.value) or report.value < 0:
        raise RequestError("value", f"must be finite and >= 0, got {report.value}")
    if report.event_id and (problem := id_problem(report.event_id, 200)):
        raise RequestError("event_id", problem)


def _customer_of(ids: DecisionIds, decision_id: str) -> str | None:
    try:
        return ids.open(decision_id)
    except MalformedDecisionId:
        raise RequestError("decision_id", "not a decision id returned by Decide") from None


def _unknown(decision_id: str) -> NotFoundError:
    return NotFoundError("decision_id", f"no decision {decision_id!r} (unknown or expired)")


def _fallback_max_value(live: LiveConfig | None, offer_id: str) -> float:
    """The live catalog's bound for the offer: used only for decisions kept without one."""
    at = live.catalog.offer_index.get(offer_id) if live else None
    return live.catalog.offers[at].max_value if live and at is not None else math.inf


async def _record(
    svc: Services,
    live: LiveConfig | None,
    report: OutcomeReport,
    customer_id: str,
    event_id: str,
    reporter: Reporter,
    now: float,
) -> Recorded:
    policy = live.catalog.contact_policy if live else None
    settings, breaker = svc.settings, svc.breaker
    if not breaker.allow():
        raise ServiceUnavailable("could not record the outcome: Redis is down (circuit open); retry later")
    recording = svc.store.record_outcome(
        customer_id=customer_id,
        decision_id=report.decision_id,
        offer_id=report.offer_id,
        outcome=report.outcome.value,
        event_id=event_id,
        now=now,
        event_ttl=settings.outcome_event_ttl_seconds,
        max_presented=policy.max_presented_without_response if policy else 3,
        suppression_seconds=policy.suppression_seconds if policy else 30 * 86400,
        history_ttl=settings.contact_history_ttl_seconds,
        fingerprint=outcome_fingerprint(report),
        reporter=reporter,
    )
    try:
        return await bounded(recording, asyncio.get_running_loop().time() + settings.redis_timeout_seconds, breaker)
    except StateUnavailable as err:
        svc.metrics.redis_errors.labels("outcome").inc()
        raise ServiceUnavailable(f"could not record the outcome: {err}") from err
