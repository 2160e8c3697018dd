"""Request ids and event ids reused for a different call: refused (ConflictError, ALREADY_EXISTS),
never answered with another call's result; and no-offer decisions idempotent at once. On
InMemoryStateStore, where races are injected exactly (the same over real gRPC and Redis is in
tests/integration/test_conflicts.py)."""

from __future__ import annotations

import dataclasses

import pytest

from server.api.status import HTTP_STATUS, Code, status_of
from server.domain import Channel, ConflictError, DecideRequest, Outcome, OutcomeReport
from server.pipeline.control_groups import in_holdout
from server.pipeline.idempotency import (
    OUTCOME_PARTS,
    REQUEST_PARTS,
    differing,
    fingerprint,
    outcome_fingerprint,
    request_fingerprint,
)
from server.state.log_writer import Replay
from server.state.records import DecisionRecord
from server.state.store import StateUnavailable, request_value
from tests.unit.catalog_fixtures import BASE
from tests.unit.test_pipeline import VIP, budgeted, counters, rig

REQ = DecideRequest("vip", Channel.WEB, {"b": 2.0, "a": 1.5}, ("e2", "e1"), "home", 2, "r-1", False)


def test_a_request_fingerprint_is_canonical_and_names_what_differs() -> None:
    fp = request_fingerprint(REQ, 2)
    assert fp == fingerprint(["web", "home", "2", "0", "a=1.5,b=2.0", "e1,e2"]) == "cfa0626aa0dd5b77-51d00d21fe02"
    assert len(fp.partition("-")[0]) == 16 and len(fp.partition("-")[2]) == 2 * len(REQUEST_PARTS)
    # order of context and events, and the request id itself, do not matter; max_offers 0 is 1
    same = DecideRequest("vip", Channel.WEB, {"a": 1.5, "b": 2.0}, ("e1", "e2"), "home", 2, "r-other", False)
    assert request_fingerprint(same, 2) == fp
    assert request_fingerprint(dataclasses.replace(REQ, max_offers=0), 1) == request_fingerprint(
        dataclasses.replace(REQ, max_offers=1), 1
    )
    changes = {
        "channel": {"channel": Channel.CALL_CENTRE},
        "placement": {"placement": ""},
        "max_offers": {"max_offers": 3},
        "explain": {"explain": True},
        "context": {"context": {"a": 1.5}},
        "events": {"events": ("e1",)},
    }
    for part, change in changes.items():
        other = dataclasses.replace(REQ, **change)  # type: ignore[arg-type]
        other_fp = request_fingerprint(other, other.max_offers)
        assert other_fp != fp and differing(REQUEST_PARTS, fp, other_fp) == [part], part


def test_an_outcome_fingerprint_covers_decision_offer_outcome_and_value() -> None:
    report = OutcomeReport("01JBQ000000000000000000000.vip", "o_adhoc", Outcome.CONVERTED, 10.0, "e-1")
    fp = outcome_fingerprint(report)
    assert outcome_fingerprint(dataclasses.replace(report, event_id="other")) == fp  # the id is the key
    for part, change in {
        "decision_id": {"decision_id": "01JBQ000000000000000000001.vip"},
        "offer_id": {"offer_id": "o_life"},
        "outcome": {"outcome": Outcome.ACCEPTED},
        "value": {"value": 20.0},
    }.items():
        other = outcome_fingerprint(dataclasses.replace(report, **change))  # type: ignore[arg-type]
        assert differing(OUTCOME_PARTS, fp, other) == [part], part


def test_a_conflict_is_already_exists_naming_the_field() -> None:
    status = status_of(ConflictError("event_id", "'e' was already used for a different outcome"))
    assert (status.code, status.field, HTTP_STATUS[status.code]) == (Code.ALREADY_EXISTS, "event_id", 409)
    assert status.message == "event_id: 'e' was already used for a different outcome"


