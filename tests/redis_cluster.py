"""The suite's side of the 3-master test cluster (loadtest.redis_cluster): the fixture that runs a
module's tests on a single Redis and on the cluster, and the client helpers tests import."""

from __future__ import annotations

import pytest

from loadtest.redis_cluster import LocalCluster, async_redis, cluster_settings, is_cluster, redis_args, sync_redis

__all__ = ["LocalCluster", "async_redis", "cluster_settings", "is_cluster", "redis_args", "sync_redis"]


@pytest.fixture(name="redis_url", params=["single", "cluster"])
def redis_url_on_both(request: pytest.FixtureRequest, redis_url: str) -> str:
    """The test Redis, then the 3-master cluster: a test module that imports this fixture runs
    every test that takes `redis_url` on both (its clients come from sync_redis / async_redis)."""
    if request.param == "single":
        return redis_url
    url: str = request.getfixturevalue("cluster_url")
    return url
