"""The hot path's Redis I/O, one script call per step, each script inside one Cluster slot.

A decision reads the customer (customer slot), reserves budget by walking the ranked candidates
(server.state.budget_walk: a call per campaign and channel slot; skipped when no candidate is
limited), then commits the awards on the customer's
side (customer slot). A commit that refuses a reserved offer (a concurrent decision for the same
customer used the cap first, or the request id was already decided) releases its reservation,
so the counters end equal to the awards returned.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.catalog.budgets import Period, Reservation
from server.features.schema import decode_vector
from server.state import budget_walk
from server.state.budget_walk import Slot, SlotCandidate
from server.state.cluster_scripts import ClusterScripts
from server.state.contacts import ContactHistory
from server.state.conversions import SCRIPT as _CONVERSION
from server.state.conversions import ConversionRecord, script_call
from server.state.keys import Keys
from server.state.script_client import LuaScript, Scripts, scripts_for
from server.state.store import (
    CAMPAIGN_CAP,
    CHANNEL_CAP,
    COMMITTED,
    CONFLICT,
    OFFER_CAP,
    RECORDED,
    REPLAY,
    RETRY,
    TOO_LARGE,
    Committed,
    CustomerState,
    Pick,
    Recorded,
    Reporter,
    Reserved,
    StateUnavailable,
    award_value,
    request_value,
    split_award_value,
    split_request_value,
)

__all__ = [
    "CAMPAIGN_CAP",
    "CHANNEL_CAP",
    "COMMITTED",
    "OFFER_CAP",
    "REPLAY",
    "RETRY",
    "Committed",
    "CustomerState",
    "Pick",
    "Recorded",
    "RedisStateStore",
    "Reserved",
]


_READ = LuaScript.load("read.lua")
_RESERVE = LuaScript.load("reserve.lua")
_RELEASE = LuaScript.load("release.lua")
_COMMIT = LuaScript.load("commit.lua")
_OUTCOME = LuaScript.load("outcome.lua")


class RedisStateStore:
    """The StateStore protocol (server.state.store) over Redis, one script call per step; Redis
    errors leave as StateUnavailable.

    The script calls go over a lean pipelined connection of their own to `client`'s Redis
    (server.state.script_client; redis-py itself for connection kinds that one does not make);
    the few plain commands use `client`. `aclose` closes the script connection."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.client = client
        self._keys = keys
        # on a cluster, a pipelined connection per master, routed by slot
        self._scripts: Scripts = (
            ClusterScripts(client) if isinstance(client, aioredis.RedisCluster) else scripts_for(client)
        )

    async def aclose(self) -> None:
        await self._scripts.aclose()

    @property
    def keys(self) -> Keys:
        return self._keys

    async def read(
        self, customer_id: str, channel: str, now: float, window_seconds: float, request_id: str
    ) -> CustomerState:
        k = self.keys
        # one script call instead of a pipeline: same single round trip, a quarter of the
        # client-side command packing, which dominates the cost of a decision's I/O
        try:
            blob, contacts, sent, replay_raw = await self._scripts.run(
                _READ,
                (
                    k.features(customer_id),
                    k.contacts(customer_id),
                    k.channel_contacts(customer_id, channel),
                    k.request(customer_id, request_id or "-"),
                ),
                (f"({now - window_seconds}", 1 if request_id else 0),
            )
        except RedisError as err:
            raise StateUnavailable(str(err)) from err
        replay, fingerprint = split_request_value(replay_raw.decode()) if replay_raw else (None, "")
        vector: npt.NDArray[np.float32] | None = None
        version: int | None = None
        if blob is not None:
            try:
                version, vector = decode_vector(blob)
            except ValueError:
                vector = None
        fields = dict(zip(contacts[::2], contacts[1::2], strict=True))
        return CustomerState(vector, version, ContactHistory.from_hash(fields, int(sent)), replay, fingerprint)

    async def reserve(self, period: Period, max_awards: int, walk: Sequence[Reservation]) -> Reserved:
        """Walk the ranked candidates, one script per budget slot; count exactly those awarded."""
        return await budget_walk.reserve(self, self.keys, period, max_awards, walk)

    async def release(self, period: Period, reservations: Sequence[Reservation]) -> None:
        """Give back reservations that were not awarded after all."""
        await budget_walk.release(self, self.keys, period, reservations)

    async def reserve_in_slot(self, slot: Slot, k: int, walk: Sequence[SlotCandidate]) -> Reserved:
        args: list[str | int] = [k, *slot.ttls, len(walk)]
        for c in walk:
            args += [c.offer_id, len(c.checks)]
            for check in c.checks:
                args += check
        try:
            raw = await self._scripts.run(_RESERVE, slot.keys, args)
        except RedisError as err:
            raise StateUnavailable(str(err)) from err
        n = int(raw[0])
        awarded = tuple(x.decode() for x in raw[1 : 1 + n])
        rest = raw[1 + n :]
        refused = tuple((rest[i].decode(), int(rest[i + 1]), int(rest[i + 2])) for i in range(0, len(rest), 3))
        return Reserved(awarded, refused)

    async def release_in_slot(self, slot: Slot, items: Sequence[tuple[int, str, int]]) -> None:
        args: list[str | int] = [len(items)]
        for item in items:
            args += item
        try:
            await self._scripts.run(_RELEASE, slot.keys, args)
        except RedisError as err:
            raise StateUnavailable(str(err)) from err

    async def commit(
        self,
        *,
        customer_id: str,
        channel: str,
        decision_id: str,
        request_id: str,
        now: float,
        window_seconds: float,
        channel_cap: int | None,
        picks: Sequence[Pick],
        may_retry: bool,
        decision_ttl: int,
        request_ttl: int,
        history_ttl: int,
        request_fingerprint: str,
        caller: str = "",
    ) -> Committed:
        k = self.keys
        keys = [
            k.channel_contacts(customer_id, channel),
            k.request(customer_id, request_id or "-"),
            k.decision(customer_id, decision_id),
            k.contacts(customer_id),
        ]
        args: list[str | int | float] = [
            now,
            window_seconds,
            -1 if channel_cap is None else channel_cap,
            decision_id,
            decision_ttl,
            request_ttl,
            request_value(decision_id, request_fingerprint) if request_id else "",
            history_ttl,
            channel,
            len(picks),
            1 if may_retry else 0,
            caller,
        ]
        for p in picks:
            args += [p.offer_id, p.campaign_id, p.offer_cap, p.campaign_cap, award_value(p)]
        try:
            raw = await self._scripts.run(_COMMIT, keys, args)
        except RedisError as err:
            raise StateUnavailable(str(err)) from err
        status = int(raw[0])
        if status == REPLAY:
            earlier, fingerprint = split_request_value(raw[1].decode())
            return Committed(status, earlier, (), (), fingerprint)
        found_id = raw[1].decode()
        n = int(raw[2])
        awarded = tuple(x.decode() for x in raw[3 : 3 + n])
        rest = raw[3 + n :]
        refused = tuple((rest[i].decode(), int(rest[i + 1])) for i in range(0, len(rest), 2))
        return Committed(status, found_id, awarded, refused)

    async def claim_request(
        self, customer_id: str, request_id: str, decision_id: str, fingerprint: str, ttl: int
    ) -> tuple[str, str] | None:
        key = self.keys.request(customer_id, request_id)
        try:
            # SET NX then GET, not SET NX GET: that needs Redis 7. A request key is only ever set
            # once, so what GET finds is what refused our SET (unless it expired just between)
            for _ in range(2):
                if await self.client.set(key, request_value(decision_id, fingerprint), nx=True, ex=ttl):
                    return None
                found = await self.client.get(key)
                if found is not None:
                    return split_request_value(found.decode() if isinstance(found, bytes) else found)
        except RedisError as err:
            raise StateUnavailable(str(err)) from err
        raise StateUnavailable(f"request key {key} neither set nor readable")

    async def replay(self, customer_id: str, decision_id: str) -> bytes | None:
        try:
            value = await self.client.hget(self.keys.decision(customer_id, decision_id), "response")
        except RedisError as err:
            raise StateUnavailable(str(err)) from err
        return value.encode() if isinstance(value, str) else value

    async def record_outcome(
        self,
        *,
        customer_id: str,
        decision_id: str,
        offer_id: str,
        outcome: str,
        event_id: str,
        now: float,
        event_ttl: int,
        max_presented: int,
        suppression_seconds: float,
        history_ttl: int,
        fingerprint: str,
        reporter: Reporter,
    ) -> Recorded:
        k = self.keys
        digest = hashlib.blake2b(event_id.encode(), digest_size=16).hexdigest()
        try:
            raw = await self._scripts.run(
                _OUTCOME,
                (
                    k.decision(customer_id, decision_id),
                    k.outcome_event(customer_id, digest),
                    k.contacts(customer_id),
                ),
                (
                    offer_id,
                    outcome,
                    now,
                    event_ttl,
                    max_presented,
                    suppression_seconds,
                    history_ttl,
                    fingerprint,
                    reporter.caller,
                    1 if reporter.admin else 0,
                    repr(reporter.value),
                    repr(reporter.fallback_max_value),
                ),
            )
        except RedisError as err:
            raise StateUnavailable(str(err)) from err
        status = int(raw[0])
        if status == CONFLICT:
            return Recorded(status, "", math.nan, math.nan, raw[1].decode())
        if status == TOO_LARGE:
            return Recorded(status, "", math.nan, math.nan, max_value=float(raw[1]))
        if status != RECORDED:
            return Recorded(status, "", math.nan, math.nan)
        p, sd, inputs = split_award_value(raw[2].decode()) if raw[2] else (math.nan, math.nan, "")
        return Recorded(status, raw[1].decode(), p, sd, inputs=inputs)

    async def record_conversion(self, record: ConversionRecord, fingerprint: str, window: int) -> tuple[int, str]:
        script_keys, args = script_call(self.keys, record, fingerprint, window)
        try:
            raw = await self._scripts.run(_CONVERSION, script_keys, args)
        except RedisError as err:
            raise StateUnavailable(str(err)) from err
        stored = raw[1].decode() if len(raw) > 1 else ""
        return int(raw[0]), stored
