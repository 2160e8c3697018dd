"""The retraining gate's rule, the paired bootstrap and the `--every` durations, exactly."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from server.cli.main import main as nbo
from server.cli.retrain import _duration
from training.ope import Interval
from training.retrain_compare import Figures, Gate, paired_bootstrap

NAN = math.nan


def _figures(auc: Interval, log_loss: Interval, value: Interval, champion_value: float = 2.0) -> Figures:
    zero = Interval(0.0, 0.0, 0.0, 0.0)
    return Figures(
        scored_rows=1000,
        champion={},
        challenger={},
        difference={"auc": auc, "log_loss": log_loss, "brier": zero, "ece": zero},
        bootstrap=100,
        dr_rows=1000,
        dr_champion={"value": Interval(champion_value, 1.0, 3.0, 0.5), "outcome": zero},
        dr_challenger={"value": zero, "outcome": zero},
        dr_difference={"value": value, "outcome": zero},
        reward_model="test",
    )


GOOD = Interval(0.01, -0.004, 0.02, 0.005)  # AUC: lower bound above -0.005
LOSS = Interval(-0.01, -0.02, 0.001, 0.005)  # log loss: upper bound below +0.002
VALUE = Interval(0.1, -0.39, 0.3, 0.1)  # DR value: lower bound above -0.2 x 2.0


@pytest.mark.parametrize(
    ("auc", "log_loss", "value", "failed"),
    [
        (GOOD, LOSS, VALUE, []),
        (Interval(0.0, -0.006, 0.01, 0.004), LOSS, VALUE, ["auc"]),
        (GOOD, Interval(0.0, -0.001, 0.0021, 0.001), VALUE, ["log_loss"]),
        (GOOD, LOSS, Interval(0.0, -0.4001, 0.1, 0.05), ["dr_value"]),
        (Interval(NAN, NAN, NAN, NAN), LOSS, Interval(NAN, NAN, NAN, NAN), ["auc", "dr_value"]),  # unknown fails
    ],
)
def test_the_gate_passes_only_when_every_bound_holds(
    auc: Interval, log_loss: Interval, value: Interval, failed: list[str]
) -> None:
    checks = Gate().checks(_figures(auc, log_loss, value))
    assert [c.criterion for c in checks if not c.passed] == failed


def test_the_gate_says_which_bound_and_the_numbers() -> None:
    checks = Gate(0.01, 0.001, 0.1).checks(_figures(GOOD, LOSS, VALUE))
    assert [c.detail for c in checks] == [
        "AUC difference +0.0100 [-0.0040, +0.0200]: its lower bound must be above -0.01",
        "log-loss difference -0.0100 [-0.0200, +0.0010]: its upper bound must be below +0.001",
        "DR value-per-decision difference +0.100 [-0.390, +0.300]: its lower bound must be above -0.200 "
        "(0.1 x the champion's 2.000)",
    ]
    assert [c.passed for c in checks] == [True, False, False]


def test_the_paired_bootstrap_of_a_model_against_itself_is_exactly_zero() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.5, 400)
    y = (rng.random(400) < p).astype(np.float64)
    same = paired_bootstrap(y, p, p.copy(), replicates=50, seed=3)
    assert {m: (i.estimate, i.low, i.high) for m, i in same.items()} == {
        m: (0.0, 0.0, 0.0) for m in ("auc", "log_loss", "brier", "ece")
    }
    better = paired_bootstrap(y, np.full(400, y.mean()), p, replicates=50, seed=3)
    assert better["auc"].low > 0 and better["log_loss"].high < 0
    assert better == paired_bootstrap(y, np.full(400, y.mean()), p, replicates=50, seed=3)  # seeded


@pytest.mark.parametrize(("text", "seconds"), [("6h", 21_600.0), ("30m", 1_800.0), ("90", 90.0), ("1.5d", 129_600.0)])
def test_every_takes_a_duration(text: str, seconds: float) -> None:
    assert _duration(text) == seconds


@pytest.mark.parametrize("text", ["0h", "-1h", "6 hours", "h", ""])
def test_every_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a positive duration like 6h, 30m or 90s"):
        _duration(text)


def test_every_refuses_a_fixed_window(capsys: pytest.CaptureFixture[str]) -> None:
    assert nbo(["retrain", "--every", "6h", "--as-of", "2026-01-31"]) == 2
    assert "--every moves the window with the clock" in capsys.readouterr().err
