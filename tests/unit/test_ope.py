"""`nbo ope` (training/ope.py): exact estimators on hand-made logs, CSV validation, warnings, the
current rules' candidates and the model policy against the server's own code, and coverage of
the doubly robust interval on synthetic worlds whose true value is known."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from server.cli.main import main as nbo_main
from server.domain import Channel
from server.models.scorers import ModelScorer, ScoringInput
from server.pipeline.arbitration import rank
from training.dataset import CONTEXT_PREFIX, write_dataset
from training.ope import (
    Interval,
    Report,
    doubly_robust,
    effective_sample_size,
    evaluate,
    ips,
    main,
    normal_interval,
    snips,
    top_share,
)
from training.ope_data import F64, I64, LoggedData, OpeInputError, Rules, ScoringModel, Str, feature_schema, read_log
from training.ope_policies import (
    BanditPolicy,
    CsvPolicy,
    Exploration,
    LoggingPolicy,
    ModelPolicy,
    PolicyDistribution,
    UniformPolicy,
    bandit_settings,
    read_arms,
    read_policy_csv,
)
from training.ope_reward import CrossFittedReward
from training.world import CONTEXT_KEYS, World

WORLD_SEED = 3


# -- hand-made data ----------------------------------------------------------------------------
def _columns(**overrides: list[object]) -> dict[str, list[object]]:
    """Four web decisions: a (mu 0.5) accepted for 10, b (mu 0.25) declined, a declined, b accepted for 20."""
    cols: dict[str, list[object]] = {
        "decision_id": ["d1", "d2", "d3", "d4"],
        "timestamp": [1767225600.0, 1767225660.0, 1767225720.0, 1767225780.0],
        "customer_id": ["C1", "C2", "C3", "C4"],
        "channel": ["web"] * 4,
        "placement": ["home"] * 4,
        "offer_id": ["a", "b", "a", "b"],
        "selection_probability": [0.5, 0.25, 0.5, 0.25],
        "outcome": [1, 0, 0, 1],
        "value": [10.0, 0.0, 0.0, 20.0],
        "tenure_months": [1.0, 2.0, 3.0, 4.0],
    }
    cols.update(overrides)
    return cols


def tiny_log(tmp_path: Path, **overrides: list[object]) -> LoggedData:
    path = tmp_path / "log.csv"
    write_dataset(path, _columns(**overrides))
    return read_log(path)


def per_decision(log: LoggedData, dists: dict[str, dict[str, float]]) -> PolicyDistribution:
    rows, offers, probs = [], [], []
    for i, d in enumerate(log.decision_id.tolist()):
        for o, p in dists[d].items():
            rows.append(i)
            offers.append(o)
            probs.append(p)
    return PolicyDistribution.build(len(log), (rows, offers, probs))


@dataclass(frozen=True)
class FixedReward:
    """q_outcome: 0.4 for a, 0.2 for anything else; q_value = q x (10 for a, 20 otherwise)."""

    name: str = "fixed"

    def predict(self, log: LoggedData, row: I64, offer_id: Str) -> tuple[F64, F64]:
        is_a = offer_id == "a"
        q = np.where(is_a, 0.4, 0.2)
        return q, q * np.where(is_a, 10.0, 20.0)


TINY_POLICY = {"d1": {"a": 1.0}, "d2": {"a": 0.5, "b": 0.5}, "d3": {"b": 1.0}, "d4": {"b": 1.0}}


def test_estimators_by_hand(tmp_path: Path) -> None:
    log = tiny_log(tmp_path)
    report = evaluate(log, per_decision(log, TINY_POLICY), FixedReward())
    acc, val = report.estimate("outcome"), report.estimate("value")
    # pi(logged) = [1, 0.5, 0, 1], mu = [0.5, 0.25, 0.5, 0.25] -> w = [2, 2, 0, 4]
    assert acc.ips.estimate == pytest.approx((2 + 0 + 0 + 4) / 4)
    assert acc.ips.se == pytest.approx(math.sqrt(11 / 3) / 2)  # sd of [2, 0, 0, 4] / sqrt(4)
    assert acc.snips.estimate == pytest.approx(6 / 8)
    # delta method: w (r - 0.75) = [0.5, -1.5, 0, 1]; sqrt(3.5 * 4/3) / sum(w)
    assert acc.snips.se == pytest.approx(math.sqrt(3.5 * 4 / 3) / 8)
    assert val.ips.estimate == pytest.approx((20 + 80) / 4)
    assert val.snips.estimate == pytest.approx(100 / 8)
    # DR terms: direct + w (r - q(logged)): 0.4 + 2(0.6), 0.3 + 2(-0.2), 0.2 + 0, 0.2 + 4(0.8)
    assert acc.dr is not None and val.dr is not None
    assert acc.dr.estimate == pytest.approx((1.6 - 0.1 + 0.2 + 3.4) / 4)
    assert val.dr.estimate == pytest.approx((16 - 4 + 4 + 68) / 4)
    assert acc.logged.estimate == 0.5 and val.logged.estimate == 7.5
    assert report.diagnostics.ess == pytest.approx(64 / 24)
    assert report.diagnostics.max_weight == 4.0
    assert acc.ips.low == pytest.approx(1.5 - 1.959963984540054 * math.sqrt(11 / 3) / 2)


def test_estimator_functions() -> None:
    w = np.array([1.0, 3.0, 0.0, 0.0])
    r = np.array([1.0, 1.0, 1.0, 0.0])
    assert ips(w, r).estimate == 1.0
    assert snips(w, r).estimate == 1.0
    assert snips(w, r, mass=0.5).estimate == 0.5  # a policy that sends nothing half the time
    assert effective_sample_size(w) == pytest.approx(16 / 10)
    assert top_share(np.arange(1.0, 201.0)) == pytest.approx((200 + 199) / (200 * 201 / 2))
    dr = doubly_robust(np.array([0.5, 0.5]), np.array([2.0, 0.0]), np.array([1.0, 0.0]), np.array([0.25, 0.75]))
    assert dr.estimate == pytest.approx((0.5 + 1.5 + 0.5) / 2)
    assert math.isnan(normal_interval(np.array([3.0])).se)
    assert Interval(1.0, 0.5, 1.5, 0.25).covers(1.5)


def test_the_logging_policy_reproduces_the_on_policy_mean(tmp_path: Path) -> None:
    log = tiny_log(tmp_path)
    report = evaluate(log, LoggingPolicy().distribution(log), FixedReward())
    for e in report.estimates:
        assert e.ips.estimate == pytest.approx(e.logged.estimate)
        assert e.snips.estimate == pytest.approx(e.logged.estimate)
        assert e.dr is None  # the rest of the logging distribution is unknown
    assert report.diagnostics.ess == 4


# -- warnings ----------------------------------------------------------------------------------
def codes(report: Report) -> set[str]:
    return {w.code for w in report.warnings}


def test_missing_zero_and_small_probabilities(tmp_path: Path) -> None:
    log = tiny_log(tmp_path, selection_probability=[0.5, None, 0.0, 0.005])
    assert np.isnan(log.mu[1]) and np.isnan(log.mu[2])
    report = evaluate(log, per_decision(log, TINY_POLICY), FixedReward())
    d = report.diagnostics
    assert (d.rows, d.used, d.missing_probability, d.small_probability) == (4, 2, 2, 1)
    assert {"missing_probability", "small_probability"} <= codes(report)
    # w = [1/0.5, 1/0.005] on the two rows used
    assert report.estimate("outcome").ips.estimate == pytest.approx((2 * 1 + 200 * 1) / 2)
    message = next(w.message for w in report.warnings if w.code == "small_probability")
    assert "below 0.01 (smallest 0.005, weight up to 200x)" in message
    with pytest.raises(OpeInputError, match="no row has a logged selection probability"):
        log = tiny_log(tmp_path, selection_probability=[None, None, None, 0])
        evaluate(log, per_decision(log, TINY_POLICY), None)
    with pytest.raises(OpeInputError, match=r"must be in \(0, 1\]; line 3 has 1.5"):
        tiny_log(tmp_path, selection_probability=[0.5, 1.5, None, 0.1])


def test_unsupported_mass_and_support_gap(tmp_path: Path) -> None:
    # a deterministic logger (always a): the policy's mass on b has no support in the log
    log = tiny_log(tmp_path, offer_id=["a"] * 4, selection_probability=[1.0] * 4)
    report = evaluate(log, per_decision(log, {d: {"a": 0.5, "b": 0.5} for d in TINY_POLICY}), FixedReward())
    d = report.diagnostics
    assert d.unsupported_mass == pytest.approx(0.5)
    assert d.mean_weight == 0.5
    assert {"no_support", "support_gap"} <= codes(report)
    no_support = next(w.message for w in report.warnings if w.code == "no_support")
    assert no_support.startswith("50.0% of the policy's mass is on offers never logged for that channel and placement")


def test_heavy_weights(tmp_path: Path) -> None:
    n = 300
    mu = [0.5] * n
    mu[7] = 0.002  # one row carries a weight of 500
    cols: dict[str, list[Any]] = {
        "decision_id": [f"d{i}" for i in range(n)],
        "timestamp": [1767225600.0 + i for i in range(n)],
        "customer_id": [f"C{i}" for i in range(n)],
        "channel": ["web"] * n,
        "placement": ["home"] * n,
        "offer_id": ["a"] * n,
        "selection_probability": mu,
        "outcome": [i % 2 for i in range(n)],
        "value": [float(10 * (i % 2)) for i in range(n)],
        "tenure_months": [1.0] * n,
    }
    path = tmp_path / "heavy.parquet"
    write_dataset(path, cols)
    log = read_log(path)
    report = evaluate(log, per_decision(log, {f"d{i}": {"a": 1.0} for i in range(n)}), None)
    d = report.diagnostics
    assert d.max_weight == pytest.approx(500)
    assert d.top1_weight_share == pytest.approx((500 + 2 + 2) / (500 + 2 * (n - 1)))
    assert "heavy_weights" in codes(report)
    assert report.estimate("outcome").dr is None  # no reward model given


# -- policy CSVs -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"p\.csv:1: empty file"),
        ("decision,offer_id,probability\n", r"p\.csv:1: header is 'decision,offer_id,probability'; expected"),
        ("decision_id,offer_id,probability\n", r"p\.csv: no rows after the header"),
        ("decision_id,offer_id,probability\nd1,a,0.5,9\n", r"p\.csv:2: expected 3 fields, got 4"),
        ("decision_id,offer_id,probability\nd1,a,0.5\nd1,b,x\n", r"p\.csv:3: column 'probability' must be a number"),
        (
            "decision_id,offer_id,probability\nd1,a,1.5\n",
            r"p\.csv:2: column 'probability' must be in \[0, 1\]; got 1\.5",
        ),
        ("decision_id,offer_id,probability\nd1,a,-0.1\n", r"p\.csv:2: column 'probability' must be in \[0, 1\]"),
        ("decision_id,offer_id,probability\nd1,a,nan\n", r"p\.csv:2: column 'probability' must be in \[0, 1\]"),
        ("decision_id,offer_id,probability\n,a,1\n", r"p\.csv:2: column 'decision_id' is empty"),
        ("decision_id,offer_id,probability\nd1,,1\n", r"p\.csv:2: column 'offer_id' is empty"),
        (
            "decision_id,offer_id,probability\nd1,a,0.5\nd2,a,1\nd1,a,0.5\n",
            r"p\.csv:4: offer 'a' is listed twice for decision 'd1' \(first at line 2\)",
        ),
        (
            "decision_id,offer_id,probability\nd1,a,0.5\nd1,b,0.4\n",
            r"p\.csv:2: probabilities of decision 'd1' sum to 0\.9; they must sum to 1 \(within 1e-06\)",
        ),
        (
            "placement,offer_id,probability\nhome,a,0.5\nhome,b,0.5000011\n",
            r"p\.csv:2: probabilities of placement 'home' sum to 1",
        ),
    ],
)
def test_policy_csv_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(OpeInputError, match=message):
        read_policy_csv(path)


def test_policy_csv_accepts_tolerance_any_column_order_and_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("\ufeffoffer_id,probability,placement\na,0.3333333,home\nb,0.6666671,home\n,,\n")
    table = read_policy_csv(path)
    assert table.kind == "placement" and table.probs == {"home": {"a": 0.3333333, "b": 0.6666671}}


def test_csv_policy_per_decision_and_per_placement(tmp_path: Path) -> None:
    log = tiny_log(tmp_path)
    path = tmp_path / "p.csv"
    path.write_text("decision_id,offer_id,probability\n" + "".join(f"d{i},a,1\n" for i in (1, 2, 3)))
    with pytest.raises(OpeInputError, match=r"p\.csv: no probabilities for decision 'd4' \(.*log\.csv line 5\)"):
        CsvPolicy(read_policy_csv(path)).distribution(log)
    path.write_text("decision_id,offer_id,probability\n" + "".join(f"d{i},a,0.25\nd{i},b,0.75\n" for i in range(1, 6)))
    dist = CsvPolicy(read_policy_csv(path)).distribution(log)
    assert dist.as_dicts() == [{"a": 0.25, "b": 0.75}] * 4
    # per placement: restricted to the candidates (no catalog: offers logged on the channel) and renormalised
    path.write_text("placement,offer_id,probability\nhome,a,0.2\nhome,b,0.6\nhome,zz,0.2\n")
    dist = CsvPolicy(read_policy_csv(path)).distribution(log)
    assert dist.as_dicts()[0] == pytest.approx({"a": 0.25, "b": 0.75})
    assert any("no --catalog" in n for n in dist.notes)
    path.write_text("placement,offer_id,probability\nhome_banner,a,1\n")
    with pytest.raises(OpeInputError, match=r"no probabilities for placement 'home' of the log"):
        CsvPolicy(read_policy_csv(path)).distribution(log)
    path.write_text("placement,offer_id,probability\nhome,zz,1\n")
    dist = CsvPolicy(read_policy_csv(path)).distribution(log)
    assert dist.total().tolist() == [0.0] * 4  # nothing left among the candidates: send nothing
    assert any("sends nothing" in n for n in dist.notes)


# -- a synthetic world: candidates, the model policy, the bandit -------------------------------
@dataclass(frozen=True)
class WorldLog:
    world: World
    cols: dict[str, np.ndarray]
    log: LoggedData
    path: Path
    catalog: Path
    customer: I64

    def context(self) -> dict[str, np.ndarray]:
        return {k: self.cols[CONTEXT_PREFIX + k] for k in CONTEXT_KEYS}

    def true_p(self) -> F64:
        """(rows, offers) true acceptance probability of every offer for every logged row."""
        n, k = len(self.log), self.world.n_offers
        out: F64 = self.world.oracle(
            np.repeat(self.customer, k),
            np.tile(np.arange(k), n),
            np.repeat(self.cols["channel"], k),
            {key: np.repeat(v, k) for key, v in self.context().items()},
            np.repeat(self.cols["timestamp"], k),
        ).reshape(n, k)
        return out


def make_world_log(tmp: Path, world: World, log_seed: int, n: int = 4000, write: bool = True) -> WorldLog:
    cols = world.simulate_log(n_decisions=n, seed=log_seed)
    index = {c: i for i, c in enumerate(world.population.customer_ids)}
    customer = np.array([index[c] for c in cols["customer_id"]], dtype=np.int64)
    path, catalog = tmp / "log.parquet", tmp / "catalog.yaml"
    if write:
        write_dataset(path, cols)
        catalog.write_text(world.catalog_yaml())
        log = read_log(path)
    else:
        log = LoggedData.from_table(pa.table(cols), source="log", csv=False)
    return WorldLog(world, cols, log, path, catalog, customer)


@pytest.fixture(scope="module")
def wlog(tmp_path_factory: pytest.TempPathFactory) -> WorldLog:
    return make_world_log(
        tmp_path_factory.mktemp("world"), World.create(n_customers=2000, n_offers=12, seed=WORLD_SEED), 1, n=3000
    )


@pytest.fixture(scope="module")
def rules(wlog: WorldLog) -> Rules:
    return Rules.load(wlog.log, wlog.catalog, feature_schema(wlog.log))


@pytest.fixture(scope="module")
def model_dir(wlog: WorldLog, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from training.train import train

    out = tmp_path_factory.mktemp("model")
    train(wlog.path, out, catalog=wlog.catalog, num_boost_round=40, progress=False)
    yield out


def test_candidates_are_the_current_rules(wlog: WorldLog, rules: Rules) -> None:
    """Eligibility as the world's logging policy applies it, plus the catalog's targeting."""
    c = wlog.cols
    expected = wlog.world.eligible(wlog.customer, c["channel"], wlog.context())
    targeted = (
        (c["churn_risk"] >= 0.3) | (c["recency_days"] > 120) | (c["tier"] == "A") | (c["price_sensitivity"] >= 0.55)
    )
    for j, campaign in enumerate(wlog.world.offer_campaign):
        if campaign == "winter_retention":
            expected[:, j] &= targeted
    got = np.zeros_like(expected)
    index = {o: j for j, o in enumerate(wlog.world.offer_ids)}
    got[rules.candidates.row, [index[o] for o in rules.candidates.offer_id.tolist()]] = True
    assert (got == expected).all()
    assert 0 < expected.sum() < wlog.world.eligible(wlog.customer, c["channel"], wlog.context()).sum()


def test_offers_logged_unavailable_leave_the_rows_candidates(wlog: WorldLog, rules: Rules, tmp_path: Path) -> None:
    """An `unavailable` column (nbo export: contact policy, control group, budget) narrows the
    rebuilt candidates of exactly the rows and offers it names."""
    bounds = rules.candidates.bounds(len(wlog.log))
    first = rules.candidates.offer_id[bounds[0] : bounds[1]].tolist()
    assert len(first) >= 2
    blocked = ["" for _ in range(len(wlog.log))]
    blocked[0] = f"{first[0]} no_such_offer"
    path = tmp_path / "log.parquet"
    write_dataset(path, {**wlog.cols, "unavailable": blocked})
    log = read_log(path)
    assert log.unavailable is not None and log.unavailable[0] == {first[0], "no_such_offer"}
    assert "unavailable" not in feature_schema(log).names  # not a feature
    narrowed = Rules.load(log, wlog.catalog, feature_schema(log)).candidates
    nb = narrowed.bounds(len(log))
    assert narrowed.offer_id[nb[0] : nb[1]].tolist() == first[1:]
    assert narrowed.offer_id[nb[1] :].tolist() == rules.candidates.offer_id[bounds[1] :].tolist()


def test_model_policy_ranks_like_the_server(wlog: WorldLog, rules: Rules, model_dir: Path) -> None:
    model = ScoringModel.load(model_dir, "model")
    dist = ModelPolicy(model, rules).distribution(wlog.log)
    got = dist.as_dicts()
    scorer = ModelScorer(model.version, model.spec, model.booster.predict, rules.schema, compiled=False)
    bounds = rules.candidates.bounds(len(wlog.log))
    checked = sends_nothing = 0
    for i in range(0, len(wlog.log), 7):
        channel = Channel(str(wlog.log.channel[i]))
        view = rules.catalog.views[channel]
        positions = rules.candidates.position[bounds[i] : bounds[i + 1]].astype(np.intp)
        p, _ = scorer.score(ScoringInput(rules.catalog, channel, rules.vectors[i], rules.contexts[i], positions))
        order = rank(view, positions, p, rules.catalog.min_expected_value).order
        if order.size == 0:
            assert got[i] == {}
            sends_nothing += 1
        else:
            assert got[i] == {view.offer_ids[positions[order[0]]]: 1.0}
        checked += 1
    assert checked > 400 and 0 < sends_nothing < checked

    soft = ModelPolicy(model, rules, Exploration(temperature=1.0, epsilon=0.1)).distribution(wlog.log)
    total = soft.total()
    assert np.allclose(total[total > 0], 1.0)
    assert ((total > 0) == (dist.total() > 0)).all()
    # epsilon puts mass on every ranked candidate
    assert (soft.prob >= 0.1 / 12).all() and soft.row.size > dist.row.size


def test_greedy_bandit_is_the_model_policy(wlog: WorldLog, rules: Rules, model_dir: Path) -> None:
    model = ScoringModel.load(model_dir, "model")
    greedy = bandit_settings(rules.catalog.bandit, exploration=0.0, epsilon=0.0)
    bandit = BanditPolicy(rules, greedy, model).distribution(wlog.log)
    assert bandit.as_dicts() == ModelPolicy(model, rules).distribution(wlog.log).as_dicts()
    explore = bandit_settings(rules.catalog.bandit, exploration=1.0, epsilon=0.05)
    dist = BanditPolicy(rules, explore, model).distribution(wlog.log)
    total = dist.total()
    assert np.allclose(total[total > 0], 1.0)
    assert dist.row.size > bandit.row.size


def test_bandit_arms_from_the_learner(
    wlog: WorldLog, rules: Rules, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = ScoringModel.load(model_dir, "model")
    greedy = bandit_settings(rules.catalog.bandit, exploration=0.0, epsilon=0.0)
    path = tmp_path / "arms.json"
    # the learner found gift_08 far better on the web than the model thinks
    path.write_text(json.dumps({"gift_08|web": "4.0,50.0,120"}))
    arms = read_arms(path)
    assert arms.arms["gift_08|web"].mean == 4.0
    before = BanditPolicy(rules, greedy, model).distribution(wlog.log)
    after = BanditPolicy(rules, greedy, model, arms).distribution(wlog.log)
    web = wlog.log.channel == "web"
    share = {
        name: float(np.sum(d.prob[(d.offer_id == "gift_08") & web[d.row]])) for name, d in (("b", before), ("a", after))
    }
    assert share["a"] > 3 * share["b"] > 0  # where its tier leads (tiers stay strict)
    path.write_text(json.dumps({"gift_08|web": "lots"}))
    with pytest.raises(OpeInputError, match=r"arm 'gift_08\|web' has 'lots'; expected \"mean,precision,n\""):
        read_arms(path)
    argv = ["--log", str(wlog.path), "--policy", "bandit", "--catalog", str(wlog.catalog), "--arms", str(path)]
    assert main(argv) == 2
    assert "--arms" in capsys.readouterr().err


def test_model_policy_on_the_command_line(
    wlog: WorldLog, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--log", str(wlog.path), "--policy", f"model:{model_dir}", "--catalog", str(wlog.catalog)]
    assert main([*argv, "--epsilon", "0.1", "--reward-model", str(model_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["policy"] == f"model:{model_dir}"
    assert report["reward_model"].startswith("model artifact ")
    assert report["diagnostics"]["used"] == len(wlog.log)
    assert {e["reward"] for e in report["estimates"]} == {"outcome", "value"}

    assert main(argv[:4]) == 2
    assert "--policy model:" in capsys.readouterr().err
    assert main([*argv[:4], "--catalog", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: No such file or directory" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(wlog.catalog.read_text().replace("tier in", "tierr in"))
    assert main([*argv[:4], "--catalog", str(bad)]) == 2
    assert f"error: {bad}:" in capsys.readouterr().err
    assert main([*argv[:2], "--policy", "model:/nonexistent", "--catalog", str(wlog.catalog)]) == 2
    assert "/nonexistent: missing model.txt" in capsys.readouterr().err


def test_placement_policy_follows_the_rules(wlog: WorldLog, rules: Rules, tmp_path: Path) -> None:
    path = tmp_path / "placement.csv"
    offers = wlog.world.offer_ids
    lines = ["placement,offer_id,probability"]
    lines += [f"home_banner,{o},{1 / len(offers)!r}" for o in offers]
    lines += [f",{o},{1 / len(offers)!r}" for o in offers]
    path.write_text("\n".join(lines) + "\n")
    dist = CsvPolicy(read_policy_csv(path), rules).distribution(wlog.log)
    uniform = UniformPolicy(rules).distribution(wlog.log)
    # an even placement distribution restricted to the candidates is uniform over them
    for got, want in zip(dist.as_dicts(), uniform.as_dicts(), strict=True):
        assert got == pytest.approx(want)
    report = evaluate(wlog.log, dist, None, rules=rules)
    assert report.diagnostics.outside_rules_mass == 0.0


def test_per_decision_mass_outside_the_rules_is_reported(
    wlog: WorldLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # every decision gets the web-only cart offer: not a candidate in the call centre
    path = tmp_path / "p.csv"
    path.write_text(
        "decision_id,offer_id,probability\n" + "".join(f"{d},cart_03,1\n" for d in wlog.log.decision_id.tolist())
    )
    argv = ["--log", str(wlog.path), "--policy", f"csv:{path}", "--catalog", str(wlog.catalog), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    warned = {w["code"] for w in report["warnings"]}
    assert {"outside_rules", "no_support"} <= warned
    call_centre = float(np.mean(wlog.log.channel == "call_centre"))
    assert report["diagnostics"]["unsupported_mass"] == pytest.approx(call_centre)
    assert report["diagnostics"]["outside_rules_mass"] >= call_centre


def test_cli_prints_the_table(wlog: WorldLog, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--log", str(wlog.path), "--policy", "uniform", "--catalog", str(wlog.catalog), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"policy uniform on {wlog.path}\nrows 3,000 (3,000 used); effective sample size ")
    for line in ("acceptance rate (outcome)", "value per decision (value)", "  logged policy", "  SNIPS", "  DR"):
        assert line in out
    assert "reward model: LightGBM, 2-fold cross-fitted on the log" in out
    assert main(["--log", str(wlog.path), "--policy", "greedy"]) == 2
    assert "--policy 'greedy': use csv:FILE, model:DIR" in capsys.readouterr().err
    assert main(["--log", "/nonexistent.csv", "--policy", "uniform"]) == 2
    assert "error: /nonexistent.csv: no such file" in capsys.readouterr().err


def test_the_nbo_command_runs_it(wlog: WorldLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through `nbo ope` as installed: server/cli.py hands the arguments to training.ope."""
    features = tmp_path / "customers.csv"
    wlog.world.write_features(features)
    argv = ["ope", "--log", str(wlog.path), "--policy", "uniform", "--catalog", str(wlog.catalog)]
    assert nbo_main([*argv, "--features", str(features)]) == 0
    with_features = capsys.readouterr().out
    assert nbo_main(argv) == 0
    # the features file orders the categorical levels; the rules and estimates do not change
    assert capsys.readouterr().out == with_features
    assert nbo_main([*argv, "--features", str(tmp_path / "none.csv")]) == 2
    assert "--features" in capsys.readouterr().err


