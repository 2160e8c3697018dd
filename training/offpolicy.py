"""`nbo ope`: off-policy evaluation of a candidate policy from a logged dataset.

The log (docs/dataset.md) holds, per decision, the offer the logging policy chose and the
probability it chose it with (`selection_probability`, mu). A candidate policy pi gives, per
decision, a distribution over offers. With w = pi(a|x) / mu(a|x) for the logged action a and r the
reward (`outcome` for the acceptance rate, `value` for value per decision):

- IPS   = mean(w r)                                 unbiased when mu > 0 wherever pi > 0
- SNIPS = sum(w r) / sum(w)                         slightly biased, much lower variance
- DR    = mean(sum_b pi(b|x) q(x,b) + w (r - q(x,a)))  unbiased if mu is right, even if q is wrong

q is a reward model: by default the mean reward of each (channel, offer) in the *other* half of
the log (two-fold cross-fitting keeps DR honest), or the propensity model of `--reward-model`.
Intervals are 95% normal intervals from the per-decision terms (delta method for SNIPS);
ESS = (sum w)^2 / sum w^2 is how many on-policy decisions the estimate is worth.

Candidate policies: `csv:FILE` with `decision_id,offer_id,probability` (per decision) or
`placement,offer_id,probability` (per placement: the distribution of the decision's placement,
restricted to offers logged on that placement's channel and renormalised), `uniform` (uniform over
the offers logged on the decision's channel) and `logging` (the logged policy itself: a sanity
check whose estimate must match the on-policy mean).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from training.dataset import DatasetError, read_dataset

F64 = npt.NDArray[np.float64]
MIN_PROBABILITY = 0.01
Z95 = 1.959963984540054


class PolicyError(ValueError):
    """A candidate policy that cannot be used, with file and line."""


@dataclass(frozen=True)
class LoggedData:
    decision_id: list[str]
    channel: list[str]
    placement: list[str]
    offer_id: list[str]
    mu: F64  # logged selection probability (NaN where missing)
    outcome: F64
    value: F64

    @classmethod
    def from_table(cls, table: pa.Table) -> LoggedData:
        def text(name: str) -> list[str]:
            return [str(x) for x in table.column(name).to_pylist()]

        def number(name: str) -> F64:
            return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)

        return cls(
            text("decision_id"),
            text("channel"),
            text("placement"),
            text("offer_id"),
            number("selection_probability"),
            number("outcome"),
            number("value"),
        )

    def __len__(self) -> int:
        return len(self.decision_id)

    def actions_by_channel(self) -> dict[str, list[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for ch, o in zip(self.channel, self.offer_id, strict=True):
            out[ch].add(o)
        return {ch: sorted(v) for ch, v in out.items()}


# A target policy: per logged row, its distribution over offers (offer id -> probability).
Distribution = Mapping[str, float]


def logging_policy(data: LoggedData) -> list[Distribution]:
    """Only the logged action's probability is known: enough for IPS, and DR with mass elsewhere
    unknown is not defined, so the logged policy is evaluated with the logged action alone."""
    return [{o: float(m)} for o, m in zip(data.offer_id, data.mu, strict=True)]


def uniform_policy(data: LoggedData) -> list[Distribution]:
    actions = data.actions_by_channel()
    return [dict.fromkeys(actions[ch], 1.0 / len(actions[ch])) for ch in data.channel]


def csv_policy(path: Path, data: LoggedData) -> list[Distribution]:
    """Per decision (`decision_id` column) or per placement (`placement` column)."""
    try:
        fh = path.open(newline="")
    except OSError as err:
        raise PolicyError(f"{path}: {err.strerror}") from None
    with fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise PolicyError(f"{path}:1:1: empty file")
        header = [h.strip() for h in header]
        if header not in (["decision_id", "offer_id", "probability"], ["placement", "offer_id", "probability"]):
            raise PolicyError(
                f"{path}:1:1: header must be 'decision_id,offer_id,probability' or "
                f"'placement,offer_id,probability', got {','.join(header)!r}"
            )
        table: dict[str, dict[str, float]] = defaultdict(dict)
        for line, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 3:
                raise PolicyError(f"{path}:{line}:1: expected 3 columns, got {len(row)}")
            key, offer, raw = (c.strip() for c in row)
            try:
                p = float(raw)
            except ValueError:
                col = len(row[0]) + len(row[1]) + 3
                raise PolicyError(f"{path}:{line}:{col}: probability {raw!r} is not a number") from None
            if not 0.0 <= p <= 1.0:
                col = len(row[0]) + len(row[1]) + 3
                raise PolicyError(f"{path}:{line}:{col}: probability must be in [0, 1], got {p}")
            if offer in table[key]:
                raise PolicyError(f"{path}:{line}:{len(row[0]) + 2}: {offer!r} listed twice for {key!r}")
            table[key][offer] = p
    for key, dist in table.items():
        total = sum(dist.values())
        if abs(total - 1.0) > 1e-6:
            raise PolicyError(f"{path}: probabilities for {key!r} sum to {total:.6f}, not 1")
    if header[0] == "decision_id":
        missing = [d for d in data.decision_id if d not in table]
        if missing:
            raise PolicyError(f"{path}: no probabilities for {len(missing)} logged decision(s), e.g. {missing[0]!r}")
        return [table[d] for d in data.decision_id]
    actions = {ch: set(v) for ch, v in data.actions_by_channel().items()}
    out: list[Distribution] = []
    for placement, ch in zip(data.placement, data.channel, strict=True):
        found = table.get(placement)
        if found is None:
            raise PolicyError(f"{path}: no probabilities for placement {placement!r}")
        kept = {o: p for o, p in found.items() if o in actions[ch]}
        total = sum(kept.values())
        if total <= 0:
            raise PolicyError(f"{path}: placement {placement!r} puts no mass on offers of channel {ch!r}")
        out.append({o: p / total for o, p in kept.items()})
    return out


def cross_fitted_means(data: LoggedData, reward: F64, seed: int) -> list[dict[str, float]]:
    """q(x, b) per row: the mean reward of (channel, b) in the other fold (two folds)."""
    n = len(data)
    fold = np.random.default_rng(seed).integers(0, 2, n)
    sums: list[defaultdict[tuple[str, str], float]] = [defaultdict(float), defaultdict(float)]
    counts: list[defaultdict[tuple[str, str], int]] = [defaultdict(int), defaultdict(int)]
    channel_sum: list[defaultdict[str, float]] = [defaultdict(float), defaultdict(float)]
    channel_n: list[defaultdict[str, int]] = [defaultdict(int), defaultdict(int)]
    for i in range(n):
        f = int(fold[i])
        sums[f][(data.channel[i], data.offer_id[i])] += float(reward[i])
        counts[f][(data.channel[i], data.offer_id[i])] += 1
        channel_sum[f][data.channel[i]] += float(reward[i])
        channel_n[f][data.channel[i]] += 1
    out: list[dict[str, float]] = []
    cache: dict[tuple[int, str], dict[str, float]] = {}
    for i in range(n):
        other = 1 - int(fold[i])
        key = (other, data.channel[i])
        if key not in cache:
            base = channel_sum[other][data.channel[i]] / max(channel_n[other][data.channel[i]], 1)
            cache[key] = defaultdict(lambda b=base: b)  # type: ignore[misc]
            for (ch, o), s in sums[other].items():
                if ch == data.channel[i]:
                    cache[key][o] = s / counts[other][(ch, o)]
        out.append(cache[key])
    return out


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class Estimates:
    reward: str
    on_policy: float  # the logging policy's mean reward
    ips: Interval
    snips: Interval
    dr: Interval


@dataclass
class Report:
    rows: int
    used: int
    ess: float
    max_weight: float
    estimates: list[Estimates]
    warnings: list[str] = field(default_factory=list)


def _normal(terms: F64) -> Interval:
    m = float(terms.mean())
    half = Z95 * float(terms.std(ddof=1)) / math.sqrt(terms.size) if terms.size > 1 else math.nan
    return Interval(m, m - half, m + half)


def estimate(
    data: LoggedData,
    policy: Sequence[Distribution],
    *,
    seed: int = 0,
    min_probability: float = MIN_PROBABILITY,
    doubly_robust: bool = True,
) -> Report:
    """IPS, SNIPS and DR of `policy` for acceptance (`outcome`) and value per decision."""
    mu = data.mu
    ok = np.isfinite(mu) & (mu > 0)
    warnings = []
    if (~ok).any():
        warnings.append(f"{int((~ok).sum())} row(s) without a logged probability were skipped")
    small = ok & (mu < min_probability)
    if small.any():
        warnings.append(
            f"{int(small.sum())} row(s) have a logged probability below {min_probability}: weights up to "
            f"{1 / float(mu[small].min()):.0f}x; estimates lean on few decisions"
        )
    idx = [int(i) for i in np.flatnonzero(ok)]
    if not idx:
        raise PolicyError("no row has a logged selection probability: nothing can be estimated")
    pi_logged = np.array([policy[i].get(data.offer_id[i], 0.0) for i in idx])
    w = pi_logged / mu[idx]
    logged_actions = data.actions_by_channel()
    unsupported = [
        sum(p for o, p in policy[i].items() if o not in logged_actions.get(data.channel[i], ())) for i in idx
    ]
    share = float(np.mean(unsupported))
    if share > 0.0:
        warnings.append(
            f"{share:.1%} of the policy's mass is on offers never logged on that channel: no support; "
            "IPS/SNIPS count it as zero reward"
        )
    ess = float(w.sum() ** 2 / (w**2).sum()) if (w > 0).any() else 0.0
    if w.size and w.max() > 0 and float(np.sort(w)[-max(1, w.size // 100) :].sum() / w.sum()) > 0.2:
        warnings.append("the top 1% of weights carry over 20% of the total: high variance")
    out = []
    for name in ("outcome", "value"):
        reward = getattr(data, name)
        r = reward[idx]
        ips = _normal(w * r)
        sn = float((w * r).sum() / w.sum()) if w.sum() > 0 else math.nan
        # delta method: the SNIPS estimate's influence terms
        infl = w * (r - sn) / w.mean() if w.sum() > 0 else np.zeros_like(w)
        half = Z95 * float(infl.std(ddof=1)) / math.sqrt(infl.size) if infl.size > 1 else math.nan
        snips = Interval(sn, sn - half, sn + half)
        if doubly_robust:
            q = cross_fitted_means(data, reward, seed)
            direct = np.array([sum(p * q[i][o] for o, p in policy[i].items()) for i in idx])
            q_logged = np.array([q[i][data.offer_id[i]] for i in idx])
            dr = _normal(direct + w * (r - q_logged))
        else:
            dr = Interval(math.nan, math.nan, math.nan)
        out.append(Estimates(name, float(r.mean()), ips, snips, dr))
    return Report(len(data), len(idx), ess, float(w.max()) if w.size else 0.0, out, warnings)


def format_report(report: Report, policy_name: str) -> str:
    lines = [
        f"policy {policy_name}: {report.used:,} of {report.rows:,} logged decisions used; "
        f"effective sample size {report.ess:,.0f}; largest weight {report.max_weight:.1f}",
        "",
        "| reward | logged (on-policy) | estimator | estimate | 95% CI |",
        "|---|---|---|---|---|",
    ]
    for e in report.estimates:
        for label, iv in (("IPS", e.ips), ("SNIPS", e.snips), ("DR", e.dr)):
            lines.append(
                f"| {e.reward} | {e.on_policy:.4f} | {label} | {iv.estimate:.4f} | {iv.low:.4f} to {iv.high:.4f} |"
            )
    lines += [f"warning: {w}" for w in report.warnings]
    return "\n".join(lines)


def load_policy(spec: str, data: LoggedData) -> list[Distribution]:
    if spec == "uniform":
        return uniform_policy(data)
    if spec == "logging":
        return logging_policy(data)
    if spec.startswith("csv:"):
        return csv_policy(Path(spec[4:]), data)
    raise PolicyError(f"--policy {spec!r}: use csv:FILE, uniform or logging")


def main(opts: argparse.Namespace | Sequence[str]) -> int:
    """`nbo ope` (its flags are defined in server/cli.py)."""
    if not isinstance(opts, argparse.Namespace):
        from server.cli import build_parser

        opts = build_parser().parse_args(["ope", *opts])
    try:
        data = LoggedData.from_table(read_dataset(opts.log))
        policy = load_policy(opts.policy, data)
        report = estimate(
            data, policy, seed=opts.seed, min_probability=opts.min_probability, doubly_robust=opts.policy != "logging"
        )
    except (DatasetError, PolicyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if opts.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(format_report(report, opts.policy))
    return 0
