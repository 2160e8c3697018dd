"""The report's period and attribution window as given on the command line: ISO 8601 times or
durations back from now ("7d", "12h", "30m", "2w", "90s")."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 7 * 86_400.0}


class PeriodError(ValueError):
    """A time or duration that cannot be read; the message says what was expected."""


def parse_duration(text: str) -> float:
    """Seconds of a duration such as "7d"; PeriodError otherwise (zero is refused too)."""
    found = _DURATION.match(text)
    if found is None:
        raise PeriodError(f"not a duration like 7d, 12h, 30m, 2w or 90s: {text!r}")
    seconds = float(found.group(1)) * _UNIT_SECONDS[found.group(2)]
    if seconds <= 0:
        raise PeriodError(f"a duration must be more than 0: {text!r}")
    return seconds


def parse_time(text: str, now: float) -> float:
    """Epoch seconds of an ISO 8601 time (naive = UTC) or of `now` minus a duration ("7d")."""
    if _DURATION.match(text):
        return now - parse_duration(text)
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise PeriodError(
            f"not an ISO 8601 time (2026-11-30, 2026-11-30T12:00:00+01:00) or a duration back from now (7d): {text!r}"
        ) from None
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp()


def iso(ts: float | None) -> str:
    """An epoch time as ISO 8601 in UTC to the second; "" for None."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class Period:
    """Decisions with since <= ts < until count (None: no bound); conversions count within
    `window_seconds` of a customer's first decision; `kinds` are the conversion kinds counted
    (empty: all)."""

    since: float | None = None
    until: float | None = None
    window_seconds: float = 7 * 86_400.0
    kinds: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise PeriodError(f"--since ({iso(self.since)}) must be before --until ({iso(self.until)})")
        if self.window_seconds <= 0:
            raise PeriodError("the attribution window must be more than 0 seconds")

    def covers(self, ts: float) -> bool:
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)

    def counts_kind(self, kind: str) -> bool:
        return not self.kinds or kind in self.kinds
