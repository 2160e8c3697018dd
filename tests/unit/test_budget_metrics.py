"""Budget rows of `nbo budgets` as gauge samples: one per cap, money in currency units, pace on the
cap its pacing applies to, and the end of each cap's period."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from server.metrics import BudgetSample, budget_families
from server.state.budget_counters import ScopeRow
from server.state.budget_metrics import day_end, scope_samples

LONDON = ZoneInfo("Europe/London")


def row(**kw: object) -> ScopeRow:
    base: dict[str, object] = dict.fromkeys(ScopeRow.__slots__)
    base.update(kind="offer", id="o1")
    base.update(kw)
    return ScopeRow(**base)  # type: ignore[arg-type]


def test_day_end_is_the_next_local_midnight_even_on_a_short_day() -> None:
    # 2026-03-29 has 23 hours in London (clocks go forward at 01:00)
    noon = datetime(2026, 3, 29, 12, 0, tzinfo=LONDON).timestamp()
    assert day_end(noon, LONDON) == datetime(2026, 3, 30, 0, 0, tzinfo=LONDON).timestamp()
    assert day_end(noon, LONDON) - datetime(2026, 3, 29, 0, 0, tzinfo=LONDON).timestamp() == 23 * 3600


def test_one_sample_per_cap_with_its_pace_and_period_end() -> None:
    paced_by_day = row(
        total_awards=500, daily_awards=40, pacing="day +5%", used_total=120, used_today=10, paced_awards=22
    )
    assert scope_samples(paced_by_day, "promo", window_end=2000.0, today_end=1000.0) == [
        BudgetSample("offer", "o1", "promo", "awards", "total", 120, 500, None, 2000.0),
        BudgetSample("offer", "o1", "promo", "awards", "day", 10, 40, 22, 1000.0),
    ]
    spend = row(
        kind="campaign", id="promo", total_spend_cents=1_000_000, spend_cents=12_345, pacing="window +2%",
        paced_spend_cents=50_000,
    )  # fmt: skip
    assert scope_samples(spend, "promo", window_end=None, today_end=1000.0) == [
        BudgetSample("campaign", "promo", "promo", "spend", "total", 123.45, 10_000.0, 500.0, None)
    ]
    assert scope_samples(row(per_customer=1), "promo", None, 1000.0) == []  # counted per customer only


def test_families_leave_out_what_a_cap_does_not_have() -> None:
    used, limit, paced, end = budget_families(
        [BudgetSample("offer", "o1", "promo", "awards", "total", 3, 10, None, None)]
    )
    assert [s.value for s in used.samples] == [3] and [s.value for s in limit.samples] == [10]
    assert paced.samples == [] and end.samples == []
    assert used.samples[0].labels == {
        "kind": "offer", "id": "o1", "campaign": "promo", "unit": "awards", "period": "total"
    }  # fmt: skip
