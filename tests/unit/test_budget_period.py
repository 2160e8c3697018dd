"""Period.at caches its calendar per zone and minute: it must answer exactly as computing afresh."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from server.catalog.budgets import Period, _local_calendar


def fresh(now: float, tz: ZoneInfo) -> Period:
    day, hour, start, end = _local_calendar(now, tz)
    return Period(day=day, hour=hour, day_fraction=(now - start) / (end - start))


def around(when: datetime, seconds: int = 7200) -> list[float]:
    """Seconds either side of `when`, in order (the cache sees the minute change), and shuffled."""
    t = when.timestamp()
    ordered = [t + d + 0.25 for d in range(-seconds, seconds, 7)]
    shuffled = ordered[:]
    random.Random(3).shuffle(shuffled)
    return ordered + shuffled


def test_matches_a_fresh_computation_across_dst_and_odd_offsets() -> None:
    cases = [
        ("Europe/Amsterdam", datetime(2027, 3, 28, 1, 0, tzinfo=UTC)),  # spring forward
        ("Europe/Amsterdam", datetime(2027, 10, 31, 1, 0, tzinfo=UTC)),  # fall back: 02:xx twice
        ("Australia/Lord_Howe", datetime(2027, 4, 3, 15, 0, tzinfo=UTC)),  # a half-hour DST shift
        ("Asia/Kathmandu", datetime(2027, 1, 15, 18, 15, tzinfo=UTC)),  # +05:45: midnight at xx:15 UTC
        ("Africa/Monrovia", datetime(1960, 1, 1, 0, 44, 30, tzinfo=UTC)),  # -00:44:30: hours mid-minute
        ("UTC", datetime(2027, 1, 1, 0, 0, tzinfo=UTC)),
    ]
    for zone, when in cases:
        tz = ZoneInfo(zone)
        for now in around(when):
            assert Period.at(now, tz) == fresh(now, tz), (zone, now)


def test_day_fraction_at_midnight_and_noon() -> None:
    tz = ZoneInfo("Asia/Kathmandu")
    midnight = datetime(2027, 1, 16, tzinfo=tz).timestamp()
    assert Period.at(midnight, tz) == Period(day="2027-01-16", hour="2027-01-16T00", day_fraction=0.0)
    assert Period.at(midnight + 43200, tz).day_fraction == 0.5
