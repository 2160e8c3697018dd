"""`nbo ope`: off-policy evaluation of a candidate policy from a logged dataset.

The log (docs/dataset.md) holds, per row, the offer the logging policy chose and the
probability it chose it with, mu = `selection_probability`. A target policy pi gives, per row,
a distribution over offers (training/ope_policies.py). With w = pi(a|x) / mu(a|x) for the logged
offer a and r the reward (`outcome`: acceptance rate; `value`: value per decision):

* IPS   = mean(w r)                                  unbiased when mu > 0 wherever pi > 0
* SNIPS = sum(w r) / sum(w)                          slightly biased, lower variance
* DR    = mean(sum_b pi(b|x) q(x,b) + w (r - q(x,a)))  unbiased if mu is right, whatever q is

q is a reward model (training/ope_reward.py): LightGBM cross-fitted on the log, or a model
artifact. 95% intervals are normal intervals from the per-row terms (IPS, DR) and the delta
method (SNIPS). ESS = (sum w)^2 / sum w^2 is how many on-policy rows the estimate is worth.
See docs/ope.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from server.learning.posterior import NO_ARMS
from training.ope_data import F64, I64, LoggedData, OpeInputError, Rules, ScoringModel, feature_schema, read_log
from training.ope_policies import (
    BanditPolicy,
    CsvPolicy,
    Exploration,
    LoggingPolicy,
    ModelPolicy,
    PolicyDistribution,
    TargetPolicy,
    UniformPolicy,
    bandit_settings,
    read_arms,
    read_policy_csv,
)
from training.ope_reward import ArtifactReward, CrossFittedReward, RewardModel
from training.train import OfferTable, TrainingError, load_catalog

Z95 = 1.959963984540054
MIN_PROBABILITY = 0.01
TOP_SHARE_LIMIT = 0.2  # the top 1% of rows holding more than this share of the weight is "heavy"
MIN_ESS = 100.0
REWARDS = (("outcome", "acceptance rate"), ("value", "value per decision"))


# -- estimators --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    se: float

    def covers(self, x: float) -> bool:
        return self.low <= x <= self.high


def normal_interval(terms: F64) -> Interval:
    """Mean of i.i.d. per-row terms with a 95% normal interval."""
    n = terms.size
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan)
    mean = float(terms.mean())
    se = float(terms.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    return Interval(mean, mean - Z95 * se, mean + Z95 * se, se)


def ips(w: F64, r: F64) -> Interval:
    return normal_interval(w * r)


def snips(w: F64, r: F64, mass: float = 1.0) -> Interval:
    """mass x sum(w r) / sum(w), with the delta method's se.

    The weights' expected mean is the policy's mass on offers, `mass` (1 unless it sometimes
    sends nothing, whose reward is known to be 0); normalising to it keeps such a policy from
    being scaled up as if it always made an offer.
    """
    total = float(w.sum())
    if w.size == 0 or total <= 0.0:
        return Interval(math.nan, math.nan, math.nan, math.nan)
    ratio = float((w * r).sum()) / total
    n = w.size
    # n/(n-1) matches the ddof=1 of the other intervals
    se = mass * math.sqrt(float(((w * (r - ratio)) ** 2).sum()) * n / (n - 1)) / total if n > 1 else math.nan
    est = mass * ratio
    return Interval(est, est - Z95 * se, est + Z95 * se, se)


def doubly_robust(direct: F64, w: F64, r: F64, q_logged: F64) -> Interval:
    return normal_interval(direct + w * (r - q_logged))


def _direct_parts(
    log: LoggedData, dist: PolicyDistribution, reward_model: RewardModel, idx: np.ndarray
) -> dict[str, tuple[F64, F64]]:
    """Per used row (`idx`), for each reward: DR's direct part sum_b pi(b|x) q(x,b) and q(x, a)."""
    n = len(log)
    used = np.zeros(n, dtype=np.bool_)
    used[idx] = True
    in_use = used[dist.row]
    e_row, e_offer, e_prob = dist.row[in_use], dist.offer_id[in_use], dist.prob[in_use]
    # one call for the policy's entries and the logged offers
    rows = np.concatenate([e_row, idx])
    offers = np.concatenate([e_offer, log.offer_id[idx]]) if e_offer.size else log.offer_id[idx]
    q_out, q_val = reward_model.predict(log, rows, offers)
    q: dict[str, tuple[F64, F64]] = {}
    for name, qq in (("outcome", q_out), ("value", q_val)):
        direct = np.bincount(e_row, weights=e_prob * qq[: e_row.size], minlength=n)[idx].astype(np.float64)
        q[name] = (direct, qq[e_row.size :])
    return q


