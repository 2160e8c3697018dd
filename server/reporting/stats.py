"""The statistics of the lift report, as pure functions of counts and summaries.

* a proportion's 95% interval: Wilson's score interval;
* a difference of two proportions: Newcombe's hybrid score interval (his method 10), built from
  the two Wilson intervals, which behaves at rates near 0 where the normal (Wald) one does not;
* a ratio of two proportions (relative lift = ratio - 1): the delta method on the log ratio,
  var(log p) ~ (1 - p) / (n p) = (1 - p) / k;
* a difference of two means (revenue per customer): Welch's t interval with the
  Welch-Satterthwaite degrees of freedom (Student's t quantile from scipy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from scipy.stats import t as student_t

LEVEL = 0.95
Z95 = NormalDist().inv_cdf(0.5 + LEVEL / 2)  # 1.959963984540054


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with its 95% interval."""

    value: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class Sample:
    """What a group contributes to a mean: size, mean and sample variance (n - 1)."""

    n: int
    mean: float
    variance: float

    @classmethod
    def of(cls, n: int, total: float, total_squares: float) -> Sample:
        """From the count, sum and sum of squares of the values (0 values included in n)."""
        if n <= 0:
            return cls(0, math.nan, math.nan)
        mean = total / n
        # never below 0: the subtraction can round to a tiny negative for equal values
        variance = max(0.0, (total_squares - n * mean * mean) / (n - 1)) if n > 1 else math.nan
        return cls(n, mean, variance)


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of the proportion successes / n."""
    if n <= 0:
        raise ValueError("a proportion needs n > 0")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # at 0 or n successes the bound is exactly 0 or 1; the arithmetic leaves a rounding error
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


def rate_difference(k1: int, n1: int, k0: int, n0: int, z: float = Z95) -> Estimate:
    """p1 - p0 with Newcombe's hybrid score interval (group 1: treatment, 0: control)."""
    p1, p0 = k1 / n1, k0 / n0
    l1, u1 = wilson(k1, n1, z)
    l0, u0 = wilson(k0, n0, z)
    d = p1 - p0
    return Estimate(
        d,
        d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2),
        d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2),
    )


def relative_lift(k1: int, n1: int, k0: int, n0: int, z: float = Z95) -> Estimate | None:
    """p1 / p0 - 1, interval by the delta method on log(p1 / p0); None unless both k > 0."""
    if k1 <= 0 or k0 <= 0:
        return None
    p1, p0 = k1 / n1, k0 / n0
    log_ratio = math.log(p1 / p0)
    se = math.sqrt((1 - p1) / k1 + (1 - p0) / k0)
    return Estimate(p1 / p0 - 1, math.exp(log_ratio - z * se) - 1, math.exp(log_ratio + z * se) - 1)


def welch_df(a: Sample, b: Sample) -> float:
    """The Welch-Satterthwaite degrees of freedom of mean(a) - mean(b)."""
    va, vb = a.variance / a.n, b.variance / b.n
    return (va + vb) ** 2 / (va * va / (a.n - 1) + vb * vb / (b.n - 1))


def mean_difference(a: Sample, b: Sample, level: float = LEVEL) -> Estimate:
    """mean(a) - mean(b) with Welch's t interval (each group needs n >= 2)."""
    if a.n < 2 or b.n < 2:
        raise ValueError("Welch's interval needs at least 2 values in each group")
    d = a.mean - b.mean
    se = math.sqrt(a.variance / a.n + b.variance / b.n)
    if se == 0.0:  # every value equal in both groups: nothing varies, the interval is the point
        return Estimate(d, d, d)
    half = float(student_t.ppf(0.5 + level / 2, welch_df(a, b))) * se
    return Estimate(d, d - half, d + half)