# -- request ids -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("customer", "second", "message"),
    [
        pytest.param(
            "vip",
            {"channel": Channel.CALL_CENTRE, "max_offers": 3},
            "request_id: 'r-1' was already used for a different request (channel, max_offers differ); "
            "use a new request_id",
            id="awarded",
        ),
        pytest.param(
            "nobody",
            {"context": {"cart_value": 3.0}},
            "request_id: 'r-1' was already used for a different request (context differs); use a new request_id",
            id="unknown-customer",
        ),
        pytest.param(
            "no_web",
            {"explain": True},
            "request_id: 'r-1' was already used for a different request (explain differs); use a new request_id",
            id="opted-out",
        ),
    ],
)
async def test_a_request_id_reused_for_a_different_request_is_refused(
    customer: str, second: dict[str, object], message: str
) -> None:
    nbo = rig()
    first = await nbo.decide(customer, request_id="r-1")
    stored = dict(nbo.store.strings), {k: dict(v) for k, v in nbo.store.hashes.items()}
    with pytest.raises(ConflictError) as info:
        await nbo.decide(customer, request_id="r-1", **{"channel": Channel.WEB, **second})
    assert (info.value.field, str(info.value)) == ("request_id", message)
    # the first decision is untouched and still replayed
    assert (dict(nbo.store.strings), {k: dict(v) for k, v in nbo.store.hashes.items()}) == stored
    assert await nbo.decide(customer, request_id="r-1") == dataclasses.replace(first, replayed=True)
    assert len(nbo.log.decisions) == 1


async def test_a_conflict_found_by_the_commit_gives_every_reservation_back() -> None:
    nbo = rig(budgeted("{total_awards: 10}"))
    key = nbo.store.keys.request("vip", "r-1")
    other = DecideRequest("vip", Channel.CALL_CENTRE, request_id="r-1")

    def concurrent_decision() -> None:
        # a call with the same request id on another channel committed between our read and ours
        nbo.store.strings[key] = request_value("01OTHER.vip", request_fingerprint(other, 1))

    nbo.store.before["commit"] = concurrent_decision
    with pytest.raises(ConflictError, match=r"^request_id: 'r-1' was already used .* \(channel differs\)"):
        await nbo.decide("vip", request_id="r-1")
    assert all(v == "0" for h in counters(nbo.store) for v in h.values())
    assert nbo.store.sent == {} and nbo.log.decisions == []


