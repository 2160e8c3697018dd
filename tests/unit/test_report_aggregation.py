"""KPI and lift aggregation of `nbo report` over records built here, with exact numbers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from server.pipeline.context import STAGE_STATUS, Stage
from server.reporting.kpis import HOUR, KpiAggregator, bucket_of, index_outcomes
from server.reporting.lift import LiftAggregator, Thresholds
from server.reporting.model import KpiRow
from server.reporting.period import Period, PeriodError, parse_duration, parse_time
from server.state.records import Candidates, DecisionRecord, OutcomeRecord
from tests.records import decision_record

HELD = STAGE_STATUS[Stage.HELD_OUT]
NAN = float("nan")
COSTS = {"o_a": 2.0, "o_b": 5.0}


def decision(
    decision_id: str,
    ts: float,
    customer: str,
    candidates: Sequence[tuple[str, str, str]] = (),
    chosen: Sequence[str] = (),
    *,
    channel: str = "web",
    reason: str = "",
    control: bool = False,
    degraded: bool = False,
    undelivered: bool = False,
    would_offer: Sequence[str] = (),
    model: str = "m1",
) -> DecisionRecord:
    n = len(candidates)
    return decision_record(
        decision_id=decision_id,
        ts=ts,
        customer_id=customer,
        channel=channel,
        schema_version=1,
        candidates=Candidates(
            [c[0] for c in candidates],
            [c[1] for c in candidates],
            [0.1] * n,
            [1.0] * n,
            [1.0] * n,
            [NAN] * n,
            [c[2] for c in candidates],
        ),
        chosen=list(chosen),
        no_offer_reason=reason,
        model_version=model,
        catalog_version="1-abc",
        degraded=degraded,
        control_group=control,
        would_offer=list(would_offer),
        undelivered=undelivered,
    )


def outcome(decision_id: str, offer: str, what: str, value: float = 0.0, ts: float = 5000.0) -> OutcomeRecord:
    return OutcomeRecord(f"{decision_id}:{offer}:{what}", decision_id, "", offer, what, value, ts, "web", NAN, NAN)


def _kpis() -> KpiAggregator:
    outcomes = [
        outcome("d1", "o_a", "presented"),
        outcome("d1", "o_a", "declined"),
        outcome("d2", "o_a", "presented"),
        outcome("d2", "o_a", "accepted", 30.0),
        outcome("d2", "o_a", "converted", 50.0),
        outcome("d0", "o_a", "accepted", 99.0, ts=10.0),  # before the period: not its decisions'
    ]
    agg = KpiAggregator(index_outcomes(outcomes, since=100.0), lambda _version, offer: COSTS[offer])
    for record in (
        decision(
            "d1", 1000.0, "c1", [("o_a", "A", "chosen"), ("o_b", "B", "ranked below the offers returned")], ["o_a"]
        ),
        decision("d2", 4000.0, "c2", [("o_a", "A", "chosen")], ["o_a"]),
        decision("d3", 4100.0, "c3", [("o_b", "B", "chosen")], ["o_b"], channel="call_centre", undelivered=True),
        decision(
            "d4", 4200.0, "c4", [("o_a", "A", "chosen")], [], reason="control_group", control=True, would_offer=["o_a"]
        ),
        decision("d5", 4300.0, "c5", [], [], reason="degraded", degraded=True, model=""),
        decision("d6", 4400.0, "c6", [("o_a", "A", HELD)], [], reason="control_group"),
    ):
        agg.add(record)
    return agg


def _row(agg: KpiAggregator, dimension: str, key: str) -> KpiRow:
    return next(r for r in agg.rows() if (r.dimension, r.key) == (dimension, key))


def test_kpis_per_campaign() -> None:
    agg = _kpis()
    assert _row(agg, "campaign", "A") == KpiRow(
        dimension="campaign", key="A", decisions=3, control_group=1, degraded=0, undelivered=0, awards=2,
        undelivered_awards=0, presented=2, accepted=1, declined=1, converted=1, acceptance_rate=0.5,
        conversion_rate=0.5, revenue=50.0, cost=4.0, roi=11.5,
    )  # fmt: skip
    assert _row(agg, "campaign", "B") == KpiRow(
        dimension="campaign", key="B", decisions=1, control_group=0, degraded=0, undelivered=1, awards=0,
        undelivered_awards=1, presented=0, accepted=0, declined=0, converted=0, acceptance_rate=None,
        conversion_rate=None, revenue=0.0, cost=5.0, roi=-1.0,
    )  # fmt: skip


def test_kpis_per_channel_offer_and_model() -> None:
    agg = _kpis()
    web = _row(agg, "channel", "web")
    assert (web.decisions, web.control_group, web.degraded, web.awards, web.cost) == (3, 1, 1, 2, 4.0)
    call = _row(agg, "channel", "call_centre")
    assert (call.decisions, call.undelivered, call.awards, call.undelivered_awards, call.cost) == (0, 1, 0, 1, 5.0)
    assert (_row(agg, "offer", "o_a").decisions, _row(agg, "offer", "o_a").control_group) == (3, 1)
    assert _row(agg, "model_version", "(none)").degraded == 1
    m1 = _row(agg, "model_version", "m1")
    assert (m1.decisions, m1.awards, m1.accepted, m1.revenue, m1.cost) == (3, 2, 1, 50.0, 9.0)
    assert [r.dimension for r in agg.rows()][:2] == ["campaign", "campaign"]


def test_no_offer_reasons_and_timeline() -> None:
    agg = _kpis()
    assert [(r.reason, r.decisions) for r in agg.reason_counts()] == [("control_group", 2), ("degraded", 1)]
    points = agg.timeline(HOUR)
    assert [(p.start, p.campaign, p.awards, p.accepted, p.revenue, p.acceptance_rate) for p in points] == [
        ("1970-01-01T00:00:00+00:00", "A", 1, 0, 0.0, 0.0),
        ("1970-01-01T01:00:00+00:00", "A", 1, 1, 50.0, 1.0),
    ]
    assert [(p.awards, p.revenue) for p in agg.timeline(86_400.0)] == [(2, 50.0)]
    assert bucket_of(0.0, 2 * 86_400.0) == ("hour", HOUR)
    assert bucket_of(0.0, 2 * 86_400.0 + 1) == ("day", 86_400.0)


def test_unknown_cost_leaves_cost_and_roi_blank() -> None:
    agg = KpiAggregator({}, lambda _version, _offer: None)
    agg.add(decision("d1", 1.0, "c1", [("o_a", "A", "chosen")], ["o_a"]))
    row = _row(agg, "campaign", "A")
    assert (row.awards, row.cost, row.roi) == (1, None, None)


@dataclass(frozen=True)
class Conv:
    customer_id: str
    kind: str
    value: float
    ts: float


DAY = 86_400.0


def _programme(treated: int, treated_converting: int, held: int, held_converting: int) -> LiftAggregator:
    """Customers t0.. (treatment) and k0.. (control) with a first decision at 1000 + i; the
    first `..._converting` of each group buy 10.0 a day later."""
    agg = LiftAggregator(Period(window_seconds=7 * DAY))
    conversions = []
    for prefix, n, buying, control in (("t", treated, treated_converting, False), ("k", held, held_converting, True)):
        for i in range(n):
            agg.add_decision(decision(f"{prefix}{i}", 1000.0 + i, f"{prefix}{i}", control=control))
            if i < buying:
                conversions.append(Conv(f"{prefix}{i}", "purchase", 10.0, 1000.0 + i + DAY))
    assert agg.add_conversions(conversions) == len(conversions)
    return agg


def test_programme_lift_counts_and_point_estimates() -> None:
    result = _programme(40, 10, 30, 5).results([], Thresholds(), now=1e9)[0]
    assert (result.scope, result.name, result.enough_data, result.note) == ("programme", "programme", True, "")
    assert (result.treatment.customers, result.treatment.converted, result.treatment.revenue) == (40, 10, 100.0)
    assert (result.control.customers, result.control.converted, result.control.revenue) == (30, 5, 50.0)
    assert result.rate_difference is not None and result.relative_lift is not None
    assert result.rate_difference.value == pytest.approx(0.25 - 5 / 30, abs=1e-15)
    assert result.relative_lift.value == pytest.approx(0.25 / (5 / 30) - 1, abs=1e-12)
    assert result.revenue_difference is not None
    assert result.revenue_difference.value == pytest.approx(2.5 - 50 / 30, abs=1e-12)
    assert result.open_windows == 0


def test_not_enough_data_gives_the_point_and_the_reason_without_intervals() -> None:
    few_customers = _programme(40, 10, 29, 5).results([], Thresholds(), now=1e9)[0]
    assert (few_customers.enough_data, few_customers.rate_difference, few_customers.revenue_difference) == (
        False, None, None,
    )  # fmt: skip
    assert few_customers.note == "not enough data: control: 29 customers (< 30)"
    assert few_customers.rate_difference_point == pytest.approx(0.25 - 5 / 29, abs=1e-15)
    few_conversions = _programme(40, 4, 30, 5).results([], Thresholds(), now=1e9)[0]
    assert few_conversions.note == "not enough data: treatment: 4 conversions (< 5)"
    lowered = _programme(40, 4, 30, 5).results([], Thresholds(min_customers=30, min_conversions=4), now=1e9)[0]
    assert lowered.enough_data


def test_attribution_window_kinds_and_first_decision() -> None:
    agg = LiftAggregator(Period(window_seconds=100.0, kinds=frozenset({"purchase"})))
    agg.add_decision(decision("a2", 500.0, "a", control=True))
    agg.add_decision(decision("a1", 400.0, "a"))  # earlier, read later: the first decision wins
    agg.add_decision(decision("b1", 400.0, "b", degraded=True))  # degraded: never assigned
    agg.add_decision(decision("c1", 400.0, "c"))
    agg.add_decision(decision("d1", 400.0, "d"))
    agg.add_conversions(
        [
            Conv("a", "purchase", 7.0, 400.0),  # at the first decision: inside
            Conv("a", "purchase", 1.0, 500.0),  # at first + window: outside
            Conv("b", "purchase", 1.0, 450.0),  # no exposure
            Conv("c", "signup", 1.0, 450.0),  # a kind not counted
            Conv("d", "purchase", 1.0, 399.0),  # before the first decision
        ]
    )
    result = agg.results([], Thresholds(), now=450.0)[0]
    assert (result.treatment.customers, result.treatment.converted, result.treatment.revenue) == (3, 1, 7.0)
    assert result.control.customers == 0
    assert result.open_windows == 3
    assert agg.conversions_counted == 1


def test_campaign_lift_assigns_by_held_out_status_outside_the_universal_control_group() -> None:
    agg = LiftAggregator(Period(window_seconds=7 * DAY))
    agg.add_decision(decision("1", 10.0, "x", [("o_a", "A", HELD), ("o_b", "B", "chosen")], []))
    agg.add_decision(decision("2", 20.0, "x", [("o_a", "A", "chosen")], ["o_a"]))  # later: still control
    agg.add_decision(decision("3", 10.0, "y", [("o_a", "A", "contact policy")], []))  # not awarded: treated
    agg.add_decision(decision("4", 10.0, "z", [("o_a", "A", "chosen")], [], control=True))  # universal: out
    agg.add_conversions([Conv("x", "purchase", 5.0, 30.0), Conv("y", "purchase", 3.0, 30.0)])
    results = {r.name: r for r in agg.results(["C"], Thresholds(), now=1e9)}
    assert sorted(results) == ["A", "C", "programme"]
    a = results["A"]
    assert (a.scope, a.treatment.customers, a.treatment.converted, a.control.customers, a.control.converted) == (
        "campaign", 1, 1, 1, 1,
    )  # fmt: skip
    assert results["C"].treatment.customers == 0 and results["C"].rate_difference_point is None
    assert "B" not in results  # no holdout in the catalog, none seen
    assert (results["programme"].treatment.customers, results["programme"].control.customers) == (2, 1)


def test_thresholds_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        Thresholds(min_customers=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("7d", 1_000_000.0 - 7 * DAY), ("12h", 1_000_000.0 - 12 * 3600), ("2026-01-01", 1767225600.0),
     ("2026-01-01T01:00:00+01:00", 1767225600.0)],
)  # fmt: skip
def test_parse_time(text: str, expected: float) -> None:
    assert parse_time(text, now=1_000_000.0) == expected


READ_AS = "not an ISO 8601 time (2026-11-30, 2026-11-30T12:00:00+01:00) or a duration back from now (7d): "


@pytest.mark.parametrize(("text", "message"), [("yesterday", READ_AS + "'yesterday'"), ("7x", READ_AS + "'7x'")])
def test_parse_time_errors(text: str, message: str) -> None:
    with pytest.raises(PeriodError) as err:
        parse_time(text, now=0.0)
    assert str(err.value) == message


def test_durations_and_periods() -> None:
    assert parse_duration("90s") == 90.0 and parse_duration("2w") == 14 * DAY and parse_duration("1.5h") == 5400.0
    with pytest.raises(PeriodError, match="more than 0"):
        parse_duration("0d")
    with pytest.raises(PeriodError, match="must be before --until"):
        Period(since=10.0, until=10.0)
    assert Period(since=10.0, until=20.0).covers(10.0) and not Period(since=10.0, until=20.0).covers(20.0)
