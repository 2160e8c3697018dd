"""Process wiring: the Redis to use, worker processes sharing the port, signals and draining.

`Worker` is one gRPC server (one event loop) with its service, reloader and log writer; tests
run one in-process. `run_server` is `nbo serve`: it resolves Redis (starting a private one when
no URL is given), publishes the configured catalog, and runs one worker per process with
SO_REUSEPORT so the kernel spreads connections over them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import redis
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from server.api import servicers as grpc_api
from server.catalog.spec import CatalogInvalid
from server.config import Settings
from server.learning.arms import ArmsReloader
from server.learning.bandit import NO_ARMS, Arms
from server.metrics import Metrics
from server.models.loader import ModelReloader
from server.models.scorers import ModelScorer, PriorScorer
from server.pipeline.service import Clock, DecisionService, LiveConfig
from server.state import catalog_store
from server.state.catalog_store import CatalogReloader, LiveSnapshot
from server.state.embedded_redis import EmbeddedRedis, free_port, running_url
from server.state.keys import Keys
from server.state.log_writer import LogWriter
from server.state.redis_store import RedisStateStore

log = logging.getLogger("nbo")


def async_client(url: str, settings: Settings) -> aioredis.Redis:
    # a blocking pool queues a burst of calls for a connection instead of failing them
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        max_connections=settings.redis_pool_size,
        timeout=settings.redis_timeout_seconds,
    )
    return aioredis.Redis(connection_pool=pool)


class Worker:
    """One gRPC server process's worth of serving."""

    def __init__(self, settings: Settings, redis_url: str, port: int, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.port = port
        self.keys = Keys(settings.key_prefix)
        self.client = async_client(redis_url, settings)
        self.metrics = Metrics()
        self._arms = NO_ARMS
        self.writer = LogWriter(
            self.client,
            self.keys,
            self.metrics,
            flush_seconds=settings.log_flush_seconds,
            maxlen=settings.decision_stream_maxlen,
            trim_seconds=settings.log_trim_seconds,
        )
        kwargs: dict[str, Any] = {"clock": clock} if clock else {}
        self.service = DecisionService(
            RedisStateStore(self.client, self.keys), self.writer, self.metrics, settings, **kwargs
        )
        self.reloader = CatalogReloader(
            self.client, self.keys, self.metrics, self._swap, poll_seconds=settings.catalog_poll_seconds
        )
        self.model_reloader = ModelReloader(
            self.client,
            self.keys,
            self.metrics,
            lambda: self.service.live.schema if self.service.live else None,
            self._swap_scorer,
            poll_seconds=settings.catalog_poll_seconds,
            cache_dir=settings.model_cache_dir,
        )
        self.arms_reloader = ArmsReloader(
            self.client, self.keys, self._swap_arms, poll_seconds=settings.catalog_poll_seconds
        )
        self.health = health_aio.HealthServicer()
        self.server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", 1 << 20),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        grpc_api.add_to_server(self.service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                grpc_api.SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )

    def _swap(self, snap: LiveSnapshot) -> None:
        old = self.service.live
        scorer = old.scorer if old is not None else PriorScorer()
        arms = old.arms if old is not None else self._arms
        self.service.live = LiveConfig(snap.catalog, snap.schema, snap.readable_versions, scorer, arms)

    def _swap_arms(self, arms: Arms) -> None:
        self._arms = arms
        old = self.service.live
        if old is not None:
            self.service.live = dataclasses.replace(old, arms=arms)

    def _swap_scorer(self, scorer: ModelScorer) -> None:
        # the model reloader only runs once a catalog (and so a schema) is live
        old = self.service.live
        if old is not None:
            self.service.live = dataclasses.replace(old, scorer=scorer)

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
        self.port = self.server.add_insecure_port(f"{self.settings.host}:{self.port}")
        await self.server.start()
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
            ("decision log", self.writer.close),
            ("redis client", lambda: self.client.aclose(close_connection_pool=True)),
        ]
        for name, step in steps:
            try:
                async with asyncio.timeout(grace + 12):
                    await step()
            except TimeoutError:
                log.error("shutdown step %r did not finish in %.0fs; skipped", name, grace + 12)


async def _serve_worker(settings: Settings, redis_url: str, port: int, index: int) -> None:
    if settings.metrics_port is not None:
        settings = settings.model_copy(update={"metrics_port": settings.metrics_port + index})
    worker = Worker(settings, redis_url, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker.start()
    log.info("worker %d (pid %d) serving on %s:%d", index, os.getpid(), settings.host, worker.port)
    await stop.wait()
    log.info("worker %d draining (grace %.1fs)", index, settings.grace_seconds)
    await worker.stop()


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")


def worker_main(settings_json: str, redis_url: str, port: int, index: int) -> None:
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve_worker(settings, redis_url, port, index))


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
    client = redis.Redis.from_url(url)
    try:
        published = catalog_store.publish(client, Keys(settings.key_prefix), path.read_text(), source=str(path))
    finally:
        client.close()
    log.info("catalog %s %s", published.version, "published" if published.changed else "already live")
    return published.version


class ServerGroup:
    """The worker processes of one server, sharing a port through SO_REUSEPORT."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings = settings
        self.port = settings.port or free_port()
        ctx = multiprocessing.get_context("spawn")
        self.procs = [
            ctx.Process(
                target=worker_main,
                args=(settings.model_dump_json(), redis_url, self.port, i),
                name=f"nbo-worker-{i}",
                daemon=False,
            )
            for i in range(settings.workers)
        ]
        if settings.learner:
            from server.learning.learner import learner_main

            self.procs.append(
                ctx.Process(
                    target=learner_main, args=(settings.model_dump_json(), redis_url), name="nbo-learner", daemon=False
                )
            )

    @property
    def target(self) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "[::]", "::") else self.settings.host
        return f"{host}:{self.port}"

    def start(self) -> None:
        for p in self.procs:
            p.start()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until every worker's health check says SERVING (or raise)."""
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                dead = [p.name for p in self.procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"worker(s) exited during start-up: {', '.join(dead)}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=grpc_api.SERVICE_NAME), timeout=1)
                    if status.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server on {self.target} not ready after {timeout:.0f}s")
                time.sleep(0.1)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        for p in self.procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signum)

    def join(self) -> int:
        """Wait for the workers; if one fails, stop the rest. Returns an exit code."""
        code = 0
        for p in self.procs:
            p.join()
            if p.exitcode not in (0, None, -signal.SIGTERM):
                code = 1
                self.signal()
        return code

    def stop(self) -> int:
        self.signal()
        return self.join()


def run_server(settings: Settings) -> int:
    """`nbo serve`: blocks until SIGTERM/SIGINT, then drains and returns an exit code."""
    configure_logging(settings.log_level)
    with redis_for(settings) as url:
        if settings.catalog is not None:
            try:
                publish_catalog(url, settings, settings.catalog)
            except CatalogInvalid as err:
                print(err.format_all(str(settings.catalog)), file=sys.stderr)
                return 2
            except catalog_store.NoSchema as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
        group = ServerGroup(settings, url)
        signal.signal(signal.SIGTERM, lambda *_: group.signal())
        signal.signal(signal.SIGINT, lambda *_: group.signal())
        group.start()
        print(f"nbo serving on {group.target} with {settings.workers} worker(s); Redis {url}", flush=True)
        return group.join()