@pytest.mark.parametrize("customer", ["nobody", "no_web"])
async def test_a_no_offer_decision_claims_its_request_id_before_it_answers(
    customer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbo = rig()
    at_log: list[dict[str, str]] = []
    log_decision = nbo.log.decision

    def logged(record: DecisionRecord, replay: Replay | None) -> None:
        at_log.append(dict(nbo.store.strings))  # what a racing repeat would find by now
        log_decision(record, replay)

    monkeypatch.setattr(nbo.log, "decision", logged)
    first = await nbo.decide(customer, request_id="r-1")
    fp = request_fingerprint(DecideRequest(customer, Channel.WEB, request_id="r-1"), 1)
    assert at_log == [{nbo.store.keys.request(customer, "r-1"): request_value(first.decision_id, fp)}]
    again = await nbo.decide(customer, request_id="r-1")
    assert again == dataclasses.replace(first, replayed=True) and len(at_log) == 1


async def test_a_no_offer_decision_that_loses_the_claim_answers_as_the_winner() -> None:
    nbo = rig()
    winner = await nbo.decide("nobody", request_id="r-1")
    key = nbo.store.keys.request("nobody", "r-1")
    won = nbo.store.strings.pop(key)  # as if our read came before the winner's claim

    def claimed_meanwhile() -> None:
        nbo.store.strings[key] = won

    nbo.store.before["claim"] = claimed_meanwhile
    again = await nbo.decide("nobody", request_id="r-1")
    assert again == dataclasses.replace(winner, replayed=True)
    assert len(nbo.log.decisions) == 1  # the loser logs nothing: its decision never left


async def test_a_failed_claim_degrades_and_remembers_nothing() -> None:
    nbo = rig()

    def down() -> None:
        raise StateUnavailable("connection reset")

    nbo.store.before["claim"] = down
    d = await nbo.decide("nobody", request_id="r-1")
    assert (d.no_offer_reason.value, d.degraded) == ("degraded", True)
    assert nbo.store.strings == {} and nbo.log.decisions[0].degraded
    assert nbo.metric("nbo_redis_errors_total", op="claim") == 1.0


async def test_a_request_key_written_before_fingerprints_matches_any_repeat() -> None:
    nbo = rig()
    first = await nbo.decide("nobody", request_id="r-1")
    nbo.store.strings[nbo.store.keys.request("nobody", "r-1")] = first.decision_id  # the old format
    again = await nbo.decide("nobody", Channel.CALL_CENTRE, request_id="r-1", max_offers=3)
    assert again == dataclasses.replace(first, replayed=True)


# -- event ids -------------------------------------------------------------------------------------
async def test_an_event_id_reused_for_another_outcome_is_refused_and_records_nothing() -> None:
    nbo = rig()
    d = await nbo.decide("vip", max_offers=1)
    presented = OutcomeReport(d.decision_id, "o_adhoc", Outcome.PRESENTED, event_id="ev-1")
    assert (await nbo.service.report_outcome(presented)).recorded
    contacts = dict(nbo.store.hashes[nbo.store.keys.contacts("vip")])
    declined = dataclasses.replace(presented, outcome=Outcome.DECLINED)
    with pytest.raises(ConflictError) as info:
        await nbo.service.report_outcome(declined)
    assert (info.value.field, str(info.value)) == (
        "event_id",
        "event_id: 'ev-1' was already used for a different outcome (outcome differs); use a new event_id",
    )
    assert nbo.store.hashes[nbo.store.keys.contacts("vip")] == contacts  # no decline, no cooldown
    assert [o.outcome for o in nbo.log.outcomes] == ["presented"]
    assert (await nbo.service.report_outcome(presented)).duplicate  # the same outcome still is
    assert nbo.metric("nbo_outcomes_total", outcome="declined", result="conflict") == 1.0


async def test_a_default_event_id_reported_again_with_another_value_is_refused() -> None:
    nbo = rig()
    d = await nbo.decide("vip", max_offers=1)
    converted = OutcomeReport(d.decision_id, "o_adhoc", Outcome.CONVERTED, value=10.0)
    assert (await nbo.service.report_outcome(converted)).recorded
    with pytest.raises(ConflictError) as info:
        await nbo.service.report_outcome(dataclasses.replace(converted, value=20.0))
    assert str(info.value) == (
        "event_id: not set, and this decision, offer and outcome were already reported with a different value; "
        "set an event_id per report"
    )
    assert [o.value for o in nbo.log.outcomes] == [10.0]


async def test_an_event_key_written_before_fingerprints_matches_any_repeat() -> None:
    nbo = rig()
    d = await nbo.decide("vip", max_offers=1)
    nbo.store.strings[nbo.store.keys.outcome_event("vip", "ev-1")] = "1"  # the old format
    report = OutcomeReport(d.decision_id, "o_adhoc", Outcome.DECLINED, event_id="ev-1")
    assert (await nbo.service.report_outcome(report)).duplicate
    assert nbo.log.outcomes == []


async def test_a_control_group_decision_claims_its_request_id_too() -> None:
    text = BASE.replace("min_expected_value: 0.5", "min_expected_value: 0.5\ncontrol_group: {fraction: 0.3, salt: ctl}")
    customers = {f"c{i}": VIP for i in range(20)}
    held = next(c for c in customers if in_holdout("ctl", c, 0.3))
    nbo = rig(text, customers)
    first = await nbo.decide(held, max_offers=2, request_id="r-1")
    assert nbo.store.keys.request(held, "r-1") in nbo.store.strings
    assert await nbo.decide(held, max_offers=2, request_id="r-1") == dataclasses.replace(first, replayed=True)
    with pytest.raises(ConflictError, match=r"\(max_offers differs\)"):
        await nbo.decide(held, max_offers=1, request_id="r-1")
    assert nbo.record().would_offer == ["o_adhoc", "o_life"]  # one decision, logged once
