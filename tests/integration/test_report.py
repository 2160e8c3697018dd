"""`nbo report` over logs written through the real record encoders into a real Redis, with a
published catalog and budget counters: exact counts, rates, costs and lift, and the files
(HTML self-contained with its plots, CSV that parses back, JSON) and errors of the command."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from server.cli.main import main
from server.pipeline.context import STAGE_STATUS, Stage
from server.reporting import Report, build_report
from server.reporting.model import BurnRow, KpiRow
from server.state.conversions import ConversionRecord
from server.state.keys import Keys
from server.state.records import Candidates, DecisionRecord, OutcomeRecord
from tests.integration.harness import load_customers, publish_text
from tests.unit.catalog_fixtures import BASE

KEYS = Keys()
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
NOW = T0 + 10_000.0  # 10:46:40, 0.449 of the day
DAY = 86_400.0
HELD = STAGE_STATUS[Stage.HELD_OUT]
NAN = float("nan")
BUDGET = "total_awards: 100, daily_awards: 10, pacing: {over: day, slack: 0.05}"
# life: a 50% holdout, offers cost 2; adhoc: paced daily award budget; o_adhoc costs 1 (BASE)
CATALOG = (
    BASE.replace("  - id: life\n", "  - id: life\n    holdout: 0.5\n")
    .replace("    target: [vip]\n", "    target: [vip]\n    budget: {" + BUDGET + "}\n")
    .replace("    value: 10\n", "    value: 10\n    cost: 2\n")
)  # fmt: skip


def _decision(
    decision_id: str,
    ts: float,
    customer: str,
    candidates: Sequence[tuple[str, str, str]],
    chosen: Sequence[str],
    version: str,
    **extra: object,
) -> DecisionRecord:
    n = len(candidates)
    fields: dict[str, object] = {
        "decision_id": decision_id,
        "ts": ts,
        "customer_id": customer,
        "channel": "web",
        "placement": "",
        "context": {},
        "events": [],
        "request_id": "",
        "schema_version": 1,
        "features": [1.0, 2.0],
        "candidates": Candidates(
            [c[0] for c in candidates], [c[1] for c in candidates], [0.1] * n, [5.0] * n, [5.0] * n, [1.0] * n,
            [c[2] for c in candidates],
        ),
        "chosen": list(chosen),
        "no_offer_reason": "" if chosen else "control_group",
        "model_version": "m1",
        "catalog_version": version,
        "bandit_version": "b1",
        "degraded": False,
        "control_group": False,
        "would_offer": [],
    }  # fmt: skip
    fields.update(extra)
    return DecisionRecord(**fields)  # type: ignore[arg-type]


def _outcome(decision_id: str, offer: str, what: str, value: float, ts: float) -> OutcomeRecord:
    return OutcomeRecord(f"{decision_id}:{offer}:{what}", decision_id, "", offer, what, value, ts, "web", 0.1, NAN)


def _conversion(customer: str, ts: float, kind: str = "purchase", value: float = 20.0) -> ConversionRecord:
    return ConversionRecord(f"cv-{customer}-{kind}-{ts}", customer, kind, value, ts, ts, "import")


@dataclass(frozen=True)
class Logged:
    version: str


@pytest.fixture
def logged(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Logged:
    """40 treated customers t*, 30 held out of `life` h*, 30 in the universal control group u*,
    a degraded, an undelivered, a pre-period and a converted `adhoc` decision, a repeated entry."""
    load_customers(redis_url, {"vip": {"tier": "A"}}, tmp_path)
    version = publish_text(redis_url, CATALOG)
    life = [("o_life", "life", "chosen")]
    records = [_decision(f"t{i}", T0 + 60 * i, f"t{i}", life, ["o_life"], version) for i in range(40)]
    records += [
        _decision(f"h{i}", T0 + 3000 + 60 * i, f"h{i}", [("o_life", "life", HELD)], [], version) for i in range(30)
    ]
    records += [
        _decision(f"u{i}", T0 + 6000 + 60 * i, f"u{i}", life, [], version, control_group=True, would_offer=["o_life"])
        for i in range(30)
    ]
    adhoc = [("o_adhoc", "adhoc", "chosen")]
    records += [
        _decision("dg", T0 + 9000, "g1", [], [], version, degraded=True, no_offer_reason="degraded", model_version=""),
        _decision("ud", T0 + 9100, "t1", adhoc, ["o_adhoc"], version, undelivered=True),
        _decision("x1", T0 + 9200, "t3", adhoc, ["o_adhoc"], version, model_version="m<2>&"),
        _decision("old", T0 - DAY, "t2", life, ["o_life"], version),
    ]
    outcomes = [_outcome(f"t{i}", "o_life", "presented", 0.0, T0 + 60 * i + 10) for i in range(20)]
    outcomes += [_outcome(f"t{i}", "o_life", "accepted", 10.0, T0 + 60 * i + 30) for i in range(10)]
    outcomes.append(_outcome("x1", "o_adhoc", "converted", 100.0, T0 + 9300))
    conversions = [_conversion(f"t{i}", T0 + 60 * i + 3600) for i in range(12)]
    conversions += [_conversion(f"h{i}", T0 + 3000 + 60 * i + 3600) for i in range(5)]
    conversions += [_conversion(f"u{i}", T0 + 6000 + 60 * i + 3600) for i in range(6)]
    conversions += [
        _conversion("t20", T0 + 1200 + 60, kind="signup"),  # another kind
        _conversion("t30", T0 + 1800 + 8 * DAY),  # after the 7-day window
        _conversion("stranger", T0 + 100),  # no decision in the period
    ]
    for stream, items in (
        (KEYS.decision_stream, records),
        (KEYS.outcome_stream, outcomes),
        (KEYS.conversion_stream, conversions),
    ):
        for item in items:
            redis_client.xadd(stream, item.to_fields())
    redis_client.xadd(KEYS.decision_stream, records[0].to_fields())  # the log writer's retry
    redis_client.hset(KEYS.budget_total("adhoc"), "c:adhoc:n", 2)
    redis_client.hset(KEYS.budget_day("adhoc", "2027-01-15"), "c:adhoc:n", 2)
    return Logged(version)


def _build(client: redis.Redis, **kwargs: object) -> Report:
    return build_report(client, KEYS, T0, T0 + DAY, 7 * DAY, now=NOW, **kwargs)  # type: ignore[arg-type]


def _kpi(report: Report, dimension: str, key: str) -> KpiRow:
    return next(r for r in report.kpis if (r.dimension, r.key) == (dimension, key))


def test_report_counts_costs_and_coverage(logged: Logged, redis_client: redis.Redis) -> None:
    report = _build(redis_client, kinds=["purchase"])
    assert _kpi(report, "campaign", "life") == KpiRow(
        dimension="campaign", key="life", decisions=70, control_group=30, degraded=0, undelivered=0, awards=40,
        undelivered_awards=0, presented=20, accepted=10, declined=0, converted=0, acceptance_rate=0.25,
        conversion_rate=0.0, revenue=100.0, cost=80.0, roi=0.25,
    )  # fmt: skip
    adhoc = _kpi(report, "campaign", "adhoc")
    assert (adhoc.decisions, adhoc.undelivered, adhoc.awards, adhoc.undelivered_awards) == (1, 1, 1, 1)
    assert (adhoc.accepted, adhoc.converted, adhoc.revenue, adhoc.cost, adhoc.roi) == (1, 1, 100.0, 2.0, 49.0)
    web = _kpi(report, "channel", "web")
    assert (web.decisions, web.control_group, web.degraded, web.undelivered) == (71, 30, 1, 1)
    assert _kpi(report, "model_version", "m<2>&").decisions == 1
    assert [(r.reason, r.decisions) for r in report.no_offer_reasons] == [("control_group", 60), ("degraded", 1)]
    c = report.coverage
    assert (c.decisions_read, c.decisions_in_period, c.outcomes_read, c.duplicates, c.unreadable) == (
        104,
        103,
        31,
        1,
        0,
    )
    assert (c.conversions_read, c.conversions_counted) == (26, 23)
    assert (c.first_decision, c.last_decision, c.log_first) == (
        "2027-01-15T08:00:00+00:00", "2027-01-15T10:33:20+00:00", "2027-01-14T08:00:00+00:00",
    )  # fmt: skip
    assert (report.since, report.until, report.timeline_bucket) == (
        "2027-01-15T08:00:00+00:00", "2027-01-16T08:00:00+00:00", "hour",
    )  # fmt: skip
    assert [(p.start[11:16], p.campaign, p.awards, p.accepted) for p in report.timeline] == [
        ("08:00", "life", 40, 10), ("10:00", "adhoc", 1, 1),
    ]  # fmt: skip
    # adhoc: 2 of 10 today, pacing allows floor(10 x 0.449 + max(5% x 10, 1)) = 5 by 10:46
    assert report.budgets == (
        BurnRow("campaign", "adhoc", "awards today", 2, 10, 5, "day +5%"),
        BurnRow("campaign", "adhoc", "awards total", 2, 100, None, "day +5%"),
    )
    assert report.notes == ()


def test_lift_of_the_programme_and_of_the_campaign_holdout(logged: Logged, redis_client: redis.Redis) -> None:
    programme, life = _build(redis_client, kinds=["purchase"]).lift
    assert (programme.name, programme.enough_data) == ("programme", True)
    assert (programme.treatment.customers, programme.treatment.converted, programme.treatment.revenue) == (
        70,
        17,
        340.0,
    )
    assert (programme.control.customers, programme.control.converted, programme.control.revenue) == (30, 6, 120.0)
    assert programme.rate_difference is not None and programme.relative_lift is not None
    assert programme.rate_difference.value == pytest.approx(17 / 70 - 6 / 30, abs=1e-15)
    assert programme.rate_difference.low < programme.rate_difference.value < programme.rate_difference.high
    assert programme.relative_lift.value == pytest.approx((17 / 70) / (6 / 30) - 1, abs=1e-12)
    assert programme.revenue_difference is not None
    assert programme.revenue_difference.value == pytest.approx(340 / 70 - 4.0, abs=1e-12)
    assert programme.open_windows == 100  # every window is 7 days long, and the report is 3 hours in
    assert (life.scope, life.name, life.treatment.customers, life.treatment.converted) == ("campaign", "life", 40, 12)
    assert (life.control.customers, life.control.converted, life.enough_data) == (30, 5, True)
    assert life.rate_difference is not None
    assert life.rate_difference.value == pytest.approx(12 / 40 - 5 / 30, abs=1e-15)
    every_kind = _build(redis_client).lift[0]
    assert every_kind.treatment.converted == 18  # t20's signup counts too
    strict = _build(redis_client, kinds=["purchase"], thresholds=None).lift
    assert strict[0] == programme


READ_AS = "not an ISO 8601 time (2026-11-30, 2026-11-30T12:00:00+01:00) or a duration back from now (7d): "


def _nbo(*argv: str) -> int:
    return main(["report", *argv])


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def test_html_report_is_one_file_with_its_plots(logged: Logged, redis_url: str, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    period = ["--since", _iso(T0), "--until", _iso(T0 + DAY)]
    assert _nbo("--redis-url", redis_url, *period, "--format", "html", "--out", str(out), "--kind", "purchase") == 0
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("<img ") == 4  # lift, timeline, budgets, reasons
    assert len(re.findall(r'src="data:image/png;base64,', text)) == 4
    assert 'src="http' not in text and 'href="http' not in text and "<script" not in text and "<link" not in text
    assert "m&lt;2&gt;&amp;" in text and "m<2>&" not in text
    assert "intent to treat (ITT)" in text and "7d attribution window" in text
    assert "+4.29 pts" in text  # 17/70 - 6/30


def test_csv_directory_parses_back(logged: Logged, redis_url: str, tmp_path: Path) -> None:
    out = tmp_path / "csv"
    period = ["--since", _iso(T0), "--until", _iso(T0 + DAY)]
    assert _nbo("--redis-url", redis_url, *period, "--format", "csv", "--out", str(out), "--kind", "purchase") == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "budgets.csv", "kpis.csv", "lift.csv", "no_offer_reasons.csv", "summary.csv", "timeline.csv",
    ]  # fmt: skip
    with (out / "kpis.csv").open() as fh:
        kpis = {(r["dimension"], r["key"]): r for r in csv.DictReader(fh)}
    life = kpis[("campaign", "life")]
    assert (life["decisions"], life["awards"], float(life["acceptance_rate"]), float(life["roi"])) == (
        "70",
        "40",
        0.25,
        0.25,
    )
    assert kpis[("campaign", "adhoc")]["acceptance_rate"] == "1.0"
    with (out / "lift.csv").open() as fh:
        lift = list(csv.DictReader(fh))
    assert [(r["name"], r["treatment_customers"], r["control_converted"]) for r in lift] == [
        ("programme", "70", "6"), ("life", "40", "5"),
    ]  # fmt: skip
    assert math.isclose(float(lift[0]["rate_difference_value"]), 17 / 70 - 6 / 30, abs_tol=1e-12)
    with (out / "summary.csv").open() as fh:
        summary = {r["name"]: r["value"] for r in csv.DictReader(fh)}
    assert (summary["kinds"], summary["coverage_decisions_in_period"]) == ("purchase", "103")


def test_json_and_table(
    logged: Logged, redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps table cells to the terminal's width
    period = ["--since", _iso(T0), "--until", _iso(T0 + DAY), "--kind", "purchase"]
    assert _nbo("--redis-url", redis_url, *period, "--format", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert [(x["name"], x["treatment"]["converted"], x["control"]["converted"]) for x in data["lift"]] == [
        ("programme", 17, 6), ("life", 12, 5),
    ]  # fmt: skip
    assert data["coverage"]["conversions_counted"] == 23
    assert _nbo("--redis-url", redis_url, *period, "--min-customers", "31") == 0
    out = capsys.readouterr().out
    assert "KPIs per campaign" in out and "Lift, customer level, intent to treat" in out
    assert "not enough data: control: 30 customers (< 31)" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "yesterday"], "error: --since: " + READ_AS + "'yesterday'"),
        (["--until", "2027-13-01"], "error: --until: " + READ_AS + "'2027-13-01'"),
        (["--window", "week"], "error: --window: not a duration like 7d, 12h, 30m, 2w or 90s: 'week'"),
        (
            ["--since", "2027-01-02", "--until", "2027-01-01"],
            "error: --since (2027-01-02T00:00:00+00:00) must be before --until (2027-01-01T00:00:00+00:00)",
        ),
        (["--format", "html"], "error: --format html needs --out (a file)"),
        (["--min-customers", "1"], "error: the minimum number of customers per group must be at least 2, not 1"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_clearly(
    redis_url: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _nbo("--redis-url", redis_url, *argv) == 2
    assert capsys.readouterr().err.strip() == message


def test_report_without_a_catalog_or_log(redis_client: redis.Redis) -> None:
    report = _build(redis_client)
    assert (report.kpis, report.budgets, report.coverage.decisions_read) == ((), (), 0)
    assert report.notes == (
        "no catalog: costs, ROI and budgets are not shown (no catalog published: run `nbo catalog load FILE`)",
    )
    assert report.lift[0].note == "not enough data: treatment: 0 customers (< 30); control: 0 customers (< 30)"
