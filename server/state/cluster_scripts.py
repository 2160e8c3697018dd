"""The hot path's script calls on a Redis Cluster: one pipelined connection per master.

`ClusterScripts` sends each call to the master that owns the slot of its first key (every
script's keys share one slot: tests/integration/test_cluster_slots.py), over that master's
`ScriptClient`, so a cluster keeps what a single Redis has (one write per event-loop tick per
connection, no pool checkout). The slot map is the redis-py cluster client's: learnt from the
cluster when first needed, patched on MOVED (a slot that moved for good: the call goes again to
the new owner), and ASK (a slot being migrated: the call goes once to the importing master,
after ASKING) is followed without patching, as Redis Cluster specifies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterError, MovedError, RedisClusterException, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from server.state.script_client import Arg, LuaScript, RedisPyScripts, ScriptClient, connection_address

MAX_REDIRECTS = 5


class ClusterScripts:
    def __init__(self, client: aioredis.RedisCluster) -> None:
        self._client = client
        self._masters: dict[str, ScriptClient] = {}  # by host:port
        self._fallback: RedisPyScripts | None = None  # connections ScriptClient does not make
        self._mapped = False

    async def run(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        if not keys:
            raise ValueError(f"{script.name}: a script on a Redis Cluster needs a key to be routed by")
        if self._fallback is not None:
            return await self._fallback.run(script, keys, args)
        slot = key_slot(keys[0].encode())
        target = await self._owner(slot)
        if target is None:
            self._fallback = RedisPyScripts(cast(aioredis.Redis, self._client))
            return await self._fallback.run(script, keys, args)
        asking = False
        for _ in range(MAX_REDIRECTS):
            try:
                return await target.run(script, keys, args, asking=asking)
            except ResponseError as err:
                kind, _, where = str(err).partition(" ")
                if kind == "MOVED":
                    await self._client.nodes_manager.move_slot(MovedError(where))
                    target, asking = await self._owner(slot), False
                elif kind == "ASK":
                    ask = AskError(where)
                    target, asking = self._script_client(self._client.nodes_manager.get_node(ask.host, ask.port)), True
                else:
                    raise
            if target is None:
                break
        raise ClusterError(f"{script.name}: slot {slot} redirected more than {MAX_REDIRECTS} times")

    async def _owner(self, slot: int) -> ScriptClient | None:
        """The ScriptClient of the master of `slot` (None: a connection kind it does not make)."""
        if not self._mapped:
            try:
                await self._client.initialize()
            except RedisClusterException as err:  # not a RedisError: callers expect one
                raise RedisConnectionError(f"Redis Cluster not reachable: {err}") from err
            self._mapped = True
        try:
            node = self._client.nodes_manager.get_node_from_slot(slot)
        except RedisClusterException as err:  # a slot no master serves (yet)
            raise RedisConnectionError(str(err)) from err
        return self._script_client(node)

    def _script_client(self, node: ClusterNode | None) -> ScriptClient | None:
        if node is None:
            raise RedisConnectionError("redirected to a Redis Cluster node the client does not know")
        found = self._masters.get(node.name)
        if found is None:
            address = connection_address(node.connection_class, node.connection_kwargs)
            if address is None:
                return None
            found = self._masters[node.name] = ScriptClient(address)
        return found

    async def aclose(self) -> None:
        for master in self._masters.values():
            await master.aclose()
        self._masters.clear()