def dr_terms(log: LoggedData, dist: PolicyDistribution, reward_model: RewardModel) -> tuple[I64, dict[str, F64]]:
    """The rows DR uses (a logged probability > 0) and, per reward, DR's term for each of them.

    Their mean is the DR estimate; two policies' terms on the same rows with the same reward
    model give the paired difference of their values (training/retrain.py).
    """
    idx = np.flatnonzero(np.isfinite(log.mu) & (log.mu > 0))
    w = dist.of_logged(log)[idx] / log.mu[idx]
    parts = _direct_parts(log, dist, reward_model, idx)
    return idx, {name: direct + w * (getattr(log, name)[idx] - q) for name, (direct, q) in parts.items()}


def effective_sample_size(w: F64) -> float:
    sq = float((w**2).sum())
    return float(w.sum()) ** 2 / sq if sq > 0 else 0.0


def top_share(w: F64, fraction: float = 0.01) -> float:
    """Share of the total weight held by the top `fraction` of rows."""
    total = float(w.sum())
    if w.size == 0 or total <= 0:
        return 0.0
    k = max(1, math.ceil(w.size * fraction))
    return float(np.sort(w)[-k:].sum()) / total


# -- the report --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RewardEstimates:
    reward: str  # "outcome" or "value"
    label: str
    logged: Interval  # the logging policy's own mean (on-policy), for comparison
    ips: Interval
    snips: Interval
    dr: Interval | None  # None when the policy's full distribution is unknown (logging)


@dataclass(frozen=True)
class Diagnostics:
    rows: int
    used: int
    missing_probability: int  # rows skipped: no (or a zero) logged probability
    small_probability: int  # rows with 0 < mu < min_probability
    min_probability: float  # the threshold
    smallest_mu: float
    ess: float
    max_weight: float
    mean_weight: float  # expected: the policy's mass on offers, when mu > 0 wherever pi > 0
    mean_weight_se: float
    top1_weight_share: float
    unsupported_mass: float  # mean target mass on offers never logged for the row's channel/placement
    outside_rules_mass: float | None  # mean target mass on offers that are not candidates now
    no_offer_mass: float  # mean probability of sending nothing
    complete: bool  # the policy's whole distribution is known (not the logging policy)


@dataclass(frozen=True)
class OpeWarning:
    code: str
    message: str


@dataclass(frozen=True)
class Report:
    log: str
    policy: str
    reward_model: str | None
    diagnostics: Diagnostics
    estimates: tuple[RewardEstimates, ...]
    warnings: tuple[OpeWarning, ...]
    notes: tuple[str, ...]

    def estimate(self, reward: str) -> RewardEstimates:
        return next(e for e in self.estimates if e.reward == reward)


def evaluate(
    log: LoggedData,
    dist: PolicyDistribution,
    reward_model: RewardModel | None,
    *,
    policy: str = "policy",
    rules: Rules | None = None,
    min_probability: float = MIN_PROBABILITY,
) -> Report:
    """IPS, SNIPS and DR (when `reward_model` is given and the distribution complete) of `dist`."""
    used = np.isfinite(log.mu) & (log.mu > 0)
    idx = np.flatnonzero(used)
    if idx.size == 0:
        raise OpeInputError(f"{log.source}: no row has a logged selection probability; nothing can be estimated")
    mu = log.mu[idx]
    pi_logged = dist.of_logged(log)[idx]
    w = pi_logged / mu
    q = _direct_parts(log, dist, reward_model, idx) if reward_model is not None and dist.complete else {}

    # the policy's mass on offers per row (the rest sends nothing); unknown for the logging policy
    mass = float(dist.total()[idx].mean()) if dist.complete else 1.0
    estimates = []
    for name, label in REWARDS:
        r = getattr(log, name)[idx]
        dr = doubly_robust(q[name][0], w, r, q[name][1]) if name in q else None
        logged = normal_interval(getattr(log, name))
        estimates.append(RewardEstimates(name, label, logged, ips(w, r), snips(w, r, mass), dr))

    diag = _diagnostics(log, dist, rules, used, w, mu, min_probability)
    notes = list(dist.notes)
    if reward_model is not None and not dist.complete:
        notes.append("DR needs the policy's whole distribution: not estimated")
    return Report(
        log=log.source,
        policy=policy,
        reward_model=reward_model.name if reward_model is not None and dist.complete else None,
        diagnostics=diag,
        estimates=tuple(estimates),
        warnings=tuple(_warnings(diag)),
        notes=tuple(notes),
    )


