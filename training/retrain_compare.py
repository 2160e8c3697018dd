"""The comparison behind `nbo retrain`: the live model and a challenger on the same held-out rows.

Both models score the held-out rows' logged (decision, offer) pairs exactly as the server would
(training.ope_data.ScoringModel); AUC, log loss, Brier score and ECE come from
training/evaluate.py, and the challenger-minus-champion differences get 95% intervals from a
seeded paired bootstrap over rows (both models resampled together, so what the rows share
cancels). Off-policy, each model's greedy policy under the live catalog's rules
(training.ope_policies.ModelPolicy) is valued by doubly robust estimation with one cross-fitted
reward model (training/ope_reward.py); both policies' per-row DR terms sit on the same rows, so
their difference has a paired normal interval.

Without a live model the champion is the catalog's prior propensities, as a server without a
model ranks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from training import evaluate as ev
from training.ope import Interval, dr_terms, normal_interval, offer_values
from training.ope_data import F64, LoggedData, Rules, Str
from training.ope_policies import Exploration, ModelPolicy
from training.ope_reward import CrossFittedReward
from training.train import OfferTable

METRICS = ("auc", "log_loss", "brier", "ece")
REWARDS = (("value", "value per decision"), ("outcome", "acceptance rate"))


class PriorScorer:
    """The catalog's prior propensities as the scores: what a server without a model ranks by."""

    label = "catalog prior"
    version = "prior"

    def score(self, rules: Rules, log: LoggedData, row: Any, offer_id: Str) -> F64:
        priors = {o.id: o.prior_propensity for o in rules.catalog.offers}
        return np.array([priors.get(str(o), math.nan) for o in offer_id], dtype=np.float64)


@dataclass(frozen=True)
class Figures:
    """Everything measured on the held-out rows; JSON-ready through `to_json`."""

    scored_rows: int  # held-out rows both models could score (offers still in the catalog)
    champion: dict[str, float]  # METRICS of the live model
    challenger: dict[str, float]
    difference: dict[str, Interval]  # challenger - champion, paired bootstrap
    bootstrap: int
    dr_rows: int
    dr_champion: dict[str, Interval]  # reward -> DR value of the champion's greedy policy
    dr_challenger: dict[str, Interval]
    dr_difference: dict[str, Interval]  # challenger - champion, paired normal interval
    reward_model: str

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = _finite(asdict(self))
        return out


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def interval_from_json(d: dict[str, Any]) -> Interval:
    return Interval(*(math.nan if d[k] is None else float(d[k]) for k in ("estimate", "low", "high", "se")))


def paired_bootstrap(y: F64, p_old: F64, p_new: F64, *, replicates: int, seed: int) -> dict[str, Interval]:
    """Per metric, new - old on all rows with the 2.5 and 97.5 percentiles over resampled rows."""
    point = {m: _metric(m, y, p_new) - _metric(m, y, p_old) for m in METRICS}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {m: [] for m in METRICS}
    for _ in range(replicates):
        i = rng.integers(0, y.size, y.size)
        for m in METRICS:
            draws[m].append(_metric(m, y[i], p_new[i]) - _metric(m, y[i], p_old[i]))
    out = {}
    for m in METRICS:
        # a resample with one class has no AUC: the interval is over the others
        d = np.array([x for x in draws[m] if math.isfinite(x)])
        low, high = (float(q) for q in np.percentile(d, [2.5, 97.5])) if d.size else (math.nan, math.nan)
        out[m] = Interval(point[m], low, high, float(d.std(ddof=1)) if d.size > 1 else math.nan)
    return out


def _metric(name: str, y: F64, p: F64) -> float:
    if name == "auc":
        return ev.auc(y, p)
    if name == "log_loss":
        return ev.log_loss(y, p)
    if name == "brier":
        return ev.brier(y, p)
    return ev.expected_calibration_error(y, p)


def compare(
    log: LoggedData,
    rules: Rules,
    champion: Any,
    challenger: Any,
    *,
    offers: OfferTable,
    seed: int,
    replicates: int,
) -> Figures:
    """Figures of `challenger` against `champion` (ScoringModel or PriorScorer) on `log`'s rows."""
    rows = np.arange(len(log))
    p_old = champion.score(rules, log, rows, log.offer_id)
    p_new = challenger.score(rules, log, rows, log.offer_id)
    ok = np.isfinite(p_old) & np.isfinite(p_new)
    y, p_old, p_new = log.outcome[ok], p_old[ok], p_new[ok]

    reward = CrossFittedReward.fit(log, seed=seed, offers=offers, catalog_values=offer_values(rules))
    terms = {}
    for side, model in (("champion", champion), ("challenger", challenger)):
        dist = ModelPolicy(model, rules, Exploration(), name=side).distribution(log)
        _, terms[side] = dr_terms(log, dist, reward)
    dr_rows = terms["champion"]["value"].size
    return Figures(
        scored_rows=int(ok.sum()),
        champion=ev.metrics(y, p_old),
        challenger=ev.metrics(y, p_new),
        difference=paired_bootstrap(y, p_old, p_new, replicates=replicates, seed=seed),
        bootstrap=replicates,
        dr_rows=int(dr_rows),
        dr_champion={r: normal_interval(terms["champion"][r]) for r, _ in REWARDS},
        dr_challenger={r: normal_interval(terms["challenger"][r]) for r, _ in REWARDS},
        dr_difference={r: normal_interval(terms["challenger"][r] - terms["champion"][r]) for r, _ in REWARDS},
        reward_model=reward.name,
    )


# -- the gate ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    criterion: str  # "auc", "log_loss" or "dr_value"
    passed: bool
    detail: str


@dataclass(frozen=True)
class Gate:
    """When a challenger is "not worse": every bound below must hold (NaN fails).

    * `auc`: the lower bound of the AUC difference is above -auc_tolerance;
    * `log_loss`: the upper bound of the log-loss difference is below +log_loss_tolerance;
    * `dr_value`: the lower bound of the DR value-per-decision difference is above
      -value_tolerance x the champion's DR value per decision.
    """

    auc_tolerance: float = 0.005
    log_loss_tolerance: float = 0.002
    value_tolerance: float = 0.2

    def checks(self, f: Figures) -> list[Check]:
        auc, loss, value = f.difference["auc"], f.difference["log_loss"], f.dr_difference["value"]
        champion_value = abs(f.dr_champion["value"].estimate)
        allowed = self.value_tolerance * champion_value
        return [
            Check(
                "auc",
                auc.low > -self.auc_tolerance,
                f"AUC difference {_iv(auc)}: its lower bound must be above -{self.auc_tolerance:g}",
            ),
            Check(
                "log_loss",
                loss.high < self.log_loss_tolerance,
                f"log-loss difference {_iv(loss)}: its upper bound must be below +{self.log_loss_tolerance:g}",
            ),
            Check(
                "dr_value",
                value.low > -allowed,
                f"DR value-per-decision difference {_iv(value, 3)}: its lower bound must be above "
                f"-{allowed:.3f} ({self.value_tolerance:g} x the champion's {champion_value:.3f})",
            ),
        ]


def _num(x: float, digits: int = 4) -> str:
    return f"{x:+.{digits}f}" if math.isfinite(x) else "n/a"


def _iv(i: Interval, digits: int = 4) -> str:
    return f"{_num(i.estimate, digits)} [{_num(i.low, digits)}, {_num(i.high, digits)}]"
