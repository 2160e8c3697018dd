"""The closed loop end to end on a small world: the real server, Redis and learner."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from server.catalog.compiler import parse_catalog
from server.features.file import merged_schema
from server.state.feature_store import read_feature_file
from tests.integration.test_cli import NBO
from training.closed_loop import (
    SimulationConfig,
    _draw_requests,
    build_scenario,
    catalog_terms,
    main,
    run,
)
from training.closed_loop_scoring import PICKING, POLICIES
from training.dataset import read_dataset
from training.population import CATEGORICAL
from training.scenarios import NEW_OFFER_ID, changed_offers, drifted, with_new_offer
from training.world import CAMPAIGNS, World

DECISIONS = 1_500


def test_scenarios_change_the_truth_and_leave_the_original_world_alone() -> None:
    world = World.create(n_customers=500, n_offers=10, seed=3)
    before = world.intercept.copy()
    drift = drifted(world, seed=1)
    assert len(changed_offers(world, drift)) == 8
    assert np.array_equal(world.intercept, before)
    assert np.array_equal(drift.intercept, drifted(world, seed=1).intercept)  # seeded
    assert not np.array_equal(drift.intercept, drifted(world, seed=2).intercept)
    extended = with_new_offer(world)
    assert extended.offer_ids[-1] == NEW_OFFER_ID and extended.n_offers == 11
    assert np.array_equal(extended.intercept[:-1], world.intercept)  # the others keep their truth
    assert np.array_equal(extended.intercept, with_new_offer(world).intercept)
    assert NEW_OFFER_ID in extended.catalog_yaml()
    # the draws of the run are seeded
    a, b = _draw_requests(world, 50, seed=4), _draw_requests(world, 50, seed=4)
    assert a == b and a != _draw_requests(world, 50, seed=5)
    # ... and only consenting customers are drawn
    for r in a:
        column = "consent_web" if r.channel == "web" else "consent_call"
        assert world.population.columns[column][r.customer] == 1


def test_the_baselines_rank_with_the_servers_tiers(tmp_path: Path) -> None:
    world = with_new_offer(World.create(n_customers=200, seed=7))
    world.write_features(tmp_path / "customers.csv")
    schema = merged_schema(read_feature_file(tmp_path / "customers.csv", CATEGORICAL), None)
    terms = catalog_terms(parse_catalog(world.catalog_yaml(), schema))
    by_type = {c.id: (c.type, c.priority) for c in CAMPAIGNS}
    for offer, campaign in zip(world.offer_ids, world.offer_campaign, strict=True):
        kind, priority = by_type[campaign]
        want = {"ad_hoc": 0, "lifecycle": 2}.get(kind, 1 if priority >= 50 else 3)
        assert terms.tier[offer] == want, offer
    assert terms.tier[NEW_OFFER_ID] == 0


def _read_decisions(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    ("scenario", "bandit", "concurrency", "world"),
    # the stationary run is the greedy server alone, one call at a time (no contact-policy races),
    # so the model-greedy baseline must reproduce it decision for decision
    [
        ("stationary", False, 1, "default"),
        ("drift", True, 4, "default"),
        ("new-offer", True, 4, "default"),
        ("response-drift", True, 4, "alt"),
    ],
)
def test_a_short_closed_loop_run_scores_every_policy_on_the_same_decisions(
    tmp_path: Path, scenario: str, bandit: bool, concurrency: int, world: str
) -> None:
    cfg = SimulationConfig(
        world=world,
        scenario=scenario,
        decisions=DECISIONS,
        customers=2000,
        log_decisions=8000,
        workers=1,
        concurrency=concurrency,
        bandit=bandit,
        out=tmp_path / scenario,
    )
    result = run(cfg)
    assert result.missing_records == 0 and result.degraded == 0
    assert result.evaluated + result.control_or_degraded == cfg.decisions
    assert result.evaluated > 0.9 * cfg.decisions

    rows = _read_decisions(cfg.out / "decisions.csv")
    assert len(rows) == result.evaluated
    assert len({r["decision_id"] for r in rows}) == len(rows)
    assert [int(r["index"]) for r in rows] == sorted(int(r["index"]) for r in rows)
    ev = {k: np.array([float(r[f"ev_{k}"]) for r in rows]) for k in POLICIES}
    for k in POLICIES:
        # every policy is scored on the same decisions; the summary is their mean
        assert ev[k].size == result.evaluated
        assert ev[k].mean() == pytest.approx(result.reward[k])
    in_top = np.array([r["server_in_top_tier"] == "1" for r in rows])
    for k in ("random", "model_greedy", "rules_only"):
        assert (ev["oracle"] >= ev[k] - 1e-12).all(), k
    # the server may go below the best tier only through the bandit's epsilon floor
    assert (ev["oracle"][in_top] >= ev["server"][in_top] - 1e-12).all()
    assert result.outside_top_tier == int((~in_top).sum())
    assert result.tier_violations == result.outside_top_tier
    assert result.tier_violation_share == pytest.approx(result.tier_violations / result.evaluated)
    assert result.share_of_oracle["oracle"] == pytest.approx(1.0)
    # the price of exploring: (model-greedy - server) / oracle in points, with its paired interval
    price = result.price_of_exploring
    gap = 100 * (ev["model_greedy"].sum() - ev["server"].sum()) / ev["oracle"].sum()
    assert price["mean"] == pytest.approx(gap) and price["n"] == result.evaluated
    assert price["low"] <= price["mean"] <= price["high"]
    empty = np.array([r["candidates"] == "0" for r in rows])
    for k in PICKING:
        assert all((r[f"pick_{k}"] == "") == e for r, e in zip(rows, empty, strict=True)), k

    # the run's log, exported in the dataset schema: one row per award of an evaluated decision
    log = read_dataset(cfg.out / "log.parquet")
    assert result.exported_rows == log.num_rows
    assert sorted(log.column("decision_id").to_pylist()) == sorted(r["decision_id"] for r in rows if r["pick_server"])
    probability = np.array(log.column("selection_probability").to_pylist())
    assert ((probability > 0) & (probability <= 1)).all()
    if bandit:
        assert (probability < 1).any()

    if not bandit:
        assert (probability == 1).all()
        assert result.outside_top_tier == 0
        assert [r["pick_server"] for r in rows] == [r["pick_model_greedy"] for r in rows]
        assert result.vs_model_greedy["mean"] == 0.0
        assert price["mean"] == 0.0 and price["low"] == price["high"] == 0.0
        assert result.tier_violations == 0
    # conversions: nbo report's programme lift counts the customers the truth counts
    truth, reported = result.true_lift, result.reported_lift
    assert 0 < truth["control_customers"] < truth["customers"]
    assert truth["conversion_rate_diff"] > 0 and truth["value_per_customer_diff"] > 0
    assert (reported["customers"], reported["control_customers"]) == (truth["customers"], truth["control_customers"])
    assert "Lift against control groups" in (cfg.out / "report.html").read_text()
    saved = json.loads((cfg.out / "summary.json").read_text())
    assert saved["evaluated"] == result.evaluated and saved["bandit"] == bandit
    assert saved["world"] == world and saved["price_of_exploring"] == price
    assert saved["tier_violations"] == result.tier_violations
    settings = saved["bandit_settings"]
    assert (settings["seed"] == cfg.seed and "web" in settings["channels"]) if bandit else settings == {}
    assert "price of exploring" in (cfg.out / "summary.md").read_text()
    assert (cfg.out / "reward.png").stat().st_size > 10_000
    assert "| server |" in (cfg.out / "summary.md").read_text()
    if scenario == "stationary":
        assert result.vs_model_greedy_after_change == {} and result.reward_after_change == {}
        assert result.vs_model_greedy_after_change_halves == []
        assert result.new_offer == {}
        return
    change_at = DECISIONS // 5 if scenario == "new-offer" else DECISIONS // 2
    index = np.array([int(r["index"]) for r in rows])
    after = index >= change_at
    assert result.vs_model_greedy_after_change["n"] == after.sum()
    # server - model-greedy in the first and the second half of the decisions after the change
    middle = change_at + (DECISIONS - change_at) // 2
    first, second = result.vs_model_greedy_after_change_halves
    for half, rows_in in ((first, after & (index < middle)), (second, index >= middle)):
        assert half["n"] == rows_in.sum() > 0
        assert half["mean"] == pytest.approx((ev["server"] - ev["model_greedy"])[rows_in].mean())
        assert half["low"] < half["high"] or half["low"] == half["high"] == half["mean"]
    for k in POLICIES:
        assert result.reward_after_change[k] == pytest.approx(ev[k][after].mean())
    assert result.share_of_oracle_after_change["oracle"] == pytest.approx(1.0)
    assert [int(r["world"]) for r in rows] == after.astype(int).tolist()
    if scenario == "new-offer":
        assert result.new_offer["introduced_at"] == change_at
        assert result.new_offer["windows"], "the new offer was never a candidate"
        before = [r for r, a in zip(rows, after, strict=True) if not a]
        assert all(r["new_offer_candidate"] == "0" for r in before)
        first = result.new_offer["first_10000"]
        assert first["n"] == sum(r["new_offer_candidate"] == "1" for r in rows)
        assert all(r[f"pick_{k}"] != NEW_OFFER_ID for r in before for k in PICKING)
    else:
        assert len(result.changed_offers) == 8


def test_the_world_is_drawn_the_same_way_for_the_same_seed() -> None:
    cfg = SimulationConfig(scenario="drift", decisions=100, customers=300, seed=3)
    a, b = build_scenario(cfg), build_scenario(cfg)
    assert np.array_equal(a.truths[1].intercept, b.truths[1].intercept)
    assert _draw_requests(a.world, 100, cfg.seed) == _draw_requests(b.world, 100, cfg.seed)
    with pytest.raises(ValueError, match="unknown scenario"):
        build_scenario(SimulationConfig(scenario="storm"))
    alt = SimulationConfig(world="alt", scenario="response-drift", decisions=100, customers=300, seed=3)
    a, b = build_scenario(alt), build_scenario(alt)
    assert a.world.n_offers == 24 and a.change_at == 50
    assert np.array_equal(a.truths[1].slopes, b.truths[1].slopes)
    assert not np.array_equal(a.truths[0].slopes, a.truths[1].slopes)
    with pytest.raises(ValueError, match="unknown world"):
        build_scenario(SimulationConfig(world="mars"))


def test_main_parses_the_cli_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[SimulationConfig] = []

    def fake_run(cfg: SimulationConfig) -> object:
        seen.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr("training.closed_loop.run", fake_run)
    with pytest.raises(SystemExit):
        main(["--scenario", "new-offer", "--decisions", "700", "--no-bandit", "--out", str(tmp_path)])
    assert seen[0].scenario == "new-offer" and seen[0].decisions == 700 and not seen[0].bandit
    assert seen[0].out == tmp_path / "new-offer"
    assert seen[0].world == "default" and seen[0].arm_inputs == ()
    with pytest.raises(SystemExit):
        main(
            [
                "--world",
                "alt",
                "--scenario",
                "response-drift",
                "--arm-inputs",
                "age, satisfaction",
                "--out",
                str(tmp_path),
            ]
        )
    assert seen[1].world == "alt" and seen[1].scenario == "response-drift"
    assert seen[1].arm_inputs == ("age", "satisfaction") and seen[1].bandit
    assert seen[1].out == tmp_path / "alt-response-drift" and seen[1].bandit_yaml is None
    settings = tmp_path / "bandit.yaml"
    settings.write_text("bandit:\n  seed: 7\n")
    with pytest.raises(SystemExit):
        main(["--bandit-file", str(settings), "--out", str(tmp_path)])
    assert seen[2].bandit_yaml == "bandit:\n  seed: 7\n"


def test_nbo_report_reads_a_finished_simulation_from_its_kept_redis(tmp_path: Path) -> None:
    cfg = SimulationConfig(decisions=400, customers=1000, log_decisions=4000, workers=1, out=tmp_path / "run")
    result = run(cfg)
    out = tmp_path / "again.json"
    done = subprocess.run(
        [*NBO, "report", "--data-dir", str(cfg.out), "--format", "json", "--out", str(out)],
        check=False,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "REDIS_URL"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    programme = next(r for r in json.loads(out.read_text())["lift"] if r["scope"] == "programme")
    customers = programme["treatment"]["customers"] + programme["control"]["customers"]
    assert (customers, programme["control"]["customers"]) == (
        result.reported_lift["customers"],
        result.reported_lift["control_customers"],
    )
