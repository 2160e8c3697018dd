"""Off-policy evaluation: exact estimators on hand-made logs, and coverage on synthetic worlds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from training.dataset import CONTEXT_PREFIX, write_dataset
from training.offpolicy import LoggedData, PolicyError, csv_policy, estimate, main
from training.world import World


def tiny() -> LoggedData:
    # two decisions on the web: offer a logged with mu 0.5 (accepted, value 10), b with mu 0.25
    return LoggedData(
        decision_id=["d1", "d2", "d3", "d4"],
        channel=["web", "web", "web", "web"],
        placement=["home", "home", "home", "home"],
        offer_id=["a", "b", "a", "b"],
        mu=np.array([0.5, 0.25, 0.5, 0.25]),
        outcome=np.array([1.0, 0.0, 0.0, 1.0]),
        value=np.array([10.0, 0.0, 0.0, 20.0]),
    )


def test_ips_and_snips_by_hand() -> None:
    policy = [{"a": 1.0}] * 4  # always offer a
    report = estimate(tiny(), policy, doubly_robust=False)
    acc, val = report.estimates
    # w = [2, 0, 2, 0]; IPS = mean(w r) = (2 + 0) / 4; SNIPS = 2 / 4
    assert acc.ips.estimate == pytest.approx(0.5)
    assert acc.snips.estimate == pytest.approx(0.5)
    assert val.ips.estimate == pytest.approx(20 / 4)
    assert val.snips.estimate == pytest.approx(20 / 4)
    assert report.ess == pytest.approx(16 / 8)
    assert acc.on_policy == 0.5


def test_missing_and_small_probabilities_are_warned_about() -> None:
    data = tiny()
    data = LoggedData(**{**data.__dict__, "mu": np.array([0.5, np.nan, 0.005, 0.25])})
    report = estimate(data, [{"a": 0.5, "b": 0.5}] * 4, doubly_robust=False)
    assert report.used == 3
    assert "1 row(s) without a logged probability were skipped" in report.warnings
    assert any("below 0.01" in w for w in report.warnings)
    report = estimate(tiny(), [{"c": 1.0}] * 4, doubly_robust=False)
    assert any("100.0% of the policy's mass is on offers never logged" in w for w in report.warnings)


def test_csv_policies_are_validated_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("decision_id,offer_id,probability\nd1,a,0.5\nd1,b,x\n")
    with pytest.raises(PolicyError, match=r"p\.csv:3:6: probability 'x' is not a number"):
        csv_policy(path, tiny())
    path.write_text("decision_id,offer_id,probability\nd1,a,0.5\nd1,b,0.4\n")
    with pytest.raises(PolicyError, match=r"probabilities for 'd1' sum to 0.900000, not 1"):
        csv_policy(path, tiny())
    path.write_text("placement,offer_id,probability\nhome,a,0.25\nhome,b,0.5\nhome,zz,0.25\n")
    # per placement: restricted to the channel's logged offers (a, b) and renormalised
    assert csv_policy(path, tiny())[0] == pytest.approx({"a": 1 / 3, "b": 2 / 3})
    path.write_text("offer,probability\n")
    with pytest.raises(PolicyError, match=r"p\.csv:1:1: header must be"):
        csv_policy(path, tiny())


def _world_run(seed: int) -> tuple[LoggedData, list[dict[str, float]], float, float]:
    """A logged world, a target policy over its eligible offers, and that policy's true values."""
    world = World.create(n_customers=3000, n_offers=12, seed=100 + seed)
    cols = world.simulate_log(n_decisions=4000, seed=seed)
    index = {c: i for i, c in enumerate(world.population.customer_ids)}
    customer = np.array([index[c] for c in cols["customer_id"]])
    context = {k: cols[CONTEXT_PREFIX + k] for k in ("cart_value", "call_reason_billing")}
    mask = world.eligible(customer, cols["channel"], context)
    # the target: a sharper softmax than the logging policy, on value only
    logits = np.log(world.offer_value) * 3.0
    weights = np.where(mask, np.exp(logits - logits.max()), 0.0)
    pi = weights / weights.sum(axis=1, keepdims=True)
    n, k = pi.shape
    true_p = world.oracle(
        np.repeat(customer, k),
        np.tile(np.arange(k), n),
        np.repeat(cols["channel"], k),
        {key: np.repeat(v, k) for key, v in context.items()},
        np.repeat(cols["timestamp"], k),
    ).reshape(n, k)
    truth_outcome = float((pi * true_p).sum(axis=1).mean())
    truth_value = float((pi * true_p * world.offer_value).sum(axis=1).mean())
    policy = [{world.offer_ids[j]: float(pi[i, j]) for j in np.flatnonzero(pi[i])} for i in range(n)]
    data = LoggedData.from_table(pa.table({name: cols[name] for name in (
        "decision_id", "channel", "placement", "offer_id", "selection_probability", "outcome", "value")}))  # fmt: skip
    return data, policy, truth_outcome, truth_value


def test_the_true_value_lies_inside_the_dr_interval_in_at_least_90_percent_of_runs() -> None:
    runs = 30
    inside = {"dr": 0, "ips": 0, "snips": 0}
    for seed in range(runs):
        data, policy, truth_outcome, truth_value = _world_run(seed)
        report = estimate(data, policy, seed=seed)
        for est, truth in zip(report.estimates, (truth_outcome, truth_value), strict=True):
            for name in inside:
                iv = getattr(est, name)
                inside[name] += iv.low <= truth <= iv.high
    coverage = {name: hits / (2 * runs) for name, hits in inside.items()}
    print(f"\ncoverage over {runs} worlds x 2 rewards: {coverage}")
    assert coverage["dr"] >= 0.9, coverage


def test_cli_prints_the_estimates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = World.create(n_customers=1000, n_offers=8, seed=3)
    log = tmp_path / "log.csv"
    write_dataset(log, world.simulate_log(n_decisions=2000, seed=1))
    assert main(["--log", str(log), "--policy", "uniform"]) == 0
    out = capsys.readouterr().out
    assert "policy uniform: 2,000 of 2,000 logged decisions used" in out
    assert "| outcome |" in out and "| DR |" in out
    assert main(["--log", str(log), "--policy", "csv:/nonexistent.csv"]) == 2
    assert "error: /nonexistent.csv: No such file or directory" in capsys.readouterr().err
