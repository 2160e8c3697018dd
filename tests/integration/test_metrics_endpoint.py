"""The one Prometheus endpoint of `nbo serve`: every process added up, and every metric the
deploy/ dashboard and alert rules query is one the server exports.

`nbo serve --workers 2 --learner --http-port 0 --metrics-port P` runs as a subprocess against the
test Redis; the tests call it over gRPC and HTTP, scrape http://127.0.0.1:P/metrics and parse it
with prometheus_client's parser. Worker i's own endpoint (P + 1 + i) shows which worker served.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from loadtest.faults.env import consecutive_free_ports
from server.config import Settings
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.gen.nbo.v1 import decisioning_pb2_grpc as pb_grpc
from server.metrics import MULTIPROC_ENV
from server.state.budget_counters import build_report
from server.state.catalog_store import live_catalog, publish
from server.state.embedded_redis import EmbeddedRedis
from server.state.keys import Keys
from server.supervisor import ServerGroup
from tests.deploy_files import family, grouping_labels, metric_names, queries, selector_labels
from tests.integration import test_budget_concurrency as budget_test
from tests.integration.harness import load_customers, terminate

NBO = [sys.executable, "-m", "server.cli"]
KEYS = Keys()
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
WORKER_LINE = re.compile(r"worker (\d+) \(pid (\d+)\) serving")
# the budget test's catalog, with pacing on both budgets, a daily cap and a campaign window
CATALOG = (
    budget_test.CATALOG.replace("name: budget-concurrency", "name: metrics-{name}")
    .replace(
        "    budget: {total_spend: 1000000, daily_awards: 1000000}",
        "    start: 2020-01-01\n    end: 2099-01-01\n"
        "    budget: {total_spend: 1000000, pacing: {over: window, slack: 0.05}}",
    )
    .replace(
        "    budget: {total_awards: 1000, per_customer: 1, total_spend: 100000}",
        "    budget: {total_awards: 1000, daily_awards: 50000, per_customer: 1, pacing: {over: day, slack: 0.5}}",
    )
)
Samples = dict[str, list[tuple[dict[str, str], float]]]


@dataclass(frozen=True)
class Served:
    proc: subprocess.Popen[str]
    target: str
    http: str
    metrics: str  # the one endpoint
    own: tuple[str, str]  # worker 0's and worker 1's own endpoints
    redis_url: str
    stderr: Path


@pytest.fixture(scope="module")
def served(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    url = redis_server.url
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()
    tmp = tmp_path_factory.mktemp("metrics_endpoint")
    rows = {f"m{i:03d}": {"tier": "ABC"[i % 3], "tenure_months": i % 60, "churn_risk": 0.5} for i in range(400)}
    load_customers(url, rows, tmp)
    catalog = tmp / "catalog.yaml"
    catalog.write_text(CATALOG.replace("{name}", "one"))
    port = consecutive_free_ports(3)
    env = {**os.environ, "REDIS_URL": url, "NBO_LOG_LEVEL": "INFO"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    args = ["serve", "--workers", "2", "--learner", "--port", "0", "--http-port", "0", "--catalog", str(catalog)]
    stderr_path = tmp / "serve.stderr"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [*NBO, *args, "--metrics-port", str(port)], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
        )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        target = re.search(r"serving on (\S+) with 2 worker", lines[0])
        http = re.search(r"HTTP/JSON on (\S+)", lines[1])
        metrics = re.fullmatch(r"Prometheus metrics on (http://127\.0\.0\.1:(\d+)/metrics)\n", lines[2])
        assert target and http and metrics, f"banner {lines!r}; stderr: {stderr_path.read_text()[-2000:]}"
        assert int(metrics.group(2)) == port
        own = (f"http://127.0.0.1:{port + 1}/metrics", f"http://127.0.0.1:{port + 2}/metrics")
        yield Served(proc, target.group(1), http.group(1), metrics.group(1), own, url, stderr_path)
    finally:
        terminate(proc)


def scrape(url: str) -> Samples:
    """{sample name: [(labels, value)]} of one endpoint, parsed by prometheus_client."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    samples: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for got, v in samples.get(name, []) if labels.items() <= got.items())


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0, shown: Callable[[], object] = str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {shown()}"
        time.sleep(0.2)


def decide(target: str, customer: str) -> pb.DecideResponse:
    """One Decide on a new connection: SO_REUSEPORT hands each connection to one worker."""
    with grpc.insecure_channel(target) as channel:
        response: pb.DecideResponse = pb_grpc.DecisioningStub(channel).Decide(
            pb.DecideRequest(customer_id=customer, channel=pb.WEB), timeout=10
        )
        return response


def worker_pids(served: Served) -> dict[int, int]:
    return {int(i): int(pid) for i, pid in WORKER_LINE.findall(served.stderr.read_text())}


