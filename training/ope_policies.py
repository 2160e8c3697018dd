"""Target policies for `nbo ope`: per logged row, a distribution over offers.

A `TargetPolicy` turns the logged dataset into a `PolicyDistribution`: for every row the
probability it would give each offer. Probabilities of a row may sum to less than 1; the rest
is "send nothing", whose reward is 0 (e.g. every candidate below the EV minimum). Policies:

* `LoggingPolicy` - the logged probability of the logged offer only (a sanity check: its IPS
  estimate is the on-policy mean; the rest of the logging distribution is unknown, so no DR);
* `UniformPolicy` - uniform over the row's candidates;
* `CsvPolicy` - computed elsewhere: per decision (`decision_id,offer_id,probability`) or per
  placement (`placement,offer_id,probability`, restricted to the row's candidates and
  renormalised);
* `ModelPolicy` - a model artifact ranking the row's candidates like the server (tier, then
  P x C x V x L, EV minimum), greedy or with softmax / epsilon exploration;
* `BanditPolicy` - the server's Thompson-sampling policy (server/bandit.py) over the same
  ranking, with the catalog's `bandit:` settings or others.

Candidates come from the current catalog (`training.ope_data.Rules`); without a catalog they
are the offers logged on the row's channel.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from server.catalog.exploration import BanditPolicy as ServerBandit
from server.catalog.exploration import ChannelExploration
from server.domain import Channel
from server.learning.arm_inputs import input_rows
from server.learning.bandit import Candidates as BanditCandidates
from server.learning.bandit import decision_rng, selection_probabilities
from server.learning.posterior import NO_ARMS, Arms, decode_arm, posterior_at
from server.pipeline.arbitration import rank
from training.ope_data import F64, I64, Candidates, LoggedData, OpeInputError, Rules, ScoringModel, Str

SUM_TOLERANCE = 1e-6
Kind = Literal["decision", "placement"]
CSV_HEADERS: dict[Kind, tuple[str, str, str]] = {
    "decision": ("decision_id", "offer_id", "probability"),
    "placement": ("placement", "offer_id", "probability"),
}


@dataclass(frozen=True)
class PolicyDistribution:
    """Entries (row, offer, probability), sorted by row; rows absent send nothing.

    `complete` is False when only the logged offer's probability is known (the logging policy):
    enough for IPS and SNIPS, not for the direct part of DR.
    """

    n_rows: int
    row: I64
    offer_id: Str
    prob: F64
    complete: bool = True
    notes: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        n_rows: int,
        entries: tuple[list[int], list[str], list[float]],
        *,
        complete: bool = True,
        notes: tuple[str, ...] = (),
    ) -> PolicyDistribution:
        rows, offers, probs = entries
        row = np.asarray(rows, dtype=np.int64)
        order = np.argsort(row, kind="stable")
        offer = np.asarray(offers, dtype=np.str_) if offers else np.zeros(0, dtype=np.str_)
        return cls(
            n_rows, row[order], offer[order], np.asarray(probs, dtype=np.float64)[order], complete=complete, notes=notes
        )

    def total(self) -> F64:
        """Mass per row (1 - total = probability of sending nothing)."""
        out: F64 = np.bincount(self.row, weights=self.prob, minlength=self.n_rows).astype(np.float64)
        return out

    def of_logged(self, log: LoggedData) -> F64:
        """pi(a_i | x_i): the probability of each row's logged offer."""
        hit = self.offer_id == log.offer_id[self.row]
        out: F64 = np.bincount(self.row[hit], weights=self.prob[hit], minlength=self.n_rows).astype(np.float64)
        return out

    def as_dicts(self) -> list[dict[str, float]]:
        out: list[dict[str, float]] = [{} for _ in range(self.n_rows)]
        for r, o, p in zip(self.row.tolist(), self.offer_id.tolist(), self.prob.tolist(), strict=True):
            out[r][o] = p
        return out


class TargetPolicy(Protocol):
    """A candidate policy: its distribution over offers for every logged row."""

    @property
    def name(self) -> str: ...

    def distribution(self, log: LoggedData) -> PolicyDistribution: ...


