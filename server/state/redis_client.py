"""Every Redis client the server, the learner and the commands make, built here from Settings.

One place decides how a URL becomes a client: a rediss:// URL gets the CA and the optional client
certificate of Settings (redis_tls_*), and a user and password in the URL are sent with AUTH by
redis-py. A plain redis:// or unix:// URL (the embedded Redis) is used as it is.

With Settings.redis_cluster the URL names one node of a Redis Cluster, and each client is a
redis-py RedisCluster: it finds the masters from that node, sends each command to the master of
its keys' slot and follows MOVED and ASK. It is handed out typed as the plain client, whose
command methods it shares (the same mixins); the few uses that differ (a connection pool, SCAN
over every master) ask `is_cluster(client)`.
"""

from __future__ import annotations

import logging
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis

from server.config import Settings

log = logging.getLogger("nbo.redis")


class RedisAccessError(RuntimeError):
    """Redis answered but refused us (wrong user or password, no permission, untrusted TLS)."""


def tls_options(url: str, settings: Settings) -> dict[str, Any]:
    """redis-py's TLS keyword arguments for `url` (none unless it is rediss://)."""
    if urlsplit(url).scheme != "rediss":
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required"}
    if settings.redis_tls_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    if settings.redis_tls_cert_file is not None and settings.redis_tls_key_file is not None:
        options["ssl_certfile"] = str(settings.redis_tls_cert_file)
        options["ssl_keyfile"] = str(settings.redis_tls_key_file)
    return options


def is_cluster(client: object) -> bool:
    """Whether `client` (from this module) talks to a Redis Cluster."""
    return isinstance(client, redis.RedisCluster | aioredis.RedisCluster)


def sync_client(url: str, settings: Settings, **options: Any) -> redis.Redis:
    if settings.redis_cluster:
        return cast(redis.Redis, redis.RedisCluster.from_url(url, **tls_options(url, settings), **options))
    return redis.Redis.from_url(url, **tls_options(url, settings), **options)


def async_client(url: str, settings: Settings, **options: Any) -> aioredis.Redis:
    if settings.redis_cluster:
        return cast(aioredis.Redis, aioredis.RedisCluster.from_url(url, **tls_options(url, settings), **options))
    return aioredis.Redis.from_url(url, **tls_options(url, settings), **options)


def pooled_async_client(url: str, settings: Settings) -> aioredis.Redis:
    """The hot path's client: every wait bounded by redis_timeout_seconds."""
    if settings.redis_cluster:
        # a cluster client's pool per master fails a call past its size instead of queueing
        # it, so it must hold every call a worker can have in flight at once
        return async_client(
            url,
            settings,
            socket_timeout=settings.redis_timeout_seconds,
            socket_connect_timeout=settings.redis_timeout_seconds,
            max_connections=max(settings.redis_pool_size, 2 * settings.max_concurrent_rpcs),
        )
    # a blocking pool queues a burst of calls for a connection instead of failing them
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        max_connections=settings.redis_pool_size,
        timeout=settings.redis_timeout_seconds,
        **tls_options(url, settings),
    )
    return aioredis.Redis(connection_pool=pool)


async def aclose(client: aioredis.Redis) -> None:
    """Close `client` and its connections (a cluster client owns its pools; a plain one may not)."""
    if is_cluster(client):
        await client.aclose()
    else:
        await client.aclose(close_connection_pool=True)


def redacted(url: str) -> str:
    """`url` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***@" if parts.username else "***@"
    host = parts.hostname or ""
    netloc = user + (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_access(url: str, settings: Settings) -> None:
    """Raise RedisAccessError if Redis refuses us; a Redis that does not answer is only logged,
    since the server starts without it and keeps trying (its decisions degrade meanwhile)."""
    try:
        client = sync_client(url, settings, socket_connect_timeout=2, socket_timeout=2)
    except redis.RedisClusterException as err:  # a cluster client connects when made
        if "not enabled" in str(err):
            raise RedisAccessError(f"Redis at {redacted(url)} is not a Redis Cluster node: {err}") from None
        log.warning("Redis Cluster at %s does not answer yet: %s", redacted(url), err)
        return
    try:
        client.ping()
        if not settings.redis_cluster and _cluster_enabled(client):
            # a plain client would meet MOVED on every key another master owns
            raise RedisAccessError(f"Redis at {redacted(url)} is a Redis Cluster node: set NBO_REDIS_CLUSTER=true")
    except redis.AuthenticationError as err:
        raise RedisAccessError(f"Redis at {redacted(url)} refused the user or password: {err}") from None
    except redis.ResponseError as err:
        raise RedisAccessError(f"Redis at {redacted(url)} refused PING for this user: {err}") from None
    except redis.ConnectionError as err:
        if "SSL" in str(err) or "certificate" in str(err):
            raise RedisAccessError(f"TLS with Redis at {redacted(url)} failed: {err}") from None
        log.warning("Redis at %s does not answer yet: %s", redacted(url), err)
    finally:
        client.close()


def _cluster_enabled(client: redis.Redis) -> bool:
    """Whether Redis says it is a cluster node (False if this user may not ask: INFO is refused)."""
    try:
        return bool(client.info("cluster").get("cluster_enabled"))
    except redis.ResponseError:
        return False
