"""One worker process: the Redis to use, the gRPC server, its reloaders, signals and draining.

`Worker` is one gRPC server (one event loop) with its service, reloader and log writer; tests
run one in-process. The parent that runs one worker per process with SO_REUSEPORT, and replaces
dead ones, is server.supervisor (`nbo serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from multiprocessing.sharedctypes import SynchronizedArray
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from server import redact
from server.api import servicers as grpc_api
from server.api.admission import Admission
from server.api.gate import build_gate
from server.api.http import HttpFront
from server.api.reflection import add_reflection
from server.api.tls import server_credentials, server_ssl_context
from server.config import Settings, configure_logging
from server.ids import DecisionIds
from server.learning.arms import ArmsReloader
from server.learning.posterior import NO_ARMS, Arms
from server.metrics import Metrics
from server.models.champion import Challenger
from server.models.loader import ModelReloader
from server.models.scorers import ModelScorer, PriorScorer
from server.pipeline.service import Clock, DecisionService, LiveConfig
from server.state import catalog_store
from server.state.catalog_store import CatalogReloader, LiveSnapshot
from server.state.embedded_redis import EmbeddedRedis, running_url
from server.state.id_secret import DecisionIdSecret
from server.state.keys import Keys
from server.state.log_writer import LogWriter
from server.state.redis_client import aclose, pooled_async_client, sync_client
from server.state.redis_store import RedisStateStore

log = logging.getLogger("nbo")
WORKERS_HEALTH = "nbo.workers"  # SERVING while every worker of the server is serving


def _grpc_server(settings: Settings) -> grpc.aio.Server:
    return grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", 1 << 20),
            ("grpc.keepalive_permit_without_calls", 1),
            # calls the busy event loop has not taken yet wait in gRPC's core: bound them, or
            # under overload they queue for seconds, past every caller's deadline
            ("grpc.server.max_pending_requests", settings.max_pending_rpcs),
            ("grpc.server.max_pending_requests_hard_limit", 2 * settings.max_pending_rpcs),
        ],
    )


class Worker:
    """One gRPC server process's worth of serving."""

    def __init__(self, settings: Settings, redis_url: str, port: int, *, clock: Clock | None = None) -> None:
        redact.install(log_customer_ids=settings.log_customer_ids)
        self.settings = settings
        self.port = port
        self.keys = Keys(settings.key_prefix)
        self.client = pooled_async_client(redis_url, settings)
        self.metrics = Metrics()
        self._arms = NO_ARMS
        self.writer = LogWriter(
            self.client,
            self.keys,
            self.metrics,
            flush_seconds=settings.log_flush_seconds,
            maxlen=settings.decision_stream_maxlen,
            trim_seconds=settings.log_trim_seconds,
            spill_dir=settings.log_spill_dir,
        )
        kwargs: dict[str, Any] = {"clock": clock} if clock else {}
        self.store = RedisStateStore(self.client, self.keys)
        self.service = DecisionService(self.store, self.writer, self.metrics, settings, **kwargs)
        self.reloader = CatalogReloader(
            self.client, self.keys, self.metrics, self._swap, poll_seconds=settings.catalog_poll_seconds
        )
        self.model_reloader = ModelReloader(
            self.client,
            self.keys,
            self.metrics,
            lambda: self.service.live.schema if self.service.live else None,
            self._swap_models,
            poll_seconds=settings.catalog_poll_seconds,
            cache_dir=settings.model_cache_dir,
        )
        self.arms_reloader = ArmsReloader(
            self.client, self.keys, self._swap_arms, poll_seconds=settings.catalog_poll_seconds
        )
        secret = settings.decision_id_secret
        self.id_secret = DecisionIdSecret(
            self.client,
            self.keys,
            self._swap_ids,
            settings.catalog_poll_seconds,
            configured=secret.get_secret_value() if secret else None,
        )
        self.health = health_aio.HealthServicer()
        self.server = _grpc_server(settings)
        admission = Admission(settings.max_concurrent_rpcs, self.metrics)
        # TokenFileError here if the tokens file is bad (`nbo serve` checks it before any worker)
        gate = build_gate(
            settings, self.client, self.keys, self.metrics, self.service.services.breaker, self.service.clock
        )
        grpc_api.add_to_server(self.service, self.server, admission, gate)
        self.http: HttpFront | None = None
        self.http_port: int | None = None
        if settings.http_port is not None:
            self.http = HttpFront(self.service, self.metrics, admission, gate, shutdown_seconds=settings.grace_seconds)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.health_server: grpc.aio.Server | None = None
        self.health_port: int | None = None
        if settings.health_port is not None:
            # the same servicer, so the same statuses, on a port a TLS-less prober can reach
            self.health_server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
        add_reflection(
            self.server, gate, (grpc_api.SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
        )

    def _swap(self, snap: LiveSnapshot) -> None:
        old = self.service.live
        scorer = old.scorer if old is not None else PriorScorer()
        arms = old.arms if old is not None else self._arms
        challenger = old.challenger if old is not None else None
        self.service.live = LiveConfig(snap.catalog, snap.schema, snap.readable_versions, scorer, arms, challenger)
        self._show_versions()

    def _swap_arms(self, arms: Arms) -> None:
        self._arms = arms
        old = self.service.live
        if old is not None:
            self.service.live = dataclasses.replace(old, arms=arms)
            self._show_versions()

    def _swap_ids(self, ids: DecisionIds) -> None:
        self.service.ids = ids

    def _swap_models(self, scorer: ModelScorer, challenger: Challenger | None) -> None:
        # the model reloader only runs once a catalog (and so a schema) is live
        old = self.service.live
        if old is not None:
            self.service.live = dataclasses.replace(old, scorer=scorer, challenger=challenger)
            self._show_versions()

    def _show_versions(self) -> None:
        live = self.service.live
        if live is None:
            return
        models = [(live.scorer.version, "champion")]
        if live.challenger is not None:
            models.append((live.challenger.scorer.version, "challenger"))
        bandit = live.arms.version if live.catalog.bandit.enabled else 0
        self.metrics.show_versions(live.catalog.version, models, bandit)

    async def start(self) -> int:
        self.writer.start()
        try:
            await self.reloader.check()
        except Exception as err:  # Redis may come up later; the reloader keeps trying
            log.warning("no catalog at start-up: %s", err)
        self.reloader.start()
        try:
            await self.model_reloader.check()
        except Exception as err:
            log.warning("no model at start-up: %s", err)
        self.model_reloader.start()
        try:
            await self.arms_reloader.check()
        except Exception as err:
            log.warning("no bandit parameters at start-up: %s", err)
        self.arms_reloader.start()
        try:
            await self.id_secret.check()
        except Exception as err:  # decisions degrade until the shared secret is known
            log.warning("no decision id secret at start-up: %s", err)
        self.id_secret.start()
        address = f"{self.settings.host}:{self.port}"
        if self.settings.tls_enabled:
            self.port = self.server.add_secure_port(address, server_credentials(self.settings))
        else:
            self.port = self.server.add_insecure_port(address)
        await self.server.start()
        if self.health_server is not None and self.settings.health_port is not None:
            self.health_port = self.health_server.add_insecure_port(f"{self.settings.host}:{self.settings.health_port}")
            await self.health_server.start()
        if self.http is not None and self.settings.http_port is not None:
            ssl_context = server_ssl_context(self.settings) if self.settings.tls_enabled else None
            self.http_port = await self.http.start(self.settings.host, self.settings.http_port, ssl_context)
        for name in ("", grpc_api.SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.settings.metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(self.settings.metrics_port, registry=self.metrics.registry)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, let in-flight ones finish within `grace`, flush the log.

        Every step is bounded, so a stuck one is logged and skipped instead of hanging the exit.
        """
        grace = self.settings.grace_seconds if grace is None else grace
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("health", self.health.enter_graceful_shutdown),
            ("grpc server", lambda: self.server.stop(grace)),
            ("catalog reloader", self.reloader.stop),
            ("model reloader", self.model_reloader.stop),
            ("arms reloader", self.arms_reloader.stop),
            ("decision id secret", self.id_secret.stop),
            ("decision log", self.writer.close),
            ("redis scripts", self.store.aclose),
            ("redis client", lambda: aclose(self.client)),
        ]
        if self.http is not None:
            steps.insert(1, ("http front", self.http.stop))
        if self.health_server is not None:
            # probes keep reading NOT_SERVING until the gRPC port has drained
            after = [name for name, _ in steps].index("grpc server") + 1
            steps.insert(after, ("health port", functools.partial(self.health_server.stop, grace)))
        for name, step in steps:
            try:
                async with asyncio.timeout(grace + 12):
                    await step()
            except TimeoutError:
                log.error("shutdown step %r did not finish in %.0fs; skipped", name, grace + 12)


async def _watch_siblings(
    worker: Worker, settings: Settings, ready: SynchronizedArray[int], stop: asyncio.Event
) -> None:
    """Health service `nbo.workers` says whether every worker of this server is serving; a
    worker whose parent died (SIGKILL leaves no one to stop it) drains and exits."""
    parent = os.getppid()
    last = -1
    while True:
        if os.getppid() != parent:
            log.error("the supervisor (pid %d) is gone; this worker stops", parent)
            stop.set()
            return
        now = sum(ready[:])
        if now != last:
            up = now >= settings.workers
            status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
            await worker.health.set(WORKERS_HEALTH, status)
            last = now
        await asyncio.sleep(0.5)


def worker_metrics_port(metrics_port: int, index: int) -> int:
    """Where worker `index` serves its own process's numbers (to see one worker alone)."""
    return metrics_port + 1 + index


async def _serve_worker(
    settings: Settings,
    redis_url: str,
    port: int,
    index: int,
    ready: SynchronizedArray[int] | None = None,
) -> None:
    if settings.metrics_port is not None:
        # metrics_port itself is the supervisor's endpoint, which adds up every process; with 0
        # (any free port) a worker's own port could not be found, so it serves none
        own = worker_metrics_port(settings.metrics_port, index) if settings.metrics_port else None
        settings = settings.model_copy(update={"metrics_port": own})
    worker = Worker(settings, redis_url, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker.start()
    log.info("worker %d (pid %d) serving on %s:%d", index, os.getpid(), settings.host, worker.port)
    watch = None
    if ready is not None:
        ready[index] = 1
        watch = asyncio.create_task(_watch_siblings(worker, settings, ready, stop))
    await stop.wait()
    if watch is not None:
        watch.cancel()
    log.info("worker %d draining (grace %.1fs)", index, settings.grace_seconds)
    await worker.stop()


def worker_main(
    settings_json: str,
    redis_url: str,
    port: int,
    index: int,
    ready: SynchronizedArray[int] | None = None,
) -> None:
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log_level, log_customer_ids=settings.log_customer_ids)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve_worker(settings, redis_url, port, index, ready))


@contextlib.contextmanager
def redis_for(settings: Settings) -> Iterator[str]:
    """The Redis URL to use: the configured one, a running embedded one, or a new embedded one."""
    if settings.redis_url:
        yield settings.redis_url
        return
    data_dir = settings.data_dir / "redis"
    url = running_url(data_dir)
    if url is not None:
        yield url
        return
    with EmbeddedRedis(data_dir) as embedded:
        log.info("started private redis-server at %s (data in %s)", embedded.url, data_dir)
        yield embedded.url


def publish_catalog(url: str, settings: Settings, path: Path) -> str:
    client = sync_client(url, settings)
    try:
        published = catalog_store.publish(client, Keys(settings.key_prefix), path.read_text(), source=str(path))
    finally:
        client.close()
    log.info("catalog %s %s", published.version, "published" if published.changed else "already live")
    return published.version
