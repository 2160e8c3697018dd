"""deploy/: the Grafana dashboard and Prometheus files are well formed (promtool is not available,
so their structure is checked here), and the PromQL tokenizer the export test relies on finds
exactly the metric names of an expression. Which names the server exports is checked against a
running `nbo serve` in tests/integration/test_metrics_endpoint.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from server.metrics import Metrics
from tests.deploy_files import (
    ALERTS,
    PROMETHEUS,
    family,
    grouping_labels,
    load_dashboard,
    load_yaml,
    metric_names,
    panels,
    queries,
    selector_labels,
)

DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
DS = "${DS_PROMETHEUS}"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("histogram_quantile(0.99, sum by (le) (rate(nbo_decision_seconds_bucket[$__rate_interval])))",
         {"nbo_decision_seconds_bucket"}),
        ('sum(rate(a_total{reason="x and y", op=~"b|c"}[5m])) / on (job) group_left (campaign) b_info > 0',
         {"a_total", "b_info"}),
        ("c unless d offset 5m and bool e or 1e-9 * f", {"c", "d", "e", "f"}),
        ("time() - nbo_end_timestamp_seconds", {"nbo_end_timestamp_seconds"}),
        ("sum without (instance) (rate(x_total[1h:5m]))", {"x_total"}),
        ("max by (job, instance) (g) > 300", {"g"}),
        ("{__name__=\"h\"}", set()),
    ],
)  # fmt: skip
def test_the_tokenizer_finds_the_metric_names_and_nothing_else(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_labels_in_matchers_and_grouping_are_found() -> None:
    expr = 'sum by (campaign, outcome) (rate(o_total{outcome="accepted", campaign!=""}[5m])) / on (campaign) a'
    assert selector_labels(expr) == {"o_total": {"outcome", "campaign"}}
    assert grouping_labels(expr) == {"campaign", "outcome"}
    assert [family(n) for n in ("a_total", "b_bucket", "c_sum", "d_count", "e_created", "f")] == list("abcdef")


def test_every_query_is_balanced_and_names_a_metric() -> None:
    found = queries()
    assert len(found) >= 30
    for query in found:
        text = query.expr
        for open_, close in ("()", "[]", "{}"):
            assert text.count(open_) == text.count(close), query
        assert metric_names(text), query
        assert all(n.startswith(("nbo_", "grpc_server_")) for n in metric_names(text)), query


def test_the_dashboard_imports_anywhere() -> None:
    dash = load_dashboard()
    assert dash["schemaVersion"] >= 36
    assert dash["uid"] and dash["title"]
    (ds,) = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert (ds["name"], ds["query"]) == ("DS_PROMETHEUS", "prometheus")
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    shown = panels(dash)
    for panel in shown:
        assert panel["datasource"] == {"type": "prometheus", "uid": DS}, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DS and target["expr"] and target["refId"]
    titles = {p["title"] for p in shown}
    needed = {
        "Decision throughput",
        "Decision latency (server side)",
        "gRPC status codes",
        "No-offer reasons",
        "Degraded decisions",
        "Acceptance by campaign (1 h)",
        "Budget burn against pace",
        "Live catalog and models",
        "Catalog, model and bandit versions",
        "Learner lag",
        "Log records",
    }
    assert needed <= titles, needed - titles
    latency = next(p for p in shown if p["title"] == "Decision latency (server side)")
    assert [t["legendFormat"] for t in latency["targets"]][:3] == ["p50", "p95", "p99"]


def _rule_problems(rule: dict[str, Any]) -> list[str]:
    problems = []
    if set(rule) - {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}:
        problems.append(f"unknown keys {set(rule)}")
    if not re.fullmatch(r"Nbo[A-Z][A-Za-z]+", rule.get("alert", "")):
        problems.append("alert name")
    if not isinstance(rule.get("expr"), str) or not rule["expr"].strip():
        problems.append("expr")
    if not DURATION.match(str(rule.get("for", ""))):
        problems.append(f"for: {rule.get('for')!r}")
    if rule.get("labels", {}).get("severity") not in ("warning", "critical"):
        problems.append("severity")
    notes = rule.get("annotations", {})
    if not notes.get("summary") or not notes.get("description"):
        problems.append("summary/description")
    for text in notes.values():
        if text.count("{{") != text.count("}}"):
            problems.append(f"template braces in {text!r}")
    return problems


def test_the_alert_rules_are_well_formed() -> None:
    rules = load_yaml(ALERTS)
    assert set(rules) == {"groups"}
    names = []
    for group in rules["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"]
        for rule in group["rules"]:
            assert not _rule_problems(rule), (rule.get("alert"), _rule_problems(rule))
            names.append(rule["alert"])
    assert len(names) == len(set(names))
    wanted = ("Degraded", "LogRecordsDropped", "LearnerLagging", "BudgetRunsOutEarly", "WorkerRestarted")
    assert all(any(w in n for n in names) for w in wanted), names


def test_the_prometheus_config_scrapes_one_target_per_server_and_loads_the_rules() -> None:
    config = load_yaml(PROMETHEUS)
    assert DURATION.match(config["global"]["scrape_interval"])
    for path in config["rule_files"]:
        assert (PROMETHEUS.parent / path).resolve() == Path(ALERTS).resolve()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "nbo" in jobs
    for job in jobs.values():
        for static in job["static_configs"]:
            assert static["targets"] and all(re.fullmatch(r"[\w.-]+:\d+", t) for t in static["targets"])


def test_info_gauges_show_only_what_is_live_now() -> None:
    metrics = Metrics()
    sample = metrics.registry.get_sample_value
    metrics.show_versions("1-aaa", [("m1", "champion")], 3)
    metrics.show_versions("2-bbb", [("m1", "champion"), ("m2", "challenger")], 4)
    assert sample("nbo_catalog_info", {"version": "2-bbb"}) == 1
    assert sample("nbo_catalog_info", {"version": "1-aaa"}) is None
    assert sample("nbo_model_info", {"version": "m2", "role": "challenger"}) == 1
    assert sample("nbo_bandit_version") == 4
    metrics.show_versions("2-bbb", [("m2", "champion")], 4)  # the challenger promoted
    models = [s.labels for f in metrics.registry.collect() if f.name == "nbo_model_info" for s in f.samples]
    assert models == [{"version": "m2", "role": "champion"}]


def test_campaign_counters_bind_each_child_once() -> None:
    metrics = Metrics()
    for campaign in ("promo", "promo", "base"):
        metrics.award(campaign, "web")
    metrics.campaign_outcome("promo", "accepted")
    sample = metrics.registry.get_sample_value
    assert sample("nbo_campaign_awards_total", {"campaign": "promo", "channel": "web"}) == 2
    assert sample("nbo_campaign_awards_total", {"campaign": "base", "channel": "web"}) == 1
    assert sample("nbo_campaign_outcomes_total", {"campaign": "promo", "outcome": "accepted"}) == 1
    assert len(metrics._awards) == 2
    # known label values exist at 0 before the first event, so rates and alerts have a value
    assert sample("nbo_redis_errors_total", {"op": "reserve"}) == 0
