"""`nbo model compare`: acceptance and value per decision of each model version, from the log.

Read through the one log reader (server.state.log_reader). Decisions are grouped by the model
that decided and its role (champion, challenger, or "" when no split was on). Left out, and
counted: control-group decisions (nothing was awarded), degraded ones (no model decided) and
undelivered ones (nobody saw the offers).

* awarded: offers awarded; accepted: those with an ACCEPTED or CONVERTED outcome.
* acceptance rate: accepted / awarded.
* value per decision: per decision, the sum over its awarded offers of the largest value reported
  with an ACCEPTED or CONVERTED outcome (accepted then converted is one response, as in `nbo
  export`); 0 for a decision with nothing accepted; then the mean over decisions.

Intervals are 95%, by the normal approximation: a proportion p over n awarded offers has standard
error sqrt(p (1 - p) / n); a mean of per-decision values s / sqrt(n) (s the sample standard
deviation); a difference of two independent groups the root of the sum of their squared errors.
The offers of one decision are counted as independent, which narrows the acceptance interval a
little when decisions award several offers. A figure needs at least `min_n` decisions (value) or
awarded offers (acceptance) in each group compared, else it is "not enough data".

Each challenger is compared with the champion that decided the other customers while it ran:
the champion-role version with the most decisions inside the challenger's first..last decision.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from server.domain import RESPONSES
from server.models.champion import CHALLENGER, CHAMPION
from server.state.log_reader import LogReader

Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class Estimate:
    value: float
    low: float
    high: float

    @classmethod
    def around(cls, value: float, se: float) -> Estimate:
        return cls(value, value - Z95 * se, value + Z95 * se)


@dataclass(slots=True)
class Group:
    """The decisions of one model version in one role."""

    version: str
    role: str
    awarded: int = 0
    accepted: int = 0
    values: list[float] = field(default_factory=list)  # per decision
    times: list[float] = field(default_factory=list)  # per decision

    @property
    def decisions(self) -> int:
        return len(self.values)

    def _rate(self) -> tuple[float, float]:
        p = self.accepted / self.awarded
        return p, p * (1.0 - p) / self.awarded

    def _mean(self) -> tuple[float, float]:
        n = len(self.values)
        mean = math.fsum(self.values) / n
        var = math.fsum((v - mean) ** 2 for v in self.values) / (n - 1)
        return mean, var / n

    def acceptance(self, min_n: int) -> Estimate | None:
        if self.awarded < max(min_n, 1):
            return None
        p, var = self._rate()
        return Estimate.around(p, math.sqrt(var))

    def value(self, min_n: int) -> Estimate | None:
        if self.decisions < max(min_n, 2):
            return None
        mean, var = self._mean()
        return Estimate.around(mean, math.sqrt(var))


@dataclass(frozen=True, slots=True)
class Difference:
    """challenger - champion, each figure None when either group has too little data."""

    challenger: Group
    champion: Group
    acceptance: Estimate | None
    value: Estimate | None


@dataclass(slots=True)
class Comparison:
    groups: list[Group]
    differences: list[Difference]
    excluded: Counter[str]
    min_n: int


def _difference(challenger: Group, champion: Group, min_n: int) -> Difference:
    acceptance = value = None
    if challenger.acceptance(min_n) is not None and champion.acceptance(min_n) is not None:
        (p1, v1), (p0, v0) = challenger._rate(), champion._rate()
        acceptance = Estimate.around(p1 - p0, math.sqrt(v1 + v0))
    if challenger.value(min_n) is not None and champion.value(min_n) is not None:
        (m1, v1), (m0, v0) = challenger._mean(), champion._mean()
        value = Estimate.around(m1 - m0, math.sqrt(v1 + v0))
    return Difference(challenger, champion, acceptance, value)


def _responses(reader: LogReader, wanted: set[str]) -> dict[tuple[str, str], float]:
    """(decision id, offer id) -> the largest value of its ACCEPTED / CONVERTED outcomes."""
    out: dict[tuple[str, str], float] = {}
    for o in reader.outcomes():
        if o.decision_id in wanted and o.outcome in RESPONSES:
            key = (o.decision_id, o.offer_id)
            value = 0.0 if math.isnan(o.value) else o.value
            out[key] = max(out.get(key, value), value)
    return out


def compare(
    reader: LogReader, *, since: float | None = None, until: float | None = None, min_n: int = 30
) -> Comparison:
    """Each model version's figures over the decisions logged in [since, until)."""
    excluded: Counter[str] = Counter()
    kept = []
    for rec in reader.decisions():
        if (since is not None and rec.ts < since) or (until is not None and rec.ts >= until):
            continue
        reason = (
            "control group"
            if rec.control_group
            else "degraded"
            if rec.degraded
            else "undelivered"
            if rec.undelivered
            else ""
        )
        if reason:
            excluded[reason] += 1
            continue
        kept.append((rec.decision_id, rec.ts, rec.model_version, rec.model_role, rec.chosen))
    responses = _responses(reader, {k[0] for k in kept})
    groups: dict[tuple[str, str], Group] = {}
    for decision_id, ts, version, role, chosen in kept:
        group = groups.get((version, role))
        if group is None:
            group = groups[(version, role)] = Group(version, role)
        hits = [responses[(decision_id, o)] for o in chosen if (decision_id, o) in responses]
        group.awarded += len(chosen)
        group.accepted += len(hits)
        group.values.append(math.fsum(hits))
        group.times.append(ts)
    ordered = sorted(groups.values(), key=lambda g: (min(g.times), g.version, g.role))
    return Comparison(ordered, _pairs(ordered, min_n), excluded, min_n)


def _pairs(groups: list[Group], min_n: int) -> list[Difference]:
    champions = [g for g in groups if g.role == CHAMPION]
    out = []
    for challenger in (g for g in groups if g.role == CHALLENGER):
        first, last = min(challenger.times), max(challenger.times)
        overlap: dict[str, int] = defaultdict(int)
        for g in champions:
            if g.version != challenger.version:
                overlap[g.version] += sum(first <= t <= last for t in g.times)
        if overlap and max(overlap.values()) > 0:
            best = max(overlap, key=lambda v: overlap[v])
            champion = next(g for g in champions if g.version == best)
            out.append(_difference(challenger, champion, min_n))
    return out
