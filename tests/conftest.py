"""Shared fixtures: a real redis-server started by the tests on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from server.state.embedded_redis import EmbeddedRedis
from tests.certs import Certs, make_certs
from tests.redis_cluster import LocalCluster, sync_redis
from tests.redis_tls import TlsRedis, tls_redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False)
    with server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """URL of the test Redis, emptied before each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-master Redis Cluster (tests/redis_cluster.py), started once for the session."""
    with LocalCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture
def cluster_url(redis_cluster: LocalCluster) -> str:
    """URL of the 3-master test cluster, every master emptied before each test. The tests'
    helpers (tests.redis_cluster.sync_redis, ...) make cluster clients for it."""
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture(params=["single", "cluster"])
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """The test Redis, then the 3-master cluster: a test that takes this runs on both."""
    name = "redis_url" if request.param == "single" else "cluster_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = sync_redis(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA with server and client certificates, and another CA with a client certificate."""
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def tls_redis_server(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """A redis-server with TLS only and a password (see tests/redis_tls.py)."""
    with tls_redis(certs, tmp_path_factory.mktemp("redis-tls")) as server:
        if isinstance(server, str):
            pytest.skip(server)
        yield server


@pytest.fixture
def examples_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "examples"
