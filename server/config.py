"""The server's one Settings object: every knob, its default and its meaning.

Values come from (highest first) command-line flags, `NBO_*` environment variables, a `.env`
file, then the defaults here. `REDIS_URL` is also accepted without the prefix.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    FieldSerializationInfo,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from server import redact

TO_PROCESSES = "to_processes"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NBO_",
        env_file=".env",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        hide_input_in_errors=True,  # a refused secret must not reach the error message
    )

    host: str = "127.0.0.1"
    """Address the gRPC server binds; use 0.0.0.0 or [::] to serve other machines (which needs
    TLS and authentication, or `insecure`)."""

    insecure: bool = False
    """Serve a non-loopback address without TLS or without authentication (logged as a warning).
    Without it `nbo serve` refuses to: anyone who reaches the port could read any customer's
    offers and report outcomes for them."""

    port: int = Field(50051, ge=0, le=65535)
    """gRPC port, shared by all worker processes (SO_REUSEPORT). 0 picks a free port."""

    http_port: int | None = Field(None, ge=0, le=65535)
    """HTTP/JSON port (POST /v1/decide, POST /v1/outcomes) for callers that cannot speak gRPC,
    served by the same worker processes on the same host; unset = no HTTP. 0 picks a free port."""

    health_port: int | None = Field(None, ge=0, le=65535)
    """Plaintext gRPC port serving only the health service (grpc.health.v1, the same statuses as
    the gRPC port), for probes that speak neither TLS nor mutual TLS: Kubernetes' `grpc:`
    probes. It answers nothing else. Unset = none. 0 picks a free port."""

    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=64)
    """Worker processes; one per core is the sweet spot for a CPU-bound Python server."""

    redis_url: str | None = Field(None, validation_alias=AliasChoices("NBO_REDIS_URL", "REDIS_URL"))
    """redis://, rediss:// or unix:// URL of the shared Redis. Unset: start a private one."""

    redis_cluster: bool = False
    """redis_url is one node of a Redis Cluster: every client finds the masters from it, sends
    each command and script to the master of its keys' slot and follows MOVED and ASK. Said, not
    detected, since a server starts (and builds its clients) before Redis need answer."""

    data_dir: Path = Path(".nbo")
    """Where the embedded Redis keeps its data and its URL file (when redis_url is unset)."""

    key_prefix: str = "nbo:"
    """Prefix of every Redis key, so several deployments can share one Redis."""

    catalog: Path | None = None
    """Catalog YAML to validate and publish at start-up (if it differs from the live one)."""

    max_offers_limit: int = Field(25, ge=1, le=1000)
    """Largest DecideRequest.max_offers accepted; above it is INVALID_ARGUMENT."""

    request_id_ttl_seconds: int = Field(86_400, ge=1)
    """How long a request_id is remembered: a repeat inside this window replays the decision."""

    decision_ttl_seconds: int = Field(30 * 86_400, ge=60)
    """How long a decision can receive outcomes (ReportOutcome) after it was made."""

    decision_id_secret: SecretStr | None = Field(None, min_length=16)
    """Secret that seals customer ids into decision ids (at least 16 characters), the same on
    every replica. Unset: one is made once and kept in Redis (`<key_prefix>{g}:decision_id_secret`).
    Changing it makes every outstanding decision id unknown: their outcomes are refused."""

    outcome_event_ttl_seconds: int = Field(35 * 86_400, ge=60)
    """How long an outcome event id is remembered for de-duplication."""

    conversion_window_seconds: int = Field(35 * 86_400, ge=60)
    """How far back a conversion may have happened (RecordConversion, `nbo conversions import`):
    its event id is remembered until this long after it happened, so any repeat of an accepted
    conversion is recognised; an older one is refused, as its repeat could not be."""

    contact_history_ttl_seconds: int = Field(180 * 86_400, ge=60)
    """Idle time after which a customer's contact history expires."""

    model_cache_dir: Path | None = Path(".nbo/models")
    """Where compiled models (lleaves object files) are cached; unset = never compile."""

    catalog_poll_seconds: float = Field(1.0, gt=0, le=5)
    """How often workers check Redis for a new catalog, feature schema or model (hot reload)."""

    redis_timeout_seconds: float = Field(0.25, gt=0)
    """A decision's whole Redis time (pool checkout, connect and every script call together);
    past it the decision degrades (fails closed)."""

    redis_pool_size: int = Field(32, ge=1)
    """Connections per worker process."""

    max_concurrent_rpcs: int = Field(64, ge=1)
    """Calls one worker runs at once; one more is answered RESOURCE_EXHAUSTED at once, before any
    work, and counted (nbo_shed_requests). At about 700 decisions/s per worker, 64 bounds the
    time a call waits inside the worker at roughly 0.1 s, and leaves room for the calls that wait
    on Redis for redis_timeout_seconds when it stops answering, before the circuit breaker opens."""

    max_pending_rpcs: int = Field(128, ge=1)
    """Calls gRPC's core holds for a worker whose event loop has not yet taken them; beyond this
    it starts refusing new calls at random, beyond twice this it refuses all. gRPC answers those
    CANCELLED (its choice: we cannot make it RESOURCE_EXHAUSTED) and the worker never sees them.
    A busy loop takes calls slowly, so this trades burst tolerance against queueing under
    overload: with both bounds at 64 and 128, 200 concurrent callers on two workers are all
    served; at half that, some of them were refused, and at 3x overload OK answers waited less
    (see loadtest/README.md). gRPC's own default, 1,000, let them wait 1.9 s."""

    decision_timeout_seconds: float = Field(1.0, gt=0)
    """Longest a Decide may take, whatever deadline the caller sent (or none)."""

    deadline_margin_seconds: float = Field(0.005, ge=0)
    """A decision starts no Redis call and no award with less than this left of its deadline: it
    answers DEADLINE (send nothing) instead, and the award is not spent on a caller who is gone."""

    breaker_failures: int = Field(3, ge=1)
    """Consecutive Redis failures after which a worker treats Redis as down: decisions degrade at
    once instead of waiting redis_timeout_seconds each."""

    breaker_probe_seconds: float = Field(0.25, gt=0)
    """While Redis is treated as down, one decision per this interval tries it again."""

    grace_seconds: float = Field(10.0, ge=0)
    """On SIGTERM, how long in-flight calls may take to finish before the server stops."""

    learner: bool = False
    """`nbo serve` also runs the bandit's learner in a process of its own (else run `nbo learner`)."""

    learner_claim_idle_seconds: float = Field(30.0, gt=0)
    """An outcome a learner read but did not acknowledge for this long is taken over by another."""

    bandit_seen_ttl_seconds: int = Field(35 * 86_400, ge=60)
    """How long the learner remembers a (decision, offer) it learned from, to learn it once."""

    decision_stream_maxlen: int = Field(1_000_000, ge=1000)
    """Length the decision and outcome streams are trimmed to, except entries a consumer group
    (the learner, an exporter) has not yet acknowledged: those are kept however long it takes."""

    log_trim_seconds: float = Field(10.0, gt=0)
    """How often each worker trims the log streams."""

    log_flush_seconds: float = Field(0.05, gt=0)
    """Longest a decision waits in memory before its log record is written to Redis."""

    log_spill_dir: Path | None = Path(".nbo/spill")
    """Where log records wait on local disk while Redis is away (beyond 10,000 in memory), to be
    written once it is back; unset = keep them in memory only (100,000 per worker, then dropped)."""

    metrics_port: int | None = Field(None, ge=0, le=65535)
    """If set, `nbo serve` serves ONE Prometheus endpoint here with the metrics of all its
    processes added up (workers and --learner); worker i also serves its own alone on
    metrics_port + 1 + i. `nbo learner` on its own serves its metrics here."""

    log_level: str = "INFO"
    """Python logging level of the server."""

    tls_cert_file: Path | None = None
    """PEM certificate (chain) the gRPC and HTTP ports present; with tls_key_file, both ports
    speak TLS only. Unset (with tls_key_file): plaintext."""

    tls_key_file: Path | None = None
    """PEM private key of tls_cert_file."""

    tls_client_ca_file: Path | None = None
    """PEM CA certificate(s): set, every caller must present a certificate signed by one of them
    (mutual TLS) or the connection is refused. Needs tls_cert_file and tls_key_file."""

    tls_ca_file: Path | None = None
    """For `nbo` commands that call a server: PEM CA certificate(s) to trust for its certificate.
    Set, they connect with TLS."""

    tls_client_cert_file: Path | None = None
    """For `nbo` commands that call a server: PEM certificate presented to a mutual-TLS server."""

    tls_client_key_file: Path | None = None
    """PEM private key of tls_client_cert_file."""

    redis_tls_ca_file: Path | None = None
    """PEM CA certificate(s) to trust for a rediss:// Redis (unset: the system's CAs)."""

    redis_tls_cert_file: Path | None = None
    """PEM client certificate for a rediss:// Redis that asks for one (tls-auth-clients)."""

    redis_tls_key_file: Path | None = None
    """PEM private key of redis_tls_cert_file."""

    log_customer_ids: bool = False
    """Write customer ids into log lines as they are (decision ids are sealed and carry none);
    off, each is replaced by a short keyed hash (`#` and 10 hex digits, stable within a process)."""

    auth_tokens_file: Path | None = None
    """Callers and roles: lines `<client name> <roles> <sha256 hex of the token>` (roles from
    decide, report, admin; see `nbo tokens add`). Every call must then send `authorization:
    Bearer <token>`. Unset = no authentication: anyone who reaches the port may call everything."""

    rate_limit_per_second: float | None = Field(None, gt=0)
    """Calls per second each client may make (a token bucket in Redis shared by all replicas;
    anonymous callers: per address). Unset = no rate limit, and no Redis call for it."""

    rate_limit_burst: int | None = Field(None, ge=1)
    """Calls a client may make at once above its rate (the bucket's size); unset = one second's
    worth of rate_limit_per_second."""

    @property
    def exposed_unprotected(self) -> str | None:
        """What is missing when the server binds a non-loopback address without TLS and
        authentication (None: loopback, or both are on)."""
        if _is_loopback(self.host):
            return None
        missing = [name for name, on in (("TLS", self.tls_enabled), ("authentication", self.auth_enabled)) if not on]
        return " and ".join(missing) or None

    @property
    def auth_enabled(self) -> bool:
        """Whether callers must authenticate (a tokens file is configured)."""
        return self.auth_tokens_file is not None

    @property
    def rate_limit_bucket(self) -> int:
        """The size of each client's token bucket."""
        if self.rate_limit_burst is not None:
            return self.rate_limit_burst
        return max(1, math.ceil(self.rate_limit_per_second or 1))

    @field_serializer("decision_id_secret", when_used="json")
    def _secret_for_workers(self, value: SecretStr | None, info: FieldSerializationInfo) -> str | None:
        # the supervisor hands Settings to its processes as JSON (to_processes): masked, the
        # secret would reach them as "**********" and fail its own length check
        if value is None:
            return None
        revealed = isinstance(info.context, dict) and info.context.get(TO_PROCESSES)
        return value.get_secret_value() if revealed else str(value)

    def to_processes(self) -> str:
        """These settings as JSON for the server's own worker and learner processes, secrets
        included (any other JSON dump masks them)."""
        return self.model_dump_json(context={TO_PROCESSES: True})

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # NBO_METRICS_PORT="" in an env file or a unit means "off", not an error
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("key_prefix")
    @classmethod
    def _prefix_is_safe(cls, value: str) -> str:
        if not value or any(ch in value for ch in "{} \n"):
            raise ValueError("must be non-empty without braces or whitespace")
        return value

    @field_validator(
        "tls_cert_file",
        "tls_client_ca_file",
        "tls_ca_file",
        "tls_client_cert_file",
        "redis_tls_ca_file",
        "redis_tls_cert_file",
    )
    @classmethod
    def _is_pem_certificate(cls, value: Path | None) -> Path | None:
        return _pem_file(value, b"-----BEGIN CERTIFICATE-----", "a PEM certificate")

    @field_validator("tls_key_file", "tls_client_key_file", "redis_tls_key_file")
    @classmethod
    def _is_pem_key(cls, value: Path | None) -> Path | None:
        return _pem_file(value, b"PRIVATE KEY-----", "a PEM private key")

    @model_validator(mode="after")
    def _tls_files_fit(self) -> Settings:
        for cert, key in (
            ("tls_cert_file", "tls_key_file"),
            ("tls_client_cert_file", "tls_client_key_file"),
            ("redis_tls_cert_file", "redis_tls_key_file"),
        ):
            _key_fits(getattr(self, cert), getattr(self, key), cert, key)
        if self.tls_client_ca_file is not None and not self.tls_enabled:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        redis_tls = [n for n in ("redis_tls_ca_file", "redis_tls_cert_file") if getattr(self, n) is not None]
        if redis_tls and urlsplit(self.redis_url or "").scheme != "rediss":
            raise ValueError(f"{redis_tls[0]} is set but redis_url is not a rediss:// URL")
        if self.redis_cluster and urlsplit(self.redis_url or "").scheme not in ("redis", "rediss"):
            raise ValueError("redis_cluster is set but redis_url is not a redis:// or rediss:// URL of a cluster node")
        return self

    @property
    def tls_enabled(self) -> bool:
        """Whether the gRPC and HTTP ports speak TLS (the certificate and key are set)."""
        return self.tls_cert_file is not None


def _pem_file(path: Path | None, marker: bytes, what: str) -> Path | None:
    # read at start-up, so a missing or wrong file is a clear error now, not a failed handshake later
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from None
    if marker not in data:
        raise ValueError(f"{path} is not {what} (no {marker.decode().strip('-')} block)")
    return path


def _key_fits(cert: Path | None, key: Path | None, cert_name: str, key_name: str) -> None:
    if (cert is None) != (key is None):
        raise ValueError(f"{cert_name} and {key_name} go together: set both or neither")
    if cert is None or key is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError as err:
        raise ValueError(f"{key_name} {key} is not the key of {cert_name} {cert}: {err.reason or err}") from None


def configure_logging(level: str, *, log_customer_ids: bool = False) -> None:
    """Log lines of every process (server workers, learner, commands) in one format, with the pid,
    never with a credential, and with customer ids only if `log_customer_ids` (server.redact)."""
    redact.install(log_customer_ids=log_customer_ids)
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")


def _is_loopback(host: str) -> bool:
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything
