"""Said and found must agree: a cluster node without redis_cluster, or redis_cluster without a
cluster, is refused at start with a message that says which (before any decision degrades)."""

from __future__ import annotations

import pytest

from server.cli.main import main
from server.config import Settings
from server.state.embedded_redis import free_port
from server.state.redis_client import RedisAccessError, check_access


def test_a_cluster_node_without_redis_cluster_is_refused(cluster_url: str) -> None:
    with pytest.raises(RedisAccessError, match="is a Redis Cluster node: set NBO_REDIS_CLUSTER=true"):
        check_access(cluster_url, Settings(redis_url=cluster_url))
    check_access(cluster_url, Settings(redis_url=cluster_url, redis_cluster=True))


def test_redis_cluster_on_a_single_redis_is_refused(redis_url: str) -> None:
    with pytest.raises(RedisAccessError, match="is not a Redis Cluster node"):
        check_access(redis_url, Settings(redis_url=redis_url, redis_cluster=True))
    check_access(redis_url, Settings(redis_url=redis_url))


def test_a_cluster_that_does_not_answer_is_only_logged_and_a_command_says_so(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    check_access(url, Settings(redis_url=url, redis_cluster=True))
    assert "does not answer yet" in caplog.text
    assert main(["catalog", "list", "--redis-url", url, "--redis-cluster"]) == 1
    assert "error: cannot reach Redis" in capsys.readouterr().err


def test_redis_cluster_needs_a_tcp_url() -> None:
    with pytest.raises(ValueError, match="redis_cluster is set but redis_url is not a redis:// or rediss:// URL"):
        Settings(redis_url="unix:///tmp/redis.sock", redis_cluster=True)