@pytest.fixture(scope="module")
def ready(served: Served) -> Served:
    def live() -> bool:
        try:
            return bool(decide(served.target, "warmup").catalog_version) and len(worker_pids(served)) == 2
        except grpc.RpcError:
            return False

    wait_for("both workers serving with the catalog live", live, timeout=90)
    return served


def test_every_metric_the_dashboard_and_alerts_query_is_exported(ready: Served) -> None:
    served = ready
    # a decision, an outcome, a refused call and an HTTP request: every kind of series exists
    made = decide(served.target, "m001")
    assert [o.offer_id for o in made.offers] == ["o_budget"]
    with grpc.insecure_channel(served.target) as channel:
        stub = pb_grpc.DecisioningStub(channel)
        report = pb.ReportOutcomeRequest(decision_id=made.decision_id, offer_id="o_budget", outcome=pb.ACCEPTED)
        assert stub.ReportOutcome(report, timeout=10).recorded
        with pytest.raises(grpc.RpcError) as refused:
            stub.Decide(pb.DecideRequest(customer_id="", channel=pb.WEB), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(urllib.error.HTTPError) as not_found:
        urllib.request.urlopen(f"{served.http}/nowhere", timeout=5)
    assert not_found.value.code == 404
    # the learner (a third process) has read the outcome: its lag is known and back to 0
    wait_for(
        "the learner to catch up",
        lambda: (
            total(s := scrape(served.metrics), "nbo_bandit_updates_total") >= 1
            and total(s, "nbo_learner_pending_outcomes") == 0
            and "nbo_learner_lag_seconds" in s
        ),
    )
    samples = scrape(served.metrics)
    assert total(samples, "nbo_learner_lag_seconds") == 0

    missing, checked = [], set()
    for query in queries():
        for name in metric_names(query.expr):
            checked.add(name)
            if name not in samples:
                missing.append(f"{query.where}: {name} (family {family(name)})")
        for name, labels in selector_labels(query.expr).items():
            have = {k for got, _ in samples.get(name, []) for k in got}
            missing.extend(f"{query.where}: {name} has no label {label!r}" for label in labels - have)
        # every label grouped by is a label of some queried metric, or one Prometheus adds to a target
        have_any = {k for name in metric_names(query.expr) for got, _ in samples.get(name, []) for k in got}
        have_any |= TARGET_LABELS
        missing.extend(f"{query.where}: no metric has label {g!r}" for g in grouping_labels(query.expr) - have_any)
    assert not missing, "\n".join(missing)
    assert len(checked) >= 25, sorted(checked)
    # what the campaign panels read: the award and its acceptance, by campaign
    assert total(samples, "nbo_campaign_awards_total", campaign="promo", channel="web") == 1
    assert total(samples, "nbo_campaign_outcomes_total", campaign="promo", outcome="accepted") == 1
    assert total(samples, "nbo_http_requests_total", path="other", status="404") == 1
    assert total(samples, "nbo_invalid_requests_total", field="customer_id") == 1


def test_budget_gauges_agree_with_nbo_budgets(ready: Served) -> None:
    samples = scrape(ready.metrics)
    client = redis.Redis.from_url(ready.redis_url)
    try:
        catalog = live_catalog(client, KEYS)
        report = build_report(client, KEYS, catalog, time.time())
    finally:
        client.close()
    rows = {(r.kind, r.id): r for r in report.scopes}
    offer, promo = rows[("offer", "o_budget")], rows[("campaign", "promo")]
    used = {(lb["kind"], lb["id"], lb["unit"], lb["period"]): v for lb, v in samples["nbo_budget_used"]}
    limit = {(lb["kind"], lb["id"], lb["unit"], lb["period"]): v for lb, v in samples["nbo_budget_limit"]}
    paced = {(lb["kind"], lb["id"], lb["unit"], lb["period"]): v for lb, v in samples["nbo_budget_paced"]}
    assert used[("offer", "o_budget", "awards", "total")] == offer.used_total
    assert used[("offer", "o_budget", "awards", "day")] == offer.used_today
    assert used[("campaign", "promo", "spend", "total")] == pytest.approx((promo.spend_cents or 0) / 100)
    assert limit[("offer", "o_budget", "awards", "day")] == 50000
    assert limit[("campaign", "promo", "spend", "total")] == 1000000
    assert paced[("offer", "o_budget", "awards", "day")] == offer.paced_awards
    assert paced[("campaign", "promo", "spend", "total")] == pytest.approx((promo.paced_spend_cents or 0) / 100)
    ends = {(lb["id"], lb["period"]) for lb, _ in samples["nbo_budget_period_end_timestamp_seconds"]}
    assert ("o_budget", "day") in ends and ("promo", "total") in ends
    assert ("o_budget", "total") in ends  # the window of its campaign
    assert all(lb["campaign"] == "promo" for lb, _ in samples["nbo_budget_used"])


def test_decisions_across_two_workers_add_up_exactly(ready: Served) -> None:
    before_all = scrape(ready.metrics)
    before_own = [total(scrape(u), "nbo_decisions_total") for u in ready.own]
    offers: Counter[str] = Counter()
    made = 0
    for i in range(40):  # 40 connections: the chance that one worker gets them all is 2^-39
        for j in range(3):
            response = decide(ready.target, f"m{(i * 3 + j + 100):03d}")
            offers.update(o.offer_id for o in response.offers)
            made += 1
    after_all = scrape(ready.metrics)
    after_own = [total(scrape(u), "nbo_decisions_total") for u in ready.own]
    served_by = [a - b for a, b in zip(after_own, before_own, strict=True)]
    assert total(after_all, "nbo_decisions_total") - total(before_all, "nbo_decisions_total") == made == 120
    assert sum(served_by) == made and min(served_by) > 0, served_by
    count = "nbo_decision_seconds_count"
    assert total(after_all, count) - total(before_all, count) == made
    awarded = total(after_all, "nbo_campaign_awards_total", campaign="promo") - total(
        before_all, "nbo_campaign_awards_total", campaign="promo"
    )
    assert awarded == offers["o_budget"] > 0


def _info(samples: Samples, name: str) -> dict[tuple[str, ...], float]:
    return {tuple(sorted(lb.items())): v for lb, v in samples.get(name, [])}


def test_after_a_reload_only_the_new_catalog_version_is_shown(ready: Served) -> None:
    old = scrape(ready.metrics)
    (old_version,) = [lb["version"] for lb, _ in old["nbo_catalog_info"]]
    assert _info(old, "nbo_model_info") == {(("role", "champion"), ("version", "prior")): 1.0}
    client = redis.Redis.from_url(ready.redis_url)
    try:
        published = publish(client, KEYS, CATALOG.replace("{name}", "two"), source="test")
        seq = int(client.get(KEYS.catalog_current) or 0)
    finally:
        client.close()
    assert published.changed and published.version != old_version
    wait_for(
        "every worker to serve the new catalog",
        lambda: (
            _info(s := scrape(ready.metrics), "nbo_catalog_info") == {(("version", published.version),): 1.0}
            and total(s, "nbo_catalog_version") == seq
        ),
        shown=lambda: [scrape(ready.metrics).get(n) for n in ("nbo_catalog_info", "nbo_catalog_version")],
    )
    for own in ready.own:  # each worker's own endpoint shows only what it serves now too
        assert _info(scrape(own), "nbo_catalog_info") == {(("version", published.version),): 1.0}


def test_a_replaced_worker_keeps_its_counts_and_leaves_the_live_gauges(ready: Served) -> None:
    before = scrape(ready.metrics)
    restarts = total(before, "nbo_worker_restarts_total")
    decisions = total(before, "nbo_decisions_total")
    assert total(before, "nbo_workers_alive") == 2
    victim = worker_pids(ready)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(
        "the supervisor to replace worker 0",
        lambda: (
            worker_pids(ready)[0] != victim
            and total(s := scrape(ready.metrics), "nbo_workers_alive") == 2
            and total(s, "nbo_worker_restarts_total") == restarts + 1
        ),
        timeout=60,
    )
    after = scrape(ready.metrics)
    # the dead worker's decisions still count; its catalog info and breaker gauge are gone with it
    assert total(after, "nbo_decisions_total") == decisions
    (version,) = [lb["version"] for lb, _ in before["nbo_catalog_info"]]
    wait_for(
        "the new worker to show its versions",
        lambda: _info(scrape(ready.metrics), "nbo_catalog_info") == {(("version", version),): 1.0},
    )
    assert total(after, "nbo_redis_circuit_open") == 0


def test_a_stopped_group_takes_its_metrics_directory_and_variable_with_it(redis_url: str, tmp_path: Path) -> None:
    """A group started later in the same process (tests, `nbo simulate`) must not hand its workers
    the directory of one that stopped."""
    before = os.environ.get(MULTIPROC_ENV)
    settings = Settings(redis_url=redis_url, port=0, workers=1, metrics_port=0, model_cache_dir=tmp_path / "m")
    group = ServerGroup(settings, redis_url)
    group.start()
    try:
        group.wait_ready(timeout=60)
        directory = group.metrics_dir
        assert directory is not None and os.environ[MULTIPROC_ENV] == directory
        assert os.path.isdir(directory)
    finally:
        group.stop()
    assert not os.path.exists(directory)
    assert os.environ.get(MULTIPROC_ENV) == before
