"""Every Prometheus metric of the server, in one place, on a registry the caller passes in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# decisions take well under 10 ms; the buckets resolve the sub-millisecond range
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
CANDIDATE_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
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
        self.conversions = Counter(
            "nbo_conversions",
            "Conversions reported (RecordConversion), by result: recorded, duplicate, conflict or invalid",
            ["result"],
            registry=r,
        )
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
        self.undelivered = Counter(
            "nbo_undelivered_decisions",
            "Decisions whose caller was gone (deadline passed, call cancelled) when the answer was ready",
            registry=r,
        )
        self.award_refusals = Counter(
            "nbo_award_refusals",
            "Ranked offers refused at award time: by a budget, capacity or pacing limit (reserve) or by a "
            "per-customer cap a concurrent decision used first (commit; its reservation is released)",
            ["step"],
            registry=r,
        )
        self.bandit_updates = Counter(
            "nbo_bandit_updates",
            "Outcomes the learner read: learned, duplicate (already learned) or skipped (no reward)",
            ["result"],
            registry=r,
        )
        self.redis_errors = Counter("nbo_redis_errors", "Redis failures on the hot path", ["op"], registry=r)
        self.redis_circuit_open = Gauge(
            "nbo_redis_circuit_open",
            "1 while this worker's circuit breaker treats Redis as down (decisions degrade at once)",
            registry=r,
        )
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
        self.catalog_reloads = Counter("nbo_catalog_reloads", "Catalog reload attempts", ["result"], registry=r)
        self.model_loads = Counter("nbo_model_loads", "Model load attempts", ["result"], registry=r)
        self.workers_alive = Gauge(
            "nbo_workers_alive", "Worker processes of this server alive now, as the supervisor sees them", registry=r
        )
        self.worker_restarts = Gauge(
            "nbo_worker_restarts", "Workers the supervisor replaced since the server started", registry=r
        )
        self.catalog_version = Gauge("nbo_catalog_version", "Sequence number of the live catalog", registry=r)
