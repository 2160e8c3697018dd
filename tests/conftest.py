"""Shared fixtures: a real redis-server started by the tests on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from server.state.embedded_redis import EmbeddedRedis
from tests.certs import Certs, make_certs
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


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
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