def _diagnostics(
    log: LoggedData,
    dist: PolicyDistribution,
    rules: Rules | None,
    used: np.ndarray,
    w: F64,
    mu: F64,
    min_probability: float,
) -> Diagnostics:
    n = len(log)
    idx = np.flatnonzero(used)
    in_use = used[dist.row]
    e_row, e_offer, e_prob = dist.row[in_use], dist.offer_id[in_use], dist.prob[in_use]

    def per_row_mean(mask: np.ndarray) -> float:
        return float(np.bincount(e_row[mask], weights=e_prob[mask], minlength=n)[idx].mean())

    # support: an offer logged (with a probability) for the same channel and placement; strings
    # become integer codes so that large logs compare fast
    vocab = pc.unique(pa.chunked_array([pa.array(log.offer_id), pa.array(e_offer, type=pa.string())]))
    logged_offer, e_code = _codes(log.offer_id, vocab), _codes(e_offer, vocab)
    _, where = np.unique(np.char.add(np.char.add(log.channel, "\x1f"), log.placement), return_inverse=True)
    k = len(vocab)
    logged_keys = np.unique(where[idx] * k + logged_offer[idx])
    unsupported = per_row_mean(~np.isin(where[e_row] * k + e_code, logged_keys)) if e_row.size else 0.0
    outside: float | None = None
    if rules is not None and dist.complete:
        cand = rules.candidates
        # offers of candidates that no row logged nor the policy named (-1) cannot match an entry anyway
        cand_code = _codes(cand.offer_id, vocab)
        cand_keys = (cand.row * k + cand_code)[cand_code >= 0]
        outside = per_row_mean(~np.isin(e_row * k + e_code, cand_keys)) if e_row.size else 0.0
    total = np.bincount(dist.row, weights=dist.prob, minlength=n)[idx]
    small = mu < min_probability
    return Diagnostics(
        rows=n,
        used=int(idx.size),
        missing_probability=int(n - idx.size),
        small_probability=int(small.sum()),
        min_probability=min_probability,
        smallest_mu=float(mu.min()),
        ess=effective_sample_size(w),
        max_weight=float(w.max()),
        mean_weight=float(w.mean()),
        mean_weight_se=float(w.std(ddof=1)) / math.sqrt(w.size) if w.size > 1 else math.nan,
        top1_weight_share=top_share(w),
        unsupported_mass=unsupported,
        outside_rules_mass=outside,
        no_offer_mass=float(np.clip(1.0 - total, 0.0, 1.0).mean()) if dist.complete else 0.0,
        complete=dist.complete,
    )


