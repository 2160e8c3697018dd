"""The parent process of `nbo serve`: owns the port, starts the workers and keeps them alive.

Workers share one port through SO_REUSEPORT, which would also let any other process of the same
user bind it and silently take a share of the calls. So the parent first proves nobody is on
the port (a plain bind), then holds a SO_REUSEPORT socket on it for as long as it lives: the
port's reuse group can then only be joined by processes of this user that also ask for reuse,
and a second `nbo serve` on the same port is refused with a clear message instead.

A worker that dies is replaced within `restart_delay` (the other workers keep serving), unless
one worker slot crashes `max_restarts` times within `restart_window` seconds: that is a crash
loop, and the group stops rather than burn CPU restarting a process that cannot run.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import closing
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import SynchronizedArray

from prometheus_client import multiprocess
from prometheus_client.metrics_core import Metric

from server.api.tokens import TokenFileError, read_tokens
from server.app import publish_catalog, redis_for, worker_main
from server.catalog.spec import CatalogInvalid
from server.config import Settings, configure_logging
from server.metrics import MULTIPROC_ENV, MetricsEndpoint, supervisor_families
from server.state import catalog_store
from server.state.budget_metrics import BudgetGauges
from server.state.budget_migrate import warn_if_legacy
from server.state.keys import Keys
from server.state.redis_client import RedisAccessError, check_access, redacted, sync_client

log = logging.getLogger("nbo.supervisor")

POLL_SECONDS = 0.2


class PortTaken(RuntimeError):
    """The port is already served by another process."""


def claim_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind host:port exclusively once (fails if anyone is there), then hold it for our workers."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    bind_host = host.strip("[]")
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.bind((bind_host, port))
        port = probe.getsockname()[1]
    except OSError as err:
        probe.close()
        if err.errno == errno.EADDRINUSE:
            raise PortTaken(
                f"port {port} on {host} is already in use by another process; stop it or choose another port (--port)"
            ) from None
        raise
    probe.close()
    held = socket.socket(family, socket.SOCK_STREAM)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        held.bind((bind_host, port))
    except OSError as err:  # someone slipped in between the probe and the hold
        held.close()
        raise PortTaken(f"port {port} on {host} was taken while starting: {err}") from None
    return held, port


class ServerGroup:
    """The worker processes of one server, sharing a port through SO_REUSEPORT, supervised."""

    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        *,
        restart_delay: float = 0.5,
        max_restarts: int = 5,
        restart_window: float = 60.0,
    ) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self._held, self.port = claim_port(settings.host, settings.port)
        self._held_http: socket.socket | None = None
        if settings.http_port is not None:
            try:
                self._held_http, http_port = claim_port(settings.host, settings.http_port)
            except PortTaken:
                self._held.close()
                raise
            # with 0 every worker must still bind the same port: the one claimed here
            settings = self.settings = settings.model_copy(update={"http_port": http_port})
        self._ctx = multiprocessing.get_context("spawn")
        # shared with the workers: which are serving (each sets its slot once its port answers, the
        # supervisor clears it when the process dies)
        self.ready: SynchronizedArray[int] = self._ctx.Array("i", settings.workers)
        self.restarts = 0
        self.metrics_dir: str | None = None
        self.metrics: MetricsEndpoint | None = None
        self.metrics_port: int | None = None
        if settings.metrics_port is not None:
            self._metrics_dir()
        self.restart_delay = restart_delay
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.procs: list[BaseProcess] = [self._spawn(i) for i in range(settings.workers)]
        self._crashes: list[deque[float]] = [deque() for _ in self.procs]
        self._stopping = threading.Event()
        self._failed = False
        self._thread = threading.Thread(target=self._supervise, name="nbo-supervisor", daemon=True)

    def _spawn(self, index: int) -> BaseProcess:
        if index >= self.settings.workers:
            from server.learning.learner import learner_main

            return self._ctx.Process(
                target=learner_main,
                args=(self.settings.to_processes(), self.redis_url),
                name="nbo-learner",
                daemon=False,
            )
        return self._ctx.Process(
            target=worker_main,
            args=(self.settings.to_processes(), self.redis_url, self.port, index, self.ready),
            name=f"nbo-worker-{index}",
            daemon=False,
        )

    def _metrics_dir(self) -> None:
        """A fresh private directory for the processes' metric files, set in this process's
        environment before any child starts: spawned children inherit it and so import
        prometheus_client in multiprocess mode. (This process imported it before, so its own
        values stay in memory; it only reads the files.) /dev/shm keeps the files off disk."""
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.metrics_dir = tempfile.mkdtemp(prefix="nbo-metrics-", dir=shm)
        os.environ[MULTIPROC_ENV] = self.metrics_dir
        self._budgets = BudgetGauges(self.redis_url, self.settings)
        self.metrics = MetricsEndpoint(self.metrics_dir, (self._own_families, self._budgets.families))

    def _own_families(self) -> list[Metric]:
        return supervisor_families(sum(self.ready[:]), self.restarts)

    @property
    def failed(self) -> bool:
        """True once a crash loop made the group give up."""
        return self._failed

    @property
    def target(self) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "[::]", "::") else self.settings.host
        return f"{host}:{self.port}"

    def start(self) -> None:
        if self.settings.learner:
            self.procs.append(self._spawn(self.settings.workers))
            self._crashes.append(deque())
        if self.metrics is not None and self.settings.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.start(self.settings.metrics_port)
            except OSError as err:
                self._release()
                raise PortTaken(
                    f"metrics port {self.settings.metrics_port}: {err}; choose another (--metrics-port)"
                ) from None
        for p in self.procs:
            p.start()
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            wait([p.sentinel for p in self.procs], timeout=POLL_SECONDS)
            if self._stopping.is_set():
                break
            for i, p in enumerate(self.procs):
                if not p.is_alive():
                    self._replace(i, p)

    def _replace(self, index: int, dead: BaseProcess) -> None:
        dead.join()
        self._forget(dead)
        if index < self.settings.workers:
            self.ready[index] = 0
        now = time.monotonic()
        crashes = self._crashes[index]
        crashes.append(now)
        while crashes and now - crashes[0] > self.restart_window:
            crashes.popleft()
        if len(crashes) > self.max_restarts:
            log.error(
                "%s died %d times in %.0fs (last exit code %s); stopping the server",
                dead.name,
                len(crashes),
                self.restart_window,
                dead.exitcode,
            )
            self._failed = True
            self._stopping.set()  # before the loop looks at this dead process again
            threading.Thread(target=self.signal, daemon=True).start()
            return
        log.error("%s (pid %s) died with exit code %s; starting a new one", dead.name, dead.pid, dead.exitcode)
        if self._stopping.wait(self.restart_delay):
            return
        fresh = self._spawn(index)
        fresh.start()
        self.procs[index] = fresh
        self.restarts += 1

    def _forget(self, dead: BaseProcess) -> None:
        """Its counters stay counted; its live gauges (versions, circuit breaker) leave the sums."""
        if self.metrics_dir is not None and dead.pid is not None:
            multiprocess.mark_process_dead(dead.pid, self.metrics_dir)  # type: ignore[no-untyped-call]

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until every worker serves its port (or raise).

        Each worker says so in the shared `ready` array once its gRPC server has started. That
        needs no call to the port, so it holds with TLS, mutual TLS (whose client certificate
        the supervisor does not have) and authentication alike."""
        deadline = time.monotonic() + timeout
        while sum(self.ready[:]) < self.settings.workers:
            if self._failed:
                raise RuntimeError("workers kept dying during start-up; see the log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on {self.target} not ready after {timeout:.0f}s")
            time.sleep(0.05)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Ask every process to stop (SIGTERM drains); dead workers are no longer replaced."""
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stopping.set()
        for p in list(self.procs):
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signum)

    def join(self) -> int:
        """Wait until the group is stopped and every process has exited. Returns an exit code."""
        # a timeout, so the main thread wakes to run a signal handler even when the signal was
        # delivered to another thread (without it SIGTERM could go unnoticed)
        while not self._stopping.wait(0.5):
            pass
        if self._thread.is_alive():
            self._thread.join()
        code = 1 if self._failed else 0
        for p in self.procs:
            p.join()
            if p.exitcode not in (0, None, -signal.SIGTERM):
                code = 1
        self._release()
        return code

    def _release(self) -> None:
        self._held.close()
        if self._held_http is not None:
            self._held_http.close()
        if self.metrics is not None:
            self.metrics.stop()
            self._budgets.close()
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            # a group started later in this process (tests, `nbo simulate`) must not hand its
            # workers a directory that no longer exists
            if os.environ.get(MULTIPROC_ENV) == self.metrics_dir:
                del os.environ[MULTIPROC_ENV]

    def stop(self) -> int:
        self.signal()
        return self.join()


def on_signals(handler: Callable[[], None]) -> None:
    """Route SIGTERM and SIGINT of the parent to `handler` (called from the main thread)."""
    signal.signal(signal.SIGTERM, lambda *_: handler())
    signal.signal(signal.SIGINT, lambda *_: handler())


def run_server(settings: Settings) -> int:
    """`nbo serve`: blocks until SIGTERM/SIGINT, then drains and returns an exit code."""
    configure_logging(settings.log_level, log_customer_ids=settings.log_customer_ids)
    if (missing := settings.exposed_unprotected) is not None:
        if not settings.insecure:
            print(
                f"error: binding {settings.host} (not loopback) without {missing}: anyone who reaches the port could "
                "read any customer's offers and report outcomes; set tls_cert_file/tls_key_file and "
                "auth_tokens_file, or pass --insecure (NBO_INSECURE=1) to serve it anyway",
                file=sys.stderr,
            )
            return 2
        log.warning(
            "serving %s without %s (--insecure): anyone who reaches the port can call it", settings.host, missing
        )
    if settings.auth_tokens_file is not None:
        try:
            read_tokens(settings.auth_tokens_file)  # a bad line stops here, not in every worker
        except TokenFileError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    with redis_for(settings) as url:
        try:
            check_access(url, settings)
        except RedisAccessError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        with closing(sync_client(url, settings, socket_timeout=2, socket_connect_timeout=2)) as client:
            warn_if_legacy(client, Keys(settings.key_prefix))
        if settings.catalog is not None:
            try:
                publish_catalog(url, settings, settings.catalog)
            except CatalogInvalid as err:
                print(err.format_all(str(settings.catalog)), file=sys.stderr)
                return 2
            except catalog_store.NoSchema as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
        try:
            group = ServerGroup(settings, url)
        except PortTaken as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        on_signals(group.signal)
        try:
            group.start()
        except PortTaken as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        try:
            # a model compile can take seconds: only say "serving" once the port answers
            group.wait_ready(timeout=120)
        except (RuntimeError, TimeoutError) as err:
            print(f"error: {err}", file=sys.stderr)
            group.stop()
            return 1
        _announce(group, url)
        return group.join()


def _announce(group: ServerGroup, url: str) -> None:
    """What is served where, once the port answers."""
    settings = group.settings
    tls = (" with mutual TLS" if settings.tls_client_ca_file else " with TLS") if settings.tls_enabled else ""
    print(f"nbo serving on {group.target}{tls} with {settings.workers} worker(s); Redis {redacted(url)}", flush=True)
    host = group.target.rpartition(":")[0]
    if settings.http_port is not None:
        scheme = "https" if settings.tls_enabled else "http"
        print(f"HTTP/JSON on {scheme}://{host}:{settings.http_port}", flush=True)
    if group.metrics_port is not None:
        print(f"Prometheus metrics on http://{host}:{group.metrics_port}/metrics", flush=True)
