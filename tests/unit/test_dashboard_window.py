"""The dashboard's rolling window: per-second counts, per-campaign counts, repeats, pruning."""

from __future__ import annotations

import math

import pytest

from server.dashboard.window import UNKNOWN_CAMPAIGN, CampaignCounts, RollingWindow
from server.state.records import Candidates, DecisionRecord, OutcomeRecord
from tests.records import decision_record

T0 = 1_800_000_000  # a whole second
CAMPAIGN_OF = {"o_a1": "a", "o_a2": "a", "o_b": "b"}


def decision(
    n: int, ts: float, chosen: tuple[str, ...] = (), offers: tuple[str, ...] = ("o_a1", "o_b"), reason: str = "none"
) -> DecisionRecord:
    cands = Candidates(
        offer_id=list(offers),
        campaign_id=[CAMPAIGN_OF[o] for o in offers],
        propensity=[0.1] * len(offers),
        expected_value=[1.0] * len(offers),
        score=[1.0] * len(offers),
        selection_probability=[1.0] * len(offers),
        status=["chosen" if o in chosen else "rank" for o in offers],
    )
    return decision_record(
        decision_id=f"d{n}",
        ts=ts,
        customer_id=f"c{n}",
        schema_version=1,
        candidates=cands,
        chosen=list(chosen),
        no_offer_reason=reason if not chosen else "none",
        model_version="m1",
        catalog_version=f"{n}-abc",
        bandit_version="arms-3",
        degraded=reason == "degraded",
        control_group=reason == "control_group",
    )


def outcome(n: int, offer: str, kind: str, ts: float, event: str = "") -> OutcomeRecord:
    return OutcomeRecord(
        event_id=event or f"d{n}:{offer}:{kind}",
        decision_id=f"d{n}",
        customer_id=f"c{n}",
        offer_id=offer,
        outcome=kind,
        value=0.0,
        ts=ts,
        channel="web",
        propensity=math.nan,
        prior_sd=math.nan,
    )


def test_counts_per_campaign_and_second() -> None:
    w = RollingWindow(600)
    w.prune(T0)
    w.add_decision(decision(1, T0 + 0.2, chosen=("o_a1",)))
    w.add_decision(decision(2, T0 + 0.9, chosen=("o_b",)))
    w.add_decision(decision(3, T0 + 1.5, reason="no_eligible_offer", offers=()))
    w.add_decision(decision(4, T0 + 3.0, chosen=("o_a1", "o_b")))
    w.add_decision(decision(5, T0 + 3.1, reason="budget_exhausted", offers=("o_a2",)))
    assert w.add_outcome(outcome(1, "o_a1", "presented", T0 + 5), CAMPAIGN_OF.get)
    assert w.add_outcome(outcome(1, "o_a1", "accepted", T0 + 6), CAMPAIGN_OF.get)
    assert w.add_outcome(outcome(1, "o_a1", "converted", T0 + 7), CAMPAIGN_OF.get)  # the same acceptance
    assert w.add_outcome(outcome(4, "o_b", "converted", T0 + 8), CAMPAIGN_OF.get)
    assert w.add_outcome(outcome(4, "o_a1", "declined", T0 + 8), CAMPAIGN_OF.get)
    assert w.add_outcome(outcome(9, "o_gone", "accepted", T0 + 8), CAMPAIGN_OF.get)

    t = w.totals(T0 + 10)
    assert (t.since, t.until) == (T0 + 10 - 600, T0 + 10)
    assert (t.decisions, t.awards, t.acceptances) == (5, 4, 3)
    assert t.acceptance_rate == 3 / 4
    assert t.no_offer == {"no_eligible_offer": 1, "budget_exhausted": 1}
    assert t.outcomes == {"accepted": 2, "converted": 2, "declined": 1, "presented": 1}
    assert t.campaigns == {
        "a": CampaignCounts(decisions=4, awards=2, acceptances=1),
        "b": CampaignCounts(decisions=3, awards=2, acceptances=1),
        UNKNOWN_CAMPAIGN: CampaignCounts(decisions=0, awards=0, acceptances=1),
    }
    assert t.campaigns["a"].acceptance_rate == 0.5
    assert CampaignCounts(3, 0, 0).acceptance_rate is None
    assert w.decisions_per_second(T0 + 4, 6) == [0, 2, 1, 0, 2, 0]
    # the last 2 seconds up to T0 + 3: seconds T0 + 2 and T0 + 3
    assert w.totals(T0 + 3, 2).decisions == 2
    assert w.latest is not None and (w.latest.ts, w.latest.catalog) == (T0 + 3.1, "5-abc")