def logged_offers_by_channel(log: LoggedData) -> dict[str, list[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for ch, o in zip(log.channel.tolist(), log.offer_id.tolist(), strict=True):
        out[ch].add(o)
    return {ch: sorted(v) for ch, v in out.items()}


def candidate_lists(log: LoggedData, rules: Rules | None) -> list[list[str]]:
    """Per row, its candidate offers: the catalog's (rules) or, without one, the channel's logged offers."""
    if rules is None:
        by_channel = logged_offers_by_channel(log)
        return [by_channel[ch] for ch in log.channel.tolist()]
    out: list[list[str]] = [[] for _ in range(len(log))]
    for r, o in zip(rules.candidates.row.tolist(), rules.candidates.offer_id.tolist(), strict=True):
        out[r].append(o)
    return out


# -- simple policies ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LoggingPolicy:
    name: str = "logging"

    def distribution(self, log: LoggedData) -> PolicyDistribution:
        ok = np.flatnonzero(np.isfinite(log.mu))
        return PolicyDistribution.build(
            len(log),
            (ok.tolist(), log.offer_id[ok].tolist(), log.mu[ok].tolist()),
            complete=False,
            notes=("only the logged offer's probability is known: IPS and SNIPS only (check: = the logged mean)",),
        )


@dataclass(frozen=True)
class UniformPolicy:
    rules: Rules | None = None
    name: str = "uniform"

    def distribution(self, log: LoggedData) -> PolicyDistribution:
        n = len(log)
        if self.rules is not None:
            row, offer = self.rules.candidates.row, self.rules.candidates.offer_id
        else:
            by_channel = logged_offers_by_channel(log)
            lists = [by_channel[ch] for ch in log.channel.tolist()]
            row = np.repeat(np.arange(n, dtype=np.int64), [len(x) for x in lists])
            offer = np.asarray([o for x in lists for o in x], dtype=np.str_)
        count = np.bincount(row, minlength=n)
        prob = 1.0 / count[row]
        return PolicyDistribution(n, row, offer, prob.astype(np.float64), notes=_candidate_note(self.rules))


def _candidate_note(rules: Rules | None) -> tuple[str, ...]:
    if rules is not None:
        return ()
    return ("no --catalog: a row's candidates are the offers logged on its channel, not the current rules",)


# -- CSV policies ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyTable:
    """A parsed policy CSV: key (decision id or placement) -> offer -> probability."""

    kind: Kind
    path: str
    probs: Mapping[str, Mapping[str, float]]
    lines: Mapping[str, int] = field(default_factory=dict)  # first line of each key


def read_policy_csv(path: Path) -> PolicyTable:
    """Parse and validate a policy CSV; OpeInputError with `file:line` on the first problem."""
    try:
        fh = path.open(newline="", encoding="utf-8-sig")
    except OSError as err:
        raise OpeInputError(f"{path}: {err.strerror}") from None
    with fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise OpeInputError(f"{path}:1: empty file; expected a header {_headers()}")
        names = tuple(h.strip() for h in header)
        kind = next((k for k, h in CSV_HEADERS.items() if sorted(h) == sorted(names)), None)
        if kind is None:
            raise OpeInputError(f"{path}:1: header is {','.join(names)!r}; expected {_headers()}")
        key_col, offer_col, prob_col = (names.index(c) for c in CSV_HEADERS[kind])
        probs: dict[str, dict[str, float]] = defaultdict(dict)
        first: dict[str, int] = {}
        seen: dict[tuple[str, str], int] = {}
        for line, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(names):
                raise OpeInputError(f"{path}:{line}: expected {len(names)} fields, got {len(row)}")
            key, offer, raw = row[key_col].strip(), row[offer_col].strip(), row[prob_col].strip()
            if kind == "decision" and not key:
                raise OpeInputError(f"{path}:{line}: column 'decision_id' is empty")
            if not offer:
                raise OpeInputError(f"{path}:{line}: column 'offer_id' is empty")
            try:
                p = float(raw)
            except ValueError:
                raise OpeInputError(f"{path}:{line}: column 'probability' must be a number; got {raw!r}") from None
            if not 0.0 <= p <= 1.0:  # also rejects NaN
                raise OpeInputError(f"{path}:{line}: column 'probability' must be in [0, 1]; got {raw}")
            if (key, offer) in seen:
                raise OpeInputError(
                    f"{path}:{line}: offer {offer!r} is listed twice for {kind} {key!r} "
                    f"(first at line {seen[key, offer]})"
                )
            seen[key, offer] = line
            first.setdefault(key, line)
            probs[key][offer] = p
    if not probs:
        raise OpeInputError(f"{path}: no rows after the header")
    for key, dist in probs.items():
        total = math.fsum(dist.values())
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise OpeInputError(
                f"{path}:{first[key]}: probabilities of {kind} {key!r} sum to {total:.6g}; they must sum to 1 "
                f"(within {SUM_TOLERANCE:g})"
            )
    return PolicyTable(kind, str(path), dict(probs), first)


def _headers() -> str:
    return " or ".join(repr(",".join(h)) for h in CSV_HEADERS.values())


@dataclass(frozen=True)
class CsvPolicy:
    """A policy computed elsewhere, per decision or per placement.

    Per decision, each row takes its decision's distribution as given (a decision logged with
    several offers gives each of its rows the same distribution). Per placement, the
    placement's distribution is restricted to the row's candidates and renormalised; where no
    candidate has mass the policy sends nothing. The web's placement in the synthetic log is
    `home_banner`; the call centre's is empty (write it as `,offer_id,probability`).
    """

    table: PolicyTable
    rules: Rules | None = None
    name: str = "csv"

    def distribution(self, log: LoggedData) -> PolicyDistribution:
        if self.table.kind == "decision":
            return self._per_decision(log)
        return self._per_placement(log)

    def _per_decision(self, log: LoggedData) -> PolicyDistribution:
        probs = self.table.probs
        missing = [i for i, d in enumerate(log.decision_id.tolist()) if d not in probs]
        if missing:
            i = missing[0]
            raise OpeInputError(
                f"{self.table.path}: no probabilities for decision {str(log.decision_id[i])!r} "
                f"({log.where(i)}){f' and {len(missing) - 1} more' if len(missing) > 1 else ''}"
            )
        rows: list[int] = []
        offers: list[str] = []
        ps: list[float] = []
        for i, d in enumerate(log.decision_id.tolist()):
            for o, p in probs[d].items():
                if p > 0.0:
                    rows.append(i)
                    offers.append(o)
                    ps.append(p)
        return PolicyDistribution.build(len(log), (rows, offers, ps))

    def _per_placement(self, log: LoggedData) -> PolicyDistribution:
        probs = self.table.probs
        missing = sorted({p for p in log.placement.tolist() if p not in probs})
        if missing:
            shown = ", ".join(repr(p) for p in missing)
            raise OpeInputError(
                f"{self.table.path}: no probabilities for placement {shown} of the log "
                "(the call centre's placement is empty: write its rows as ',offer_id,probability')"
            )
        rows: list[int] = []
        offers: list[str] = []
        ps: list[float] = []
        empty = 0
        candidates = candidate_lists(log, self.rules)
        for i, (placement, cands) in enumerate(zip(log.placement.tolist(), candidates, strict=True)):
            dist = probs[placement]
            kept = [(o, dist[o]) for o in cands if dist.get(o, 0.0) > 0.0]
            total = math.fsum(p for _, p in kept)
            if total <= 0.0:
                empty += 1
                continue
            for o, p in kept:
                rows.append(i)
                offers.append(o)
                ps.append(p / total)
        notes = _candidate_note(self.rules)
        if empty:
            notes += (
                f"{empty} row(s) have no candidate with mass in their placement's distribution: "
                "the policy sends nothing there",
            )
        return PolicyDistribution.build(len(log), (rows, offers, ps), notes=notes)


# -- a model artifact under the current rules --------------------------------------------------
@dataclass(frozen=True)
class Exploration:
    """How a ranking becomes a distribution.

    `temperature` 0 is greedy on the server's ranking; T > 0 spreads the first place over the
    best tier present with probability proportional to (P x C x V x L)^(1/T) (tiers stay
    strict, as in the server's bandit). `epsilon` then mixes in the uniform distribution over
    the ranked candidates (those clearing the EV minimum) of that tier, as the server's bandit
    does unless its catalog sets `cross_tier`.
    """

    temperature: float = 0.0
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise OpeInputError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise OpeInputError(f"--epsilon must be in [0, 1], got {self.epsilon}")

    def spread(self, score: F64, tier: I64) -> F64:
        """Distribution over ranked candidates (best first) given their scores and tiers."""
        n = score.size
        pi = np.zeros(n)
        best = tier == tier[0]
        if self.temperature == 0.0:
            pi[0] = 1.0
        else:
            with np.errstate(divide="ignore"):
                logs = np.log(np.maximum(score[best], 0.0)) / self.temperature
            # all scores 0: nothing to prefer, spread evenly over the tier
            weights = np.ones(int(best.sum())) if np.isneginf(logs).all() else np.exp(logs - logs.max())
            pi[best] = weights / weights.sum()
        if self.epsilon > 0.0:
            pi[best] = (1.0 - self.epsilon) * pi[best] + self.epsilon / int(best.sum())
        return pi


@dataclass(frozen=True)
class ModelPolicy:
    """A model artifact serving under the current catalog's rules."""

    model: ScoringModel
    rules: Rules
    exploration: Exploration = Exploration()
    name: str = "model"

    def distribution(self, log: LoggedData) -> PolicyDistribution:
        cand = self.rules.candidates
        propensity = self.model.score(self.rules, log, cand.row, cand.offer_id)
        rows: list[int] = []
        offers: list[str] = []
        ps: list[float] = []
        below = 0
        for i, sl in _row_slices(cand, len(log)):
            view = self.rules.catalog.views[Channel(str(log.channel[i]))]
            positions = cand.position[sl]
            ranking = rank(view, positions.astype(np.intp), propensity[sl], self.rules.catalog.min_expected_value)
            order = ranking.order
            if order.size == 0:
                below += 1
                continue
            pi = self.exploration.spread(ranking.score[order], view.tier[positions[order]])
            for j, p in zip(order.tolist(), pi.tolist(), strict=True):
                if p > 0.0:
                    rows.append(i)
                    offers.append(view.offer_ids[int(positions[j])])
                    ps.append(p)
        notes: tuple[str, ...] = ()
        if below:
            notes = (f"{below} row(s) have candidates but none clears min_expected_value: the policy sends nothing",)
        return PolicyDistribution.build(len(log), (rows, offers, ps), notes=notes)


@dataclass(frozen=True)
class BanditPolicy:
    """The server's Thompson-sampling policy (server/bandit.py) under the current rules.

    Candidates are ranked like the server (tier, P x C x V x L, EV minimum) with propensities
    from `model` (or the catalog priors, as a server without a model); the distribution is
    `server.learning.bandit.selection_probabilities` with the draws seeded by the policy seed and the
    logged decision id, so a log written by the server under the same catalog, model and arms
    is reproduced. The learned arms come from `arms` (the learner's hash); without them every
    arm is at its prior. `settings` is the catalog's `bandit:` section, possibly overridden.
    """

    rules: Rules
    settings: ServerBandit
    model: ScoringModel | None = None
    arms: Arms = NO_ARMS
    name: str = "bandit"

    def distribution(self, log: LoggedData) -> PolicyDistribution:
        cand = self.rules.candidates
        catalog = self.rules.catalog
        if self.model is not None:
            propensity = self.model.score(self.rules, log, cand.row, cand.offer_id)
            known_offers = frozenset(self.model.spec.offer_levels())
        else:
            propensity = np.array(
                [
                    catalog.views[Channel(str(log.channel[r]))].prior[p]
                    for r, p in zip(cand.row.tolist(), cand.position.tolist(), strict=True)
                ]
            )
            known_offers = frozenset()
        rows: list[int] = []
        offers: list[str] = []
        ps: list[float] = []
        below = 0
        for i, sl in _row_slices(cand, len(log)):
            channel = Channel(str(log.channel[i]))
            view = catalog.views[channel]
            positions = cand.position[sl].astype(np.intp)
            p = propensity[sl]
            ranking = rank(view, positions, p, catalog.min_expected_value)
            if ranking.order.size == 0:
                below += 1
                continue
            ranked = positions[ranking.order]
            ids = [view.offer_ids[int(q)] for q in ranked]
            known = np.fromiter((o in known_offers for o in ids), dtype=np.bool_, count=len(ids))
            inputs = None
            if self.settings.inputs:
                inputs = input_rows(self.settings, self.rules.vectors[i], self.rules.contexts[i], p[ranking.order])
            mean, sd, _ = posterior_at(self.settings, self.arms, channel.value, view.offer_ids, ranked, known, inputs)
            drawn = BanditCandidates(
                p[ranking.order],
                mean,
                sd,
                view.tier[ranked],
                view.gain[ranked],
                view.loss[ranked] if view.margin else None,
            )
            pi = selection_probabilities(
                self.settings,
                self.settings.on(channel),
                drawn,
                decision_rng(self.settings.seed, str(log.decision_id[i])),
            )
            for o, q in zip(ids, pi.tolist(), strict=True):
                if q > 0.0:
                    rows.append(i)
                    offers.append(o)
                    ps.append(q)
        notes: tuple[str, ...] = (
            f"selection probabilities from {self.settings.samples} posterior draws per row "
            f"(Monte Carlo error below {0.5 / math.sqrt(self.settings.samples):.3f})",
        )
        if below:
            notes += (f"{below} row(s) have candidates but none clears min_expected_value: the policy sends nothing",)
        return PolicyDistribution.build(len(log), (rows, offers, ps), notes=notes)


def bandit_settings(
    catalog_settings: ServerBandit, *, exploration: float | None = None, epsilon: float | None = None
) -> ServerBandit:
    """The catalog's bandit settings with `exploration` / `epsilon` overriding every channel."""
    if exploration is None and epsilon is None:
        return catalog_settings

    def override(ex: ChannelExploration) -> ChannelExploration:
        return ChannelExploration(
            ex.exploration if exploration is None else exploration, ex.epsilon if epsilon is None else epsilon
        )

    if exploration is not None and not 0.0 <= exploration <= 5.0:
        raise OpeInputError(f"--exploration must be in [0, 5], got {exploration}")
    if epsilon is not None and not 0.0 <= epsilon <= 1.0:
        raise OpeInputError(f"--epsilon must be in [0, 1], got {epsilon}")
    return replace(
        catalog_settings,
        channels={ch: override(ex) for ch, ex in catalog_settings.channels.items()},
        default=override(catalog_settings.default),
    )


def read_arms(path: Path) -> Arms:
    """A JSON object of the learner's arms hash: `"offer|channel": "mean,precision,n"`."""
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise OpeInputError(f"--arms {path}: {err.strerror}") from None
    except ValueError as err:
        raise OpeInputError(f"--arms {path}: not JSON: {err}") from None
    if not isinstance(data, dict):
        raise OpeInputError(f'--arms {path}: expected an object of "offer|channel": "mean,precision,n"')
    arms = {}
    for key, raw in data.items():
        try:
            arms[str(key)] = decode_arm(str(raw))
        except ValueError:
            raise OpeInputError(f'--arms {path}: arm {key!r} has {raw!r}; expected "mean,precision,n"') from None
    return Arms(version=0, arms=arms)


def _row_slices(cand: Candidates, n: int) -> list[tuple[int, slice]]:
    bounds = cand.bounds(n)
    return [(i, slice(int(bounds[i]), int(bounds[i + 1]))) for i in range(n) if bounds[i + 1] > bounds[i]]


def entries_of(dist: PolicyDistribution, row: int) -> dict[str, float]:
    lo, hi = np.searchsorted(dist.row, [row, row + 1])
    return dict(zip(dist.offer_id[lo:hi].tolist(), dist.prob[lo:hi].tolist(), strict=True))


__all__ = [
    "BanditPolicy",
    "CsvPolicy",
    "Exploration",
    "LoggingPolicy",
    "ModelPolicy",
    "PolicyDistribution",
    "PolicyTable",
    "TargetPolicy",
    "UniformPolicy",
    "bandit_settings",
    "candidate_lists",
    "read_arms",
    "read_policy_csv",
]
