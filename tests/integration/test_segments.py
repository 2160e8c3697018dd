"""`nbo segments suggest` on a real Redis: a seeded population with three planted groups (two
numeric features separate them, a categorical marks one), noise features and missing values;
the rules, their fidelity, the YAML block through the real `nbo catalog validate`, the log figures
from a real server's decisions, and the bad arguments."""

from __future__ import annotations

import asyncio
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import redis

from server.catalog.compiler import parse_catalog
from server.catalog.rule_base import Now
from server.catalog.rules import compile_rule
from server.cli.main import main
from server.features.schema import FeatureSchema
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.segments.load import load_customers
from server.segments.log_stats import SegmentLog
from server.segments.suggest import Options, suggest
from server.state.catalog_store import current_schema
from server.state.feature_store import FeatureStore, read_feature_file
from server.state.keys import Keys
from tests.integration.harness import Harness
from tests.redis_cluster import redis_args, redis_url_on_both, sync_redis

# every test here runs on a single Redis and on the 3-master cluster (SCAN must cover every master)
redis_url = redis_url_on_both

N = 600
KEYS = Keys()
NOW = Now(hour=0, weekday=0, month=1, day=1)
# the planted groups: (spend, visits) centres; group 3 alone is on the gold plan
CENTRES = ((10.0, 0.0), (90.0, 0.0), (50.0, 60.0))
EXPECTED_RULES = [
    'suggested_1: plan != "gold" and spend <= 50',
    'suggested_2: plan != "gold" and spend > 50',
    'suggested_3: plan == "gold"',
]

CATALOG_HEAD = """\
name: planted
consent: {web: consent_web}
campaigns:
  - id: winback
    type: ad_hoc
    channels: [web]
    target: [suggested_3]
offers:
  - id: o_winback
    campaign: winback
    title: Come back
    value: 50
    prior_propensity: 0.1
"""


def _planted(path: Path, seed: int = 3) -> np.ndarray:
    """Write the population's CSV; return each customer's planted group (0, 1, 2)."""
    rng = np.random.default_rng(seed)
    group = np.arange(N) % 3
    rng.shuffle(group)
    spend = np.array([CENTRES[g][0] for g in group]) + rng.normal(0, 4, N)
    visits = np.array([CENTRES[g][1] for g in group]) + rng.normal(0, 6, N)
    age = rng.uniform(18, 80, N).round()
    score = rng.normal(0, 1, N).round(3)
    plan = np.where(group == 2, "gold", rng.choice(["silver", "basic"], N))
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["customer_id", "spend", "visits", "age", "score", "plan", "consent_web"])
        for i in range(N):
            missing_age = i % 50 == 7  # CRM gaps: imputed with the median for clustering
            out.writerow(
                [
                    f"P{i:04d}",
                    round(spend[i], 2),
                    round(visits[i], 2),
                    "" if missing_age else age[i],
                    score[i],
                    plan[i],
                    1,
                ]
            )
    return group


