"""The hot path's script calls on a Redis Cluster (server.state.cluster_scripts) follow a slot
that migrates to another master: ASK while it moves, MOVED once it has moved."""

from __future__ import annotations

import redis
from redis.crc import key_slot

from server.state.cluster_scripts import ClusterScripts
from server.state.script_client import LuaScript
from tests.redis_cluster import LocalCluster, async_redis

COUNT = LuaScript.of("count", "return redis.call('INCR', KEYS[1])")


def _node_id(node: redis.Redis) -> str:
    found = node.execute_command("CLUSTER", "MYID")
    return found.decode() if isinstance(found, bytes) else str(found)


def _owner(cluster: LocalCluster, slot: int) -> int:
    for i in range(len(cluster.ports)):
        with cluster.node(i) as node:
            if int(node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)) or _serves(node, slot):
                return i
    raise AssertionError(f"no master serves slot {slot}")


def _serves(node: redis.Redis, slot: int) -> bool:
    mine = _node_id(node)
    return any(lo <= slot <= hi and owner[2] == mine.encode() for lo, hi, owner, *_ in node.cluster("SLOTS"))


async def test_script_calls_follow_a_slot_through_its_migration(redis_cluster: LocalCluster, cluster_url: str) -> None:
    key = "nbo:{c:mover}:count"
    slot = key_slot(key.encode())
    client = async_redis(cluster_url)
    scripts = ClusterScripts(client)  # type: ignore[arg-type]  # async_redis hands it out typed as Redis
    src_i = _owner(redis_cluster, slot)
    dst_i = (src_i + 1) % len(redis_cluster.ports)
    src, dst = redis_cluster.node(src_i), redis_cluster.node(dst_i)
    src_id, dst_id = _node_id(src), _node_id(dst)
    try:
        assert await scripts.run(COUNT, [key], []) == 1
        # the migration starts; the key is still on its old master, which answers
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        assert await scripts.run(COUNT, [key], []) == 2
        # the key has moved: the old master answers ASK, the new one serves it after ASKING
        src.migrate("127.0.0.1", redis_cluster.ports[dst_i], [key], 0, 5000)
        assert await scripts.run(COUNT, [key], []) == 3
        assert src.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        assert dst.execute_command("ASKING") and dst.get(key) == b"3"
        # the slot is the new master's for good: MOVED, and the client's slot map follows
        for i in range(len(redis_cluster.ports)):
            with redis_cluster.node(i) as node:
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        assert await scripts.run(COUNT, [key], []) == 4
        assert client.nodes_manager.get_node_from_slot(slot).port == redis_cluster.ports[dst_i]
        assert await scripts.run(COUNT, [key], []) == 5
        assert dst.get(key) == b"5"
    finally:
        await scripts.aclose()
        await client.aclose()
        src.close()
        dst.close()
