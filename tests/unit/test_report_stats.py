"""The report's statistics against published values (Newcombe 1998) and hand computations."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from server.reporting.stats import (
    Z95,
    Estimate,
    Sample,
    mean_difference,
    rate_difference,
    relative_lift,
    welch_df,
    wilson,
)


def test_z95_is_the_normal_quantile() -> None:
    assert pytest.approx(1.959963984540054, abs=1e-15) == Z95


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        # by hand: p = 1/2 is the centre; half = z sqrt(1/40 + z^2/400) / (1 + z^2/10)
        (5, 10, 0.2366, 0.7634),
    ],
)
def test_wilson_matches_published_intervals(k: int, n: int, low: float, high: float) -> None:
    got = wilson(k, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_bounds_are_exact_at_zero_and_all() -> None:
    assert wilson(0, 10)[0] == 0.0
    assert wilson(10, 10)[1] == 1.0


@pytest.mark.parametrize(
    ("k1", "n1", "k0", "n0", "d", "low", "high"),
    [
        # Newcombe (1998), "Interval estimation for the difference between independent
        # proportions", Table II, method 10 (hybrid score)
        (56, 70, 48, 80, 0.2, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.6, 0.1705, 0.8090),
        (6, 7, 2, 7, 0.5714, 0.0582, 0.8062),
        (5, 56, 0, 29, 0.0893, -0.0381, 0.1926),
    ],
)
def test_rate_difference_matches_newcombe_method_10(
    k1: int, n1: int, k0: int, n0: int, d: float, low: float, high: float
) -> None:
    got = rate_difference(k1, n1, k0, n0)
    assert (got.value, got.low, got.high) == pytest.approx((d, low, high), abs=5e-5)


def test_relative_lift_by_the_delta_method_on_the_log_ratio() -> None:
    # 20/100 against 10/100: ratio 2, se(log ratio) = sqrt(0.8/20 + 0.9/10) = sqrt(0.13)
    got = relative_lift(20, 100, 10, 100)
    assert got is not None
    half = Z95 * math.sqrt(0.13)
    assert got.value == pytest.approx(1.0, abs=1e-12)
    assert got.low == pytest.approx(2 * math.exp(-half) - 1, abs=1e-12)
    assert got.high == pytest.approx(2 * math.exp(half) - 1, abs=1e-12)
    assert (round(got.low, 4), round(got.high, 4)) == (-0.0134, 3.0545)


def test_relative_lift_is_undefined_without_conversions_in_a_group() -> None:
    assert relative_lift(0, 100, 10, 100) is None
    assert relative_lift(10, 100, 0, 100) is None


def test_sample_from_sums() -> None:
    s = Sample.of(4, 0 + 0 + 1 + 2, 0 + 0 + 1 + 4)
    assert (s.n, s.mean, s.variance) == (4, 0.75, pytest.approx((5 - 4 * 0.75**2) / 3, abs=1e-15))
    assert math.isnan(Sample.of(0, 0, 0).mean)


def test_welch_interval_by_hand_and_against_scipy() -> None:
    a, b = [1.0, 2.0, 3.0, 4.0, 10.0], [0.0, 0.0, 1.0, 2.0]
    sa = Sample.of(len(a), sum(a), sum(x * x for x in a))
    sb = Sample.of(len(b), sum(b), sum(x * x for x in b))
    # by hand: means 4 and 0.75, variances 12.5 and 0.916667; se^2 = 2.5 + 0.229167
    assert sa.variance == pytest.approx(12.5, abs=1e-12)
    assert sb.variance == pytest.approx(11 / 12, abs=1e-12)
    se2 = 2.5 + 11 / 48
    assert welch_df(sa, sb) == pytest.approx(se2**2 / (2.5**2 / 4 + (11 / 48) ** 2 / 3), abs=1e-12)
    got = mean_difference(sa, sb)
    assert got.value == 3.25
    expected = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (got.low, got.high) == pytest.approx((expected.low, expected.high), abs=1e-9)
    assert (round(got.low, 4), round(got.high, 4)) == (-1.0753, 7.5753)


def test_welch_interval_of_constant_groups_is_the_point() -> None:
    assert mean_difference(Sample.of(3, 6, 12), Sample.of(2, 2, 2)) == Estimate(1.0, 1.0, 1.0)


def test_welch_interval_needs_two_values_per_group() -> None:
    with pytest.raises(ValueError, match="at least 2 values"):
        mean_difference(Sample.of(1, 1, 1), Sample.of(5, 5, 5))
