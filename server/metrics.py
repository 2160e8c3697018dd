"""Every Prometheus metric of the server, in one place, on a registry the caller passes in.

`nbo serve` runs several processes (workers, and the learner with --learner). With a metrics
port the supervisor gives them one fresh PROMETHEUS_MULTIPROC_DIR before they start, so every
value below lives in a per-process memory-mapped file, and the supervisor serves the combined
numbers on the ONE scrape target (`MetricsEndpoint`): counters and histograms are summed over
the processes, dead ones included (a count never goes down when a worker is replaced); each
gauge says how it combines (`multiprocess_mode`, "live*": only processes still running).
Without that variable (tests, one in-process Worker) the values live in the registry as usual.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# decisions take well under 10 ms; the buckets resolve the sub-millisecond range
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
CANDIDATE_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
# info gauges: 1 for the version a process serves now, 0 once it moved on. A process cannot drop a
# label set from its file in multiprocess mode, so the endpoint leaves the zeros out instead
INFO_METRICS = frozenset({"nbo_catalog_info", "nbo_model_info"})
# the `op` of nbo_redis_errors: the hot path's Redis steps (see docs/operations.md)
REDIS_OPS = ("read", "reserve", "commit", "release", "circuit_open", "claim", "outcome", "conversion", "rate_limit")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._calls(self.registry)
        self._refusals(self.registry)
        self._log(self.registry)
        self._live(self.registry)
        self._campaigns(self.registry)
        self._zeros()
        self._shown: dict[str, set[tuple[str, ...]]] = {}
        self._awards: dict[tuple[str, str], Counter] = {}
        self._campaign_outcomes: dict[tuple[str, str], Counter] = {}

    def _zeros(self) -> None:
        """Series of known label values exist from the start, at 0, so a rate() or an alert over
        them has a value before the first event (and a dashboard shows 0, not "no data")."""
        for op in REDIS_OPS:
            self.redis_errors.labels(op)
        for method in ("Decide", "ReportOutcome", "RecordConversion"):
            self.shed.labels(method)
            self.rate_limited.labels(method)
        for step in ("reserve", "commit"):
            self.award_refusals.labels(step)
        for result in ("recorded", "duplicate", "conflict", "invalid"):
            self.conversions.labels(result)
        for result in ("ok", "failed"):
            self.catalog_reloads.labels(result)
            self.model_loads.labels(result)
        for result in ("learned", "duplicate", "skipped"):
            self.bandit_updates.labels(result)

    def _calls(self, r: CollectorRegistry) -> None:
        self.decisions = Counter(
            "nbo_decisions", "Decisions made, by channel and no-offer reason", ["channel", "reason"], registry=r
        )
        self.decision_latency = Histogram(
            "nbo_decision_seconds", "Time to decide, server side", ["channel"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.candidates = Histogram(
            "nbo_candidates", "Offers scored per decision", buckets=CANDIDATE_BUCKETS, registry=r
        )
        self.http_requests = Counter(
            "nbo_http_requests",
            "Requests to the HTTP/JSON front, by path (/v1/decide, /v1/outcomes or other) and HTTP status",
            ["path", "status"],
            registry=r,
        )
        # the names and labels of the usual gRPC server metrics (go-grpc-prometheus, py-grpc-prometheus)
        rpc = ["grpc_type", "grpc_service", "grpc_method"]
        self.grpc_started = Counter("grpc_server_started", "RPCs started on the server", rpc, registry=r)
        self.grpc_handled = Counter(
            "grpc_server_handled", "RPCs completed on the server, by status code", [*rpc, "grpc_code"], registry=r
        )
        self.grpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the handler's start to its answer, by method",
            rpc,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.outcomes = Counter("nbo_outcomes", "Outcomes reported", ["outcome", "result"], registry=r)
        self.undelivered = Counter(
            "nbo_undelivered_decisions",
            "Decisions whose caller was gone (deadline passed, call cancelled) when the answer was ready",
            registry=r,
        )
        self.bandit_updates = Counter(
            "nbo_bandit_updates",
            "Outcomes the learner read: learned, duplicate (already learned) or skipped (no reward)",
            ["result"],
            registry=r,
        )
        self.conversions = Counter(
            "nbo_conversions",
            "Conversions reported (RecordConversion), by result: recorded, duplicate, conflict or invalid",
            ["result"],
            registry=r,
        )
        self.redis_errors = Counter("nbo_redis_errors", "Redis failures on the hot path", ["op"], registry=r)

    def _refusals(self, r: CollectorRegistry) -> None:
        self.invalid_requests = Counter(
            "nbo_invalid_requests",
            "Calls refused for what they asked (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS), by the field at fault",
            ["field"],
            registry=r,
        )
        self.shed = Counter(
            "nbo_shed_requests",
            "Calls answered RESOURCE_EXHAUSTED at once because the worker already ran max_concurrent_rpcs calls",
            ["method"],
            registry=r,
        )
        self.auth_refusals = Counter(
            "nbo_auth_refusals",
            "Calls refused before any work for who made them: UNAUTHENTICATED (no or an unknown token) or "
            "PERMISSION_DENIED (the client lacks the method's role), by method and code",
            ["method", "code"],
            registry=r,
        )
        self.rate_limited = Counter(
            "nbo_rate_limited",
            "Calls answered RESOURCE_EXHAUSTED because the client's token bucket (rate_limit_per_second) was empty",
            ["method"],
            registry=r,
        )
        self.award_refusals = Counter(
            "nbo_award_refusals",
            "Ranked offers refused at award time: by a budget, capacity or pacing limit (reserve) or by a "
            "per-customer cap a concurrent decision used first (commit; its reservation is released)",
            ["step"],
            registry=r,
        )

    def _log(self, r: CollectorRegistry) -> None:
        self.log_written = Counter("nbo_log_records_written", "Decision/outcome log records written", registry=r)
        self.log_trimmed = Counter(
            "nbo_log_records_trimmed", "Log entries trimmed (only those every consumer group acknowledged)", registry=r
        )
        self.log_dropped = Counter(
            "nbo_log_records_dropped",
            "Log records lost: the memory queue was full with no spill directory, or shutdown came first",
            registry=r,
        )
        self.log_spilled = Counter(
            "nbo_log_records_spilled", "Log records moved to the local spill file while Redis was away", registry=r
        )
        self.log_replayed = Counter(
            "nbo_log_records_replayed", "Spilled log records written to Redis once it was back", registry=r
        )

    def _live(self, r: CollectorRegistry) -> None:
        self.redis_circuit_open = Gauge(
            "nbo_redis_circuit_open",
            "Workers whose circuit breaker treats Redis as down now (their decisions degrade at once)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.catalog_reloads = Counter("nbo_catalog_reloads", "Catalog reload attempts", ["result"], registry=r)
        self.model_loads = Counter("nbo_model_loads", "Model load attempts", ["result"], registry=r)
        # max, not min: processes that never set it (the learner) hold 0; a worker left on an
        # older catalog shows as a second version of nbo_catalog_info
        self.catalog_version = Gauge(
            "nbo_catalog_version",
            "Sequence number of the live catalog (the newest any worker serves)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.catalog_info = Gauge(
            "nbo_catalog_info",
            "1 for each catalog version a worker serves now",
            ["version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_info = Gauge(
            "nbo_model_info",
            "1 for each model version a worker decides with now, by role: champion, or challenger while a split is on",
            ["version", "role"],
            registry=r,
            multiprocess_mode="livemax",
        )
        # a number, not an info label: the learner publishes a new arms version every batch
        self.bandit_version = Gauge(
            "nbo_bandit_version",
            "Arms version the workers use (the newest any worker has; 0 = none published or the bandit is off)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.learner_lag = Gauge(
            "nbo_learner_lag_seconds",
            "Time between the newest outcome in the stream and the newest the learner applied; 0 when caught up",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.learner_pending = Gauge(
            "nbo_learner_pending_outcomes",
            "Outcome stream entries the learners' group has not acknowledged yet (read or not)",
            registry=r,
            multiprocess_mode="livemax",
        )

    def _campaigns(self, r: CollectorRegistry) -> None:
        # campaigns are tens, not thousands: one series per campaign (x channel or outcome) is cheap
        self.campaign_awards = Counter(
            "nbo_campaign_awards",
            "Offers awarded (fresh decisions only), by campaign and channel",
            ["campaign", "channel"],
            registry=r,
        )
        self.campaign_outcomes = Counter(
            "nbo_campaign_outcomes",
            "Outcomes recorded (first report of each event), by the offer's campaign in the live catalog and outcome",
            ["campaign", "outcome"],
            registry=r,
        )

    def award(self, campaign: str, channel: str) -> None:
        """One offer awarded; the child is bound once per (campaign, channel)."""
        child = self._awards.get((campaign, channel))
        if child is None:
            child = self._awards[(campaign, channel)] = self.campaign_awards.labels(campaign, channel)
        child.inc()

    def campaign_outcome(self, campaign: str, outcome: str) -> None:
        child = self._campaign_outcomes.get((campaign, outcome))
        if child is None:
            child = self._campaign_outcomes[(campaign, outcome)] = self.campaign_outcomes.labels(campaign, outcome)
        child.inc()

    def show_versions(self, catalog: str, models: Sequence[tuple[str, str]], bandit: int) -> None:
        """What this process serves now: the catalog version, (model version, role) pairs, the arms
        version. Label sets no longer served go away (in the combined endpoint too)."""
        self._show(self.catalog_info, {(catalog,)})
        self._show(self.model_info, set(models))
        self.bandit_version.set(bandit)

    def _show(self, gauge: Gauge, live: set[tuple[str, ...]]) -> None:
        shown = self._shown.setdefault(gauge._name, set())
        for labels in shown - live:
            # 0 first: in multiprocess mode `remove` only forgets the child here, its file keeps
            # the last value (and warns so); the supervisor's endpoint leaves the zeros out
            gauge.labels(*labels).set(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                gauge.remove(*labels)
        for labels in live:
            gauge.labels(*labels).set(1)
        self._shown[gauge._name] = live


# -- what only the supervisor knows, and the one scrape target -------------------------------------
def supervisor_families(alive: int, restarts: int) -> list[Metric]:
    workers = GaugeMetricFamily("nbo_workers_alive", "Worker processes of this server serving now", value=alive)
    replaced = CounterMetricFamily(
        "nbo_worker_restarts",
        "Workers (and the learner) the supervisor replaced since the server started",
        value=restarts,
    )
    return [workers, replaced]


@dataclass(frozen=True, slots=True)
class BudgetSample:
    """One limit of one campaign or offer budget, in awards or money (currency units)."""

    kind: str  # campaign | offer
    id: str
    campaign: str
    unit: str  # awards | spend
    period: str  # total | day
    used: float
    limit: float
    paced: float | None  # what pacing allows so far; None without pacing on this limit
    period_end: float | None  # unix time the period ends (the day, the campaign window); None: open


def budget_families(samples: Iterable[BudgetSample]) -> list[Metric]:
    labels = ["kind", "id", "campaign", "unit", "period"]
    used = GaugeMetricFamily("nbo_budget_used", "Budget used so far in its period", labels=labels)
    limit = GaugeMetricFamily("nbo_budget_limit", "Budget cap for its period", labels=labels)
    paced = GaugeMetricFamily("nbo_budget_paced", "What pacing allows to be used by now", labels=labels)
    end = GaugeMetricFamily(
        "nbo_budget_period_end_timestamp_seconds", "When the budget's period ends (unix time)", labels=labels
    )
    for s in samples:
        key = [s.kind, s.id, s.campaign, s.unit, s.period]
        used.add_metric(key, s.used)
        limit.add_metric(key, s.limit)
        if s.paced is not None:
            paced.add_metric(key, s.paced)
        if s.period_end is not None:
            end.add_metric(key, s.period_end)
    return [used, limit, paced, end]


class _FamiliesCollector(Collector):
    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families()


class _WorkerProcesses(Collector):
    """The workers' metrics from their files, summed; zero-valued info samples left out."""

    def __init__(self, path: str) -> None:
        self._inner = multiprocess.MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        for family in self._inner.collect():  # type: ignore[no-untyped-call]
            if family.name in INFO_METRICS:
                family.samples = [s for s in family.samples if s.value != 0]
            yield family


class MetricsEndpoint:
    """The one /metrics of `nbo serve`: every process's metrics from `path` plus `extra` families
    computed at scrape time (what only the supervisor knows; budgets read from Redis)."""

    def __init__(self, path: str, extra: Sequence[Callable[[], Iterable[Metric]]] = ()) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_WorkerProcesses(path))
        for families in extra:
            self.registry.register(_FamiliesCollector(families))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, port: int, host: str = "0.0.0.0") -> int:
        self._server, self._thread = start_http_server(port, host, registry=self.registry)
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