def test_repeats_are_counted_once_while_ids_are_kept() -> None:
    w = RollingWindow(600, repeat_seconds=60)
    w.prune(T0)
    assert w.add_decision(decision(1, T0 + 1, chosen=("o_a1",)))
    assert not w.add_decision(decision(1, T0 + 1, chosen=("o_a1",)))
    assert w.add_outcome(outcome(1, "o_a1", "accepted", T0 + 2), CAMPAIGN_OF.get)
    assert not w.add_outcome(outcome(1, "o_a1", "accepted", T0 + 2), CAMPAIGN_OF.get)
    assert w.repeats == 2
    # past repeat_seconds the ids are forgotten: a late repeat counts again (the writer's
    # repeats follow the first write closely)
    w.prune(T0 + 62)
    assert w.add_decision(decision(1, T0 + 1, chosen=("o_a1",)))
    t = w.totals(T0 + 62)
    assert (t.decisions, t.awards, t.acceptances) == (2, 2, 1)


def test_the_window_rolls_on_and_forgets() -> None:
    w = RollingWindow(60)
    w.prune(T0)
    for i in range(120):  # one decision a second for two minutes, awarding every other one
        w.add_decision(decision(i, T0 + i + 0.5, chosen=("o_a1",) if i % 2 == 0 else ()))
        w.prune(T0 + i + 1)
    # at T0 + 120 the window (T0 + 60, T0 + 120] holds decisions 61 .. 119 (the seconds T0 + 61 ..)
    t = w.totals(T0 + 120)
    assert (t.decisions, t.awards) == (59, 29)
    assert t.campaigns["a"] == CampaignCounts(59, 29, 0)
    assert w.held_seconds == 59
    assert w.totals(T0 + 120, 10).decisions == 9  # the second T0 + 120 has had none yet
    assert w.totals(T0 + 119, 10).decisions == 10
    # an acceptance of an award that left the window still counts, in the second it arrived
    assert w.add_outcome(outcome(0, "o_a1", "accepted", T0 + 120.5), CAMPAIGN_OF.get)
    assert w.totals(T0 + 121).acceptances == 1
    # records older than the window are refused, and counted as such
    assert not w.add_decision(decision(500, T0 + 30, chosen=("o_a1",)))
    assert w.too_old == 1
    w.prune(T0 + 300)
    assert w.held_seconds == 0
    assert w.totals(T0 + 300).decisions == 0


def test_an_acceptance_is_forgotten_with_its_second() -> None:
    w = RollingWindow(60)
    w.prune(T0)
    w.add_outcome(outcome(1, "o_b", "accepted", T0 + 1), CAMPAIGN_OF.get)
    w.prune(T0 + 100)
    # the ACCEPTED left the window: a CONVERTED now is the window's first acceptance of the offer
    assert w.add_outcome(outcome(1, "o_b", "converted", T0 + 100), CAMPAIGN_OF.get)
    assert w.totals(T0 + 100).campaigns == {"b": CampaignCounts(0, 0, 1)}


def test_control_group_and_degraded_are_counted() -> None:
    w = RollingWindow(60)
    w.prune(T0)
    w.add_decision(decision(1, T0 + 1, reason="control_group"))
    w.add_decision(decision(2, T0 + 1, reason="degraded", offers=()))
    t = w.totals(T0 + 1)
    assert (t.control_group, t.degraded, t.awards) == (1, 1, 0)
    assert t.no_offer == {"control_group": 1, "degraded": 1}


def test_a_window_shorter_than_a_minute_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 60 seconds"):
        RollingWindow(59)