# -- coverage on synthetic worlds --------------------------------------------------------------
def sharper_softmax(world: World, mask: np.ndarray, true_p: F64) -> F64:
    """The logging policy's softmax over prior x value, at half its temperature."""
    logits = world.prior_propensity * world.offer_value / (world.temperature / 2)
    weights = np.where(mask, np.exp(logits - logits.max()), 0.0)
    out: F64 = weights / weights.sum(axis=1, keepdims=True)
    return out


def greedy_on_the_truth(world: World, mask: np.ndarray, true_p: F64) -> F64:
    """Probability 1 on the eligible offer of highest true expected value (far from the logger)."""
    best = np.where(mask, true_p * world.offer_value, -1.0).argmax(axis=1)
    out: F64 = np.zeros(mask.shape)
    out[np.arange(mask.shape[0]), best] = 1.0
    return out


def as_csv(path: Path, log: LoggedData, world: World, pi: F64) -> Path:
    rows, cols = np.nonzero(pi)
    lines = [f"{log.decision_id[r]},{world.offer_ids[c]},{float(pi[r, c])!r}" for r, c in zip(rows, cols, strict=True)]
    path.write_text("decision_id,offer_id,probability\n" + "\n".join(lines) + "\n")
    return path


def test_the_true_value_lies_inside_the_dr_interval_in_at_least_90_percent_of_runs(tmp_path: Path) -> None:
    """Per run: a world, its log under the logging policy, a target policy known row by row, and
    its true value, the mean over rows of sum_a pi(a|x) oracle(x, a) (x value for value per
    decision). 20 worlds x 3 logs x 2 target policies; the DR interval must cover in >= 90%."""
    worlds, logs_per_world = 20, 3
    targets = {"softmax": sharper_softmax, "greedy": greedy_on_the_truth}
    inside: dict[str, int] = {}
    for w in range(worlds):
        world = World.create(n_customers=3000, n_offers=12, seed=200 + w)
        for s in range(logs_per_world):
            wl = make_world_log(tmp_path, world, log_seed=s, write=False)
            mask = world.eligible(wl.customer, wl.cols["channel"], wl.context())
            true_p = wl.true_p()
            reward_model = CrossFittedReward.fit(wl.log, seed=s)
            for target, make in targets.items():
                pi = make(world, mask, true_p)
                truth = {
                    "outcome": float((pi * true_p).sum(axis=1).mean()),
                    "value": float((pi * true_p * world.offer_value).sum(axis=1).mean()),
                }
                if w == s == 0:
                    # the policy goes in as the per-decision CSV a data scientist would write
                    table = read_policy_csv(as_csv(tmp_path / f"{target}.csv", wl.log, world, pi))
                    dist = CsvPolicy(table).distribution(wl.log)
                else:
                    rows, cols = np.nonzero(pi)
                    offers = np.asarray(world.offer_ids)[cols].tolist()
                    dist = PolicyDistribution.build(len(wl.log), (rows.tolist(), offers, pi[rows, cols].tolist()))
                report = evaluate(wl.log, dist, reward_model)
                for e in report.estimates:
                    for name in ("ips", "snips", "dr"):
                        key = f"{target}/{e.reward}/{name}"
                        inside[key] = inside.get(key, 0) + getattr(e, name).covers(truth[e.reward])
    runs = worlds * logs_per_world
    coverage = {key: hits / runs for key, hits in sorted(inside.items())}
    print(f"\ncoverage of the 95% intervals over {runs} seeded runs per target policy:")
    for key, c in coverage.items():
        print(f"  {key:<22} {c:.3f}")
    for target in targets:
        for reward in ("outcome", "value"):
            assert coverage[f"{target}/{reward}/dr"] >= 0.9, coverage