def _codes(values: np.ndarray, vocab: pa.Array) -> np.ndarray:
    """Index of each value in `vocab` (-1 if absent), hashed by Arrow: cheap on millions of rows."""
    idx = pc.index_in(pa.array(values, type=pa.string()), value_set=vocab)
    return np.asarray(idx.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


def _warnings(d: Diagnostics) -> list[OpeWarning]:
    out = []
    if d.missing_probability:
        out.append(
            OpeWarning(
                "missing_probability",
                f"{d.missing_probability:,} row(s) have no logged selection_probability (missing or 0) "
                "and were skipped; the estimates describe the other rows",
            )
        )
    if d.small_probability:
        out.append(
            OpeWarning(
                "small_probability",
                f"{d.small_probability:,} row(s) were logged with a probability below {d.min_probability:g} "
                f"(smallest {d.smallest_mu:.3g}, weight up to {1 / d.smallest_mu:,.0f}x): "
                "estimates lean on a few rows",
            )
        )
    if d.unsupported_mass > 1e-9:
        out.append(
            OpeWarning(
                "no_support",
                f"{d.unsupported_mass:.1%} of the policy's mass is on offers never logged for that channel and "
                "placement: the log cannot show their reward (IPS/SNIPS count it as 0, DR takes the reward "
                "model's guess)",
            )
        )
    if d.outside_rules_mass is not None and d.outside_rules_mass > 1e-9:
        out.append(
            OpeWarning(
                "outside_rules",
                f"{d.outside_rules_mass:.1%} of the policy's mass is on offers that are not candidates under the "
                "catalog's rules for those rows (not live, not targeted, not eligible or no consent)",
            )
        )
    expected = 1.0 - d.no_offer_mass
    gap = expected - d.mean_weight
    if d.complete and gap > max(3 * d.mean_weight_se, 0.02 * expected):
        out.append(
            OpeWarning(
                "support_gap",
                f"the mean importance weight is {d.mean_weight:.3f} (se {d.mean_weight_se:.3f}) where the policy's "
                f"mass on offers is {expected:.3f}: about {gap / expected:.0%} of that mass seems to fall where the "
                "logging policy never acted (IPS under-estimates; check the candidates, prefer DR)",
            )
        )
    if d.top1_weight_share > TOP_SHARE_LIMIT or d.ess < min(MIN_ESS, 0.5 * d.used):
        out.append(
            OpeWarning(
                "heavy_weights",
                f"heavy importance weights: largest {d.max_weight:,.1f}, the top 1% of rows hold "
                f"{d.top1_weight_share:.0%} of the weight, effective sample size {d.ess:,.0f}: "
                "intervals may be too narrow",
            )
        )
    return out


# -- output ------------------------------------------------------------------------------------
def format_report(report: Report) -> str:
    d = report.diagnostics
    lines = [
        f"policy {report.policy} on {report.log}",
        f"rows {d.rows:,} ({d.used:,} used); effective sample size {d.ess:,.0f} ({d.ess / d.used:.0%} of used rows); "
        f"largest weight {d.max_weight:,.2f}; mean weight {d.mean_weight:.3f}; "
        f"top 1% of rows hold {d.top1_weight_share:.1%} of the weight",
        f"policy sends nothing on {d.no_offer_mass:.1%} of rows (reward 0)" if d.no_offer_mass > 1e-9 else "",
        f"reward model: {report.reward_model}" if report.reward_model else "",
    ]
    lines = [x for x in lines if x]
    for e in report.estimates:
        lines += ["", f"{e.label} ({e.reward})", f"  {'estimator':<15}{'estimate':>12}   95% CI"]
        rows: list[tuple[str, Interval | None]] = [
            ("logged policy", e.logged),
            ("IPS", e.ips),
            ("SNIPS", e.snips),
            ("DR", e.dr),
        ]
        for label, iv in rows:
            if iv is None:
                lines.append(f"  {label:<15}{'n/a':>12}")
            else:
                lines.append(f"  {label:<15}{_num(iv.estimate):>12}   [{_num(iv.low)}, {_num(iv.high)}]")
    if report.notes:
        lines += ["", "notes:"] + [f"  - {n}" for n in report.notes]
    if report.warnings:
        lines += ["", "warnings:"] + [f"  - {w.message}" for w in report.warnings]
    return "\n".join(lines)


def _num(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.4f}" if abs(x) < 100 else f"{x:,.2f}"


def report_json(report: Report) -> str:
    def clean(v: object) -> object:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(asdict(report)), indent=2)


