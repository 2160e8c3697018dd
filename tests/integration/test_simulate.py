"""The closed loop end to end on a small world: the real server, Redis and learner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.closed_loop import POLICIES, SimulationConfig, _draw_requests, run
from training.scenarios import NEW_OFFER_ID, changed_offers, drifted, with_new_offer
from training.world import World


def test_scenarios_change_the_truth_and_leave_the_original_world_alone() -> None:
    world = World.create(n_customers=500, n_offers=10, seed=3)
    before = world.intercept.copy()
    drift = drifted(world, seed=1)
    assert len(changed_offers(world, drift)) == 8
    assert np.array_equal(world.intercept, before)
    extended = with_new_offer(world)
    assert extended.offer_ids[-1] == NEW_OFFER_ID and extended.n_offers == 11
    assert np.array_equal(extended.intercept[:-1], world.intercept)  # the others keep their truth
    assert NEW_OFFER_ID in extended.catalog_yaml()
    # the draws of the run are seeded
    a, b = _draw_requests(world, 50, seed=4), _draw_requests(world, 50, seed=4)
    assert a == b and a != _draw_requests(world, 50, seed=5)


@pytest.mark.parametrize("scenario", ["drift", "new-offer"])
def test_a_short_closed_loop_run_scores_every_policy_on_the_same_decisions(tmp_path: Path, scenario: str) -> None:
    cfg = SimulationConfig(
        scenario=scenario,
        decisions=800,
        customers=2000,
        log_decisions=8000,
        workers=1,
        concurrency=4,
        out=tmp_path / scenario,
    )
    result = run(cfg)
    assert result.evaluated + result.control_or_degraded == cfg.decisions
    assert result.evaluated > 0.9 * cfg.decisions
    for k in POLICIES:
        assert result.reward["oracle"] >= result.reward[k] - 1e-9, k
    assert result.share_of_oracle["oracle"] == pytest.approx(1.0)
    assert result.vs_model_greedy_after_change["n"] > 0
    saved = json.loads((cfg.out / "summary.json").read_text())
    assert saved["evaluated"] == result.evaluated
    assert (cfg.out / "reward.png").stat().st_size > 10_000
    assert "| server |" in (cfg.out / "summary.md").read_text()
    if scenario == "new-offer":
        assert result.new_offer["introduced_at"] == 160
        assert result.new_offer["windows"], "the new offer was never a candidate"
    else:
        assert len(result.changed_offers) == 8
