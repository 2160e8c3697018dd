"""`nbo serve` as an operator runs it: real worker processes killed under traffic, a port that is
already taken, a graceful SIGTERM. The parent must replace a dead worker (the others keep
serving), report the loss in health and metrics, and never share its port with a stranger."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.api.client import NboClient
from server.state.embedded_redis import EmbeddedRedis
from tests.integration.harness import load_customers, publish_text, terminate
from tests.unit.catalog_fixtures import BASE

NBO = [sys.executable, "-m", "server.cli"]
WORKER_LINE = re.compile(r"worker (\d+) \(pid (\d+)\) serving")
CUSTOMER = {"vip": {"tier": "A", "tenure_months": 40, "churn_risk": 0.1, "consent_web": 1, "consent_call": 1}}


@dataclass
class Served:
    proc: subprocess.Popen[str]
    target: str
    stderr: Path

    def worker_pids(self) -> dict[int, int]:
        """The newest pid of each worker index, from the workers' start-up log lines."""
        pids: dict[int, int] = {}
        for m in WORKER_LINE.finditer(self.stderr.read_text()):
            pids[int(m.group(1))] = int(m.group(2))
        return pids


@pytest.fixture
def served(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[Served]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    load_customers(redis_server.url, CUSTOMER, tmp_path)
    publish_text(redis_server.url, BASE)
    served = _start(redis_server.url, tmp_path, "0")
    try:
        yield served
    finally:
        terminate(served.proc)


def _start(redis_url: str, tmp: Path, port: str) -> Served:
    env = {**os.environ, "REDIS_URL": redis_url, "NBO_LOG_LEVEL": "INFO"}
    stderr_path = tmp / f"serve-{port}-{time.monotonic_ns()}.stderr"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [*NBO, "serve", "--workers", "2", "--port", port],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            cwd=tmp,
        )
    assert proc.stdout is not None
    banner = proc.stdout.readline()
    match = re.search(r"serving on (\S+) with 2 worker", banner)
    assert match, f"banner {banner!r}; stderr: {stderr_path.read_text()[-2000:]}"
    return Served(proc, match.group(1), stderr_path)


@dataclass
class Traffic:
    """Decide calls at a steady rate from a thread, counting what failed."""

    target: str
    rate: float = 100.0
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        # a fresh channel per call: a call must not stick to a connection of the dead worker
        interval = 1 / self.rate
        while not self._stop.is_set():
            started = time.monotonic()
            client = NboClient(self.target, timeout=2)
            try:
                client.decide("vip", channel="web")
                self.ok += 1
            except grpc.RpcError as err:
                self.failed.append(f"{err.code().name}: {err.details()}")
            finally:
                client.close()
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()


def _workers_health(target: str) -> int:
    with grpc.insecure_channel(target) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="nbo.workers"), timeout=2)
    return int(reply.status)


def _wait_for(predicate: object, timeout: float) -> float:
    """Seconds until predicate() is true; fails the test after timeout."""
    assert callable(predicate)
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.parametrize("victim", [0, 1])
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_dead_worker_is_replaced_and_the_other_keeps_serving(served: Served, victim: int, how: int) -> None:
    _wait_for(lambda: len(served.worker_pids()) == 2, 30)
    _wait_for(lambda: _workers_health(served.target) == health_pb2.HealthCheckResponse.SERVING, 5)
    traffic = Traffic(served.target)
    thread = threading.Thread(target=traffic.run)
    thread.start()
    try:
        time.sleep(1.0)
        old = served.worker_pids()[victim]
        os.kill(old, how)
        # how fast is measured by the fault suite (a busy CI machine slows a Python start-up)
        _wait_for(lambda: served.worker_pids().get(victim) not in (None, old), 30)
        time.sleep(1.0)
    finally:
        traffic.stop()
        thread.join()
    assert served.proc.poll() is None, "the server must outlive one worker"
    total = traffic.ok + len(traffic.failed)
    assert total > 150
    # one sequential caller has at most one call in flight on the worker that died
    assert len(traffic.failed) <= 1, traffic.failed[:5]
    _wait_for(lambda: _workers_health(served.target) == health_pb2.HealthCheckResponse.SERVING, 5)
    assert "died with exit code" in served.stderr.read_text()


def test_health_reports_a_lost_worker_until_it_is_replaced(served: Served) -> None:
    _wait_for(lambda: len(served.worker_pids()) == 2, 30)
    _wait_for(lambda: _workers_health(served.target) == health_pb2.HealthCheckResponse.SERVING, 5)
    pids = served.worker_pids()
    # the survivor must say NOT_SERVING for nbo.workers between the loss and the replacement
    seen: list[int] = []
    watcher_stop = threading.Event()

    def watch() -> None:
        while not watcher_stop.is_set():
            with contextlib.suppress(grpc.RpcError):
                seen.append(_workers_health(served.target))
            time.sleep(0.02)

    t = threading.Thread(target=watch)
    t.start()
    try:
        os.kill(pids[1], signal.SIGKILL)
        _wait_for(lambda: served.worker_pids().get(1) not in (None, pids[1]), 10)
        _wait_for(lambda: bool(seen) and seen[-1] == health_pb2.HealthCheckResponse.SERVING, 5)
    finally:
        watcher_stop.set()
        t.join()
    assert health_pb2.HealthCheckResponse.NOT_SERVING in seen


def test_sigterm_drains_and_exits_cleanly(served: Served) -> None:
    _wait_for(lambda: len(served.worker_pids()) == 2, 30)
    assert terminate(served.proc) == 0
    assert "died with exit code" not in served.stderr.read_text()


def _serve_once(redis_url: str, tmp: Path, port: int) -> subprocess.CompletedProcess[str]:
    """`nbo serve` on a port expected to be refused: it must exit by itself."""
    return subprocess.run(
        [*NBO, "serve", "--workers", "1", "--port", str(port)],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "REDIS_URL": redis_url},
        cwd=tmp,
        timeout=60,
    )


def test_a_port_served_by_a_stranger_is_refused(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    stranger = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even one that allows sharing
    stranger.bind(("127.0.0.1", 0))
    stranger.listen()
    port = stranger.getsockname()[1]
    try:
        done = _serve_once(redis_server.url, tmp_path, port)
    finally:
        stranger.close()
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use by another process" in done.stderr


def test_a_second_server_on_the_same_port_is_refused(
    served: Served, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    done = _serve_once(redis_server.url, tmp_path, int(served.target.rsplit(":", 1)[1]))
    assert done.returncode == 2
    assert "already in use by another process" in done.stderr
    assert served.proc.poll() is None


def test_sigterm_right_after_the_banner_is_not_lost(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    load_customers(redis_server.url, CUSTOMER, tmp_path)
    publish_text(redis_server.url, BASE)
    for _ in range(3):
        served = _start(redis_server.url, tmp_path, "0")
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=30) == 0


def test_workers_stop_when_their_supervisor_is_killed(served: Served) -> None:
    _wait_for(lambda: len(served.worker_pids()) == 2, 30)
    pids = list(served.worker_pids().values())
    served.proc.kill()
    served.proc.wait()

    def gone() -> bool:
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            return False
        return True

    _wait_for(gone, 30)