# -- command line (`nbo ope`, registered in server/cli/ope.py) ---------------------------------
DESCRIPTION = (
    "Estimate a candidate policy's acceptance rate and value per decision from a logged dataset "
    "(IPS, SNIPS, doubly robust; 95% intervals; effective sample size). See docs/ope.md."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log", type=Path, required=True, metavar="FILE", help="logged dataset (CSV or Parquet, docs/dataset.md)"
    )
    p.add_argument(
        "--policy",
        required=True,
        metavar="SPEC",
        help="csv:FILE (per decision or per placement), model:DIR, bandit[:MODEL_DIR] (both with --catalog), "
        "uniform, or logging (a check)",
    )
    p.add_argument(
        "--catalog", type=Path, metavar="YAML", help="catalog YAML: the current rules that decide each row's candidates"
    )
    p.add_argument(
        "--features",
        type=Path,
        metavar="FILE",
        help="customer features file loaded into the servers (its categorical level order); default: from the log",
    )
    p.add_argument(
        "--reward-model", type=Path, metavar="DIR", help="model artifact as DR's reward model (default: cross-fitted)"
    )
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the reward model's folds")
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        metavar="T",
        help="model:DIR: softmax over (PxCxVxL)^(1/T); 0 = greedy",
    )
    p.add_argument(
        "--epsilon",
        type=float,
        metavar="E",
        help="model:DIR and bandit: probability mass spread evenly over the ranked candidates "
        "(model default 0; bandit default: the catalog's)",
    )
    p.add_argument(
        "--exploration", type=float, metavar="X", help="bandit: posterior sd scale for every channel (0 = greedy)"
    )
    p.add_argument(
        "--arms",
        type=Path,
        metavar="FILE",
        help='bandit: the learner\'s arms as JSON {"offer|channel": "mean,precision,n"}',
    )
    p.add_argument(
        "--min-probability",
        type=float,
        metavar="P",
        default=MIN_PROBABILITY,
        help=f"warn about logged probabilities below this (default {MIN_PROBABILITY})",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _kind(spec: str) -> str:
    """The policy family of a --policy value (csv, model, bandit, uniform, logging)."""
    head = spec.split(":", 1)[0]
    if spec in ("uniform", "logging", "bandit") or (head in ("csv", "model", "bandit") and ":" in spec):
        return head
    raise OpeInputError(f"--policy {spec!r}: use csv:FILE, model:DIR, bandit[:MODEL_DIR], uniform or logging")


def build_policy(opts: argparse.Namespace, log: LoggedData) -> tuple[TargetPolicy, Rules | None, RewardModel | None]:
    """The target policy, the current rules (with --catalog) and DR's reward model from the options."""
    spec: str = opts.policy
    kind = _kind(spec)
    misplaced = [
        flag
        for flag, given, applies in (
            ("--temperature", opts.temperature != 0.0, kind == "model"),
            ("--epsilon", opts.epsilon is not None, kind in ("model", "bandit")),
            ("--exploration", opts.exploration is not None, kind == "bandit"),
            ("--arms", opts.arms is not None, kind == "bandit"),
        )
        if given and not applies
    ]
    if misplaced:
        raise OpeInputError(f"{misplaced[0]} does not apply to --policy {spec}")
    if not 0.0 < opts.min_probability <= 1.0:
        raise OpeInputError(f"--min-probability must be in (0, 1], got {opts.min_probability}")
    label = f"--policy {spec}"
    policy_model = (
        ScoringModel.load(Path(spec.split(":", 1)[1]), label) if kind in ("model", "bandit") and ":" in spec else None
    )
    reward_model = None
    if opts.reward_model is not None:
        reward_model = ScoringModel.load(opts.reward_model, f"--reward-model {opts.reward_model}")
    needs_catalog = label if kind in ("model", "bandit") else "--reward-model" if reward_model is not None else None
    if needs_catalog and opts.catalog is None:
        raise OpeInputError(f"{needs_catalog} needs --catalog FILE (the current rules and the offers' attributes)")
    rules = None
    if opts.catalog is not None:
        models = [(m.label, m.spec) for m in (policy_model, reward_model) if m is not None]
        rules = Rules.load(log, opts.catalog, feature_schema(log, features=opts.features, models=models))

    policy: TargetPolicy
    if kind == "logging":
        policy = LoggingPolicy()
    elif kind == "uniform":
        policy = UniformPolicy(rules)
    elif kind == "csv":
        policy = CsvPolicy(read_policy_csv(Path(spec[4:])), rules, name=spec)
    elif kind == "model":
        assert rules is not None and policy_model is not None
        policy = ModelPolicy(policy_model, rules, Exploration(opts.temperature, opts.epsilon or 0.0), name=spec)
    else:
        assert rules is not None
        settings = bandit_settings(rules.catalog.bandit, exploration=opts.exploration, epsilon=opts.epsilon)
        arms = read_arms(opts.arms) if opts.arms is not None else NO_ARMS
        policy = BanditPolicy(rules, settings, policy_model, arms, name=spec)

    reward: RewardModel | None = None
    if kind == "logging":
        pass  # the logging policy's full distribution is unknown: no DR
    elif reward_model is not None:
        assert rules is not None
        reward = ArtifactReward.create(reward_model, rules, log)
    else:
        reward = CrossFittedReward.fit(
            log, seed=opts.seed, offers=_offer_table(opts.catalog), catalog_values=offer_values(rules)
        )
    return policy, rules, reward


def _offer_table(catalog: Path | None) -> OfferTable:
    """Offer attributes as `nbo train` reads them, for the cross-fitted reward model's inputs."""
    if catalog is None:
        return OfferTable.empty()
    try:
        return load_catalog(catalog)
    except TrainingError as err:
        raise OpeInputError(str(err)) from None


def offer_values(rules: Rules | None) -> dict[str, float]:
    return {} if rules is None else {o.id: o.value for o in rules.catalog.offers}


def run(opts: argparse.Namespace) -> int:
    try:
        log = read_log(opts.log)
        policy, rules, reward = build_policy(opts, log)
        dist = policy.distribution(log)
        report = evaluate(log, dist, reward, policy=policy.name, rules=rules, min_probability=opts.min_probability)
    except OpeInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report_json(report) if opts.json else format_report(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nbo ope", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
