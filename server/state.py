"""The hot path's Redis I/O: one pipelined read per decision, one script call to award.

Kept apart from the decision logic so that logic stays testable and a Cluster or another store
can slot in behind the same methods.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis

from server.contact_policy import ContactHistory
from server.keys import Keys
from server.schema import decode_vector


def _lua(name: str) -> str:
    return resources.files("server").joinpath("lua", name).read_text()


@dataclass(frozen=True, slots=True)
class CustomerState:
    vector: npt.NDArray[np.float32] | None  # None: unknown customer (or unreadable vector)
    vector_schema: int | None
    history: ContactHistory
    replay_decision_id: str | None


@dataclass(frozen=True, slots=True)
class Candidate:
    offer_id: str
    budget_key: str | None
    budget_cap: int


@dataclass(frozen=True, slots=True)
class AwardResult:
    status: int  # 1 awarded (maybe nothing), 2 replay of an earlier decision, 3 channel cap used up
    decision_id: str
    awarded: tuple[str, ...]
    exhausted: tuple[str, ...]


AWARDED, REPLAY, CAPPED = 1, 2, 3


class StateStore:
    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._read = client.register_script(_lua("read.lua"))
        self._award = client.register_script(_lua("award.lua"))
        self._outcome = client.register_script(_lua("outcome.lua"))

    async def read(
        self, customer_id: str, channel: str, now: float, window_seconds: float, request_id: str
    ) -> CustomerState:
        k = self.keys
        # one script call instead of a pipeline: same single round trip, a quarter of the
        # client-side command packing, which dominates the cost of a decision's I/O
        blob, contacts, sent, replay_raw = await self._read(
            keys=[
                k.features(customer_id),
                k.contacts(customer_id),
                k.channel_contacts(customer_id, channel),
                k.request(customer_id, request_id or "-"),
            ],
            args=[f"({now - window_seconds}", 1 if request_id else 0],
        )
        replay = replay_raw.decode() if replay_raw else None
        vector: npt.NDArray[np.float32] | None = None
        version: int | None = None
        if blob is not None:
            try:
                version, vector = decode_vector(blob)
            except ValueError:
                vector = None
        fields = dict(zip(contacts[::2], contacts[1::2], strict=True))
        return CustomerState(vector, version, ContactHistory.from_hash(fields, int(sent)), replay)

    async def award(
        self,
        *,
        customer_id: str,
        channel: str,
        decision_id: str,
        request_id: str,
        now: float,
        window_seconds: float,
        max_awards: int,
        channel_cap: int | None,
        candidates: list[Candidate],
        decision_ttl: int,
        request_ttl: int,
        history_ttl: int,
    ) -> AwardResult:
        k = self.keys
        keys = [
            k.channel_contacts(customer_id, channel),
            k.request(customer_id, request_id or "-"),
            k.decision(customer_id, decision_id),
        ]
        args: list[str | int | float] = [
            now,
            window_seconds,
            max_awards,
            -1 if channel_cap is None else channel_cap,
            decision_id,
            decision_ttl,
            request_ttl,
            1 if request_id else 0,
            history_ttl,
            channel,
            len(candidates),
        ]
        for c in candidates:
            if c.budget_key is None:
                args += [c.offer_id, 0, 0]
            else:
                keys.append(c.budget_key)
                args += [c.offer_id, len(keys), c.budget_cap]
        raw = await self._award(keys=keys, args=args)
        status = int(raw[0])
        found_id = raw[1].decode()
        if status == REPLAY:
            return AwardResult(status, found_id, (), ())
        n = int(raw[2])
        names = [x.decode() for x in raw[3:]]
        return AwardResult(status, found_id, tuple(names[:n]), tuple(names[n:]))

    async def replay(self, customer_id: str, decision_id: str) -> bytes | None:
        value = await self.client.hget(self.keys.decision(customer_id, decision_id), "response")
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
    ) -> int:
        k = self.keys
        digest = hashlib.blake2b(event_id.encode(), digest_size=16).hexdigest()
        result = await self._outcome(
            keys=[k.decision(customer_id, decision_id), k.outcome_event(customer_id, digest), k.contacts(customer_id)],
            args=[offer_id, outcome, now, event_ttl, max_presented, suppression_seconds, history_ttl],
        )
        return int(result)
