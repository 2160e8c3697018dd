"""The rule language's shared parts: its error, the decision time it reads and the shape of a
compiled function (see server.catalog.rules)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias


class RuleError(Exception):
    """A rule that does not compile; `column` is the 1-based offset where the problem starts."""

    message: str
    column: int

    def __init__(self, message: str, column: int) -> None:
        super().__init__(message, column)
        self.message = message
        self.column = column

    def __str__(self) -> str:
        return f"col {self.column}: {self.message}"


@dataclass(frozen=True, slots=True)
class Now:
    """The parts of the decision time a rule can read."""

    hour: int  # 0-23
    weekday: int  # 0 = Monday .. 6 = Sunday
    month: int  # 1-12
    day: int  # 1-31

    @classmethod
    def from_datetime(cls, dt: datetime) -> Now:
        return cls(hour=dt.hour, weekday=dt.weekday(), month=dt.month, day=dt.day)


NumFn: TypeAlias = Callable[[Sequence[float], Mapping[str, float], Now], float]
BoolFn: TypeAlias = Callable[[Sequence[float], Mapping[str, float], Now], bool]