@pytest.fixture
def planted(redis_url: str, tmp_path: Path) -> np.ndarray:
    path = tmp_path / "planted.csv"
    group = _planted(path)
    client = sync_redis(redis_url)
    table = read_feature_file(path, ["plan"])
    assert not table.errors
    FeatureStore(client, KEYS).load(table)
    client.close()
    return group


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["segments", "suggest", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _rule_lines(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if re.match(r"\s+suggested_\d+: ", line)]


def test_rules_recover_the_planted_groups(
    planted: np.ndarray, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, *redis_args(redis_url), "--k", "3", "--seed", "0")
    assert code == 0
    assert _rule_lines(out) == EXPECTED_RULES
    assert "fidelity: the rules put 100.0% of the customers in their own cluster" in out
    assert "missing numeric values were imputed with the feature's median for clustering: age (12 missing" in out
    assert "a customer falls in at most one suggested segment" in out
    assert "no log" in out  # no decision was ever logged
    # each rule selects one planted group, as the server evaluates it
    client = sync_redis(redis_url)
    loaded = load_customers(client, KEYS)
    client.close()
    rows = loaded.matrix.tolist()
    order = np.array([int(c[1:]) for c in loaded.ids])
    for line in EXPECTED_RULES:
        fn = compile_rule(line.split(": ", 1)[1], loaded.schema, ()).fn
        mask = np.array([fn(r, {}, NOW) for r in rows])
        groups = set(planted[order[mask]].tolist())
        assert len(groups) == 1
        assert mask.sum() == (planted == groups.pop()).sum()


def test_json_reports_fidelity_sizes_and_traits(
    planted: np.ndarray, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, *redis_args(redis_url), "--k", "3", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["accuracy"] == 1.0 and doc["customers"] == N and doc["overlapping"] == 0
    assert [s["size"] for s in doc["segments"]] == [200, 200, 200]
    assert all(s["precision"] == 1.0 and s["recall"] == 1.0 for s in doc["segments"])
    assert doc["segments"][2]["traits"][0]["feature"] in ("plan=gold", "visits")
    client = sync_redis(redis_url)
    ages = load_customers(client, KEYS).matrix[:, 2]
    client.close()
    assert doc["imputed"] == {"age": [12, float(np.median(ages[~np.isnan(ages)]))]}
    assert doc["segments"][0]["response_rate"] is None and doc["log"] is None


def test_gmm_finds_the_same_groups(planted: np.ndarray, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, *redis_args(redis_url), "--k", "3", "--method", "gmm")
    assert code == 0
    assert "fidelity: the rules put 100.0%" in out
    assert sorted(_rule_lines(out)) == sorted(EXPECTED_RULES)


def test_sample_is_seeded_and_bounded(planted: np.ndarray, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    client = sync_redis(redis_url)
    first = load_customers(client, KEYS, sample=150, seed=4)
    again = load_customers(client, KEYS, sample=150, seed=4)
    other = load_customers(client, KEYS, sample=150, seed=5)
    client.close()
    assert first.ids == again.ids and len(first.ids) == 150 and first.total == N
    assert first.ids != other.ids
    code, out, _ = _run(capsys, *redis_args(redis_url), "--k", "3", "--sample", "150", "--seed", "4", "--json")
    assert code == 0
    doc = json.loads(out)
    assert (doc["customers"], doc["total"]) == (150, N)


def test_block_validates_through_catalog_validate(
    planted: np.ndarray, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    block = tmp_path / "segments.yaml"
    code, _, _ = _run(capsys, *redis_args(redis_url), "--k", "3", "--out", str(block))
    assert code == 0
    text = block.read_text()
    assert text.startswith("# suggested by `nbo segments suggest --k 3 --method kmeans --depth 3 --seed 0`")
    assert 'rule: plan == "gold"' in text or "rule: 'plan == \"gold\"'" in text
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG_HEAD + text)
    assert main(["catalog", "validate", str(catalog), *redis_args(redis_url)]) == 0
    assert "valid (1 campaigns, 1 offers, 3 segments; feature schema v1)" in capsys.readouterr().out
    # the compiled catalog's segments are the printed rules
    client = sync_redis(redis_url)
    schema = current_schema(client, KEYS)
    client.close()
    assert isinstance(schema, FeatureSchema)
    compiled = parse_catalog(catalog.read_text(), schema)
    assert [f"{s.name}: {s.rule.source}" for s in compiled.segments] == EXPECTED_RULES


def test_merge_writes_a_valid_catalog(
    planted: np.ndarray, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(
        CATALOG_HEAD.replace("target: [suggested_3]", "target: [mine]") + "segments:\n  mine: {rule: 'age > 60'}\n"
    )
    merged = tmp_path / "merged.yaml"
    code, _, _ = _run(capsys, *redis_args(redis_url), "--k", "3", "--merge", str(base), "--out", str(merged))
    assert code == 0
    assert main(["catalog", "validate", str(merged), *redis_args(redis_url)]) == 0
    assert "1 offers, 4 segments" in capsys.readouterr().out
    # the same prefix again clashes with the segments now in the catalog
    code, _, err = _run(capsys, *redis_args(redis_url), "--k", "3", "--merge", str(merged), "--out", str(base))
    assert code == 1
    assert "already has segment(s) suggested_1, suggested_2, suggested_3: choose another --prefix" in err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--k", "1"], 2, "error: --k must be at least 2, got 1"),
        (["--k", "601"], 1, "error: --k 601 is more than the 600 customers loaded"),
        (["--depth", "0"], 2, "error: --depth must be at least 1, got 0"),
        (["--sample", "2"], 2, "error: --sample 2 is smaller than --k 6"),
        (["--prefix", "bad name "], 2, "error: --prefix 'bad name ' makes segment names that are not valid"),
        (["--merge", "x.yaml"], 2, "error: --merge needs --out"),
    ],
)
def test_bad_arguments(
    planted: np.ndarray,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    message: str,
) -> None:
    got, _, err = _run(capsys, *redis_args(redis_url), *args)
    assert got == code
    assert message in " ".join(err.split())


def test_no_customers(redis_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(capsys, *redis_args(redis_url))
    assert code == 1
    assert "error: no feature schema in Redis: load customers first" in err
    # a schema whose customers are all gone
    path = tmp_path / "one.csv"
    path.write_text("customer_id,spend\nP1,3\n")
    client = sync_redis(redis_url)
    FeatureStore(client, KEYS).load(read_feature_file(path, []))
    client.delete(KEYS.features("P1"))
    client.close()
    code, _, err = _run(capsys, *redis_args(redis_url))
    assert code == 1
    assert "error: no customers loaded: `nbo features load FILE` first" in err


async def test_log_figures_from_real_decisions(
    nbo: Harness, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    """Decisions and outcomes through a real server: each segment counts the decisions whose logged
    features satisfy its rule; a reported value counts, else the offer's catalog value."""
    vip = await nbo.decide("vip", pb.WEB)  # o_adhoc, accepted with a reported value of 120
    vip2 = await nbo.decide("vip2", pb.WEB)  # o_adhoc, declined
    regular = await nbo.decide("regular", pb.WEB)  # o_life, converted, no value: its catalog value 10
    ghost = await nbo.decide("ghost", pb.WEB)  # an unknown customer: no features, counts nowhere
    assert [r.offers[0].offer_id for r in (vip, vip2, regular)] == ["o_adhoc", "o_adhoc", "o_life"]
    assert not ghost.offers
    request = pb.ReportOutcomeRequest(decision_id=vip.decision_id, offer_id="o_adhoc", outcome=pb.ACCEPTED, value=120)
    assert (await nbo.stub.ReportOutcome(request, timeout=5)).recorded
    assert (await nbo.report(vip2.decision_id, "o_adhoc", pb.DECLINED)).recorded
    assert (await nbo.report(regular.decision_id, "o_life", pb.CONVERTED)).recorded
    for _ in range(300):
        if redis_client.xlen(KEYS.decision_stream) >= 4 and redis_client.xlen(KEYS.outcome_stream) >= 3:
            break
        await asyncio.sleep(0.01)
    found = suggest(redis_client, KEYS, Options(k=2, seed=0, min_awards=1))
    assert found.log is not None and found.log.decisions == 3
    store = FeatureStore(redis_client, KEYS)
    schema = store.current_schema()
    assert schema is not None
    expected = {s.name: SegmentLog() for s in found.segments}
    for cid, awarded, value in (("vip", 1, 120.0), ("vip2", 1, 0.0), ("regular", 1, 10.0)):
        features = store.get(cid)
        assert features is not None
        vector = [
            float("nan") if v is None else float(spec.level_index(v) if isinstance(v, str) else v)
            for spec, v in zip(schema.features, features.values(), strict=True)
        ]
        (name,) = [s.name for s in found.segments if compile_rule(s.rule or "false", schema, ()).fn(vector, {}, NOW)]
        log = expected[name]
        log.decisions += 1
        log.awards += awarded
        log.responses += value > 0
        log.value += value
    assert {s.name: s.log for s in found.segments} == expected
    # under the seed: vip2 and regular (tenure 12 and 5) in one segment, vip (40) in the other
    assert [s.rule for s in found.segments] == ["tenure_months <= 20", "tenure_months > 20"]
    assert expected["suggested_2"] == SegmentLog(decisions=1, awards=1, responses=1, value=120.0)
    code, out, _ = _run(capsys, *redis_args(redis_url), "--k", "2", "--min-awards", "1")
    assert code == 0 and "no log" not in out
    assert "log: 3 decisions (control group and degraded left out)" in out
    code, out, _ = _run(capsys, *redis_args(redis_url), "--k", "2")
    assert code == 0 and "not enough data" in out  # 3 awards, fewer than 30
