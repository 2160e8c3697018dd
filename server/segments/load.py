"""The customers' feature vectors, read from the Redis feature store in SCAN batches.

Every vector is decoded under the schema version it was written with and kept when the live
schema reads it the same way (`FeatureSchema.extends`), the rule `nbo features get` applies too.
With `sample`, a customer is kept when its seeded hash is among the `sample` smallest: the same
customers whatever order SCAN returns the keys in, and never more than `sample` vectors in memory.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt
import redis

from server.features.schema import FeatureSchema, decode_vector
from server.state.feature_store import FeatureStore
from server.state.keys import Keys
from server.state.redis_client import is_cluster

SCAN_COUNT = 1000  # keys per SCAN step, and per pipelined MGET


class SegmentsError(Exception):
    """The segments cannot be suggested as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class Customers:
    """Customers' raw feature values: categorical as level index, missing as NaN."""

    schema: FeatureSchema
    ids: list[str]
    matrix: npt.NDArray[np.float64]  # customers x features
    total: int  # feature vectors found (before sampling)
    unreadable: int  # vectors of a schema the live one cannot read, or malformed


def _customer_id(key: bytes, prefix: str) -> str:
    # the key is `<prefix>{c:<id>}:features`
    return key.decode()[len(prefix) + 3 : -len("}:features")]


def _sample_rank(seed: int, customer_id: str) -> int:
    digest = hashlib.blake2b(f"{seed}:{customer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _batches(client: redis.Redis, keys: Keys) -> Iterator[tuple[list[bytes], list[bytes | None]]]:
    # a cluster client's SCAN walks every master; its MGET must be split by slot (one per customer)
    mget = cast(redis.RedisCluster, client).mget_nonatomic if is_cluster(client) else client.mget
    batch: list[bytes] = []
    for key in cast(Iterable[bytes], client.scan_iter(match=keys.features_pattern(), count=SCAN_COUNT)):
        batch.append(key)
        if len(batch) == SCAN_COUNT:
            yield batch, cast(list[bytes | None], mget(batch))
            batch = []
    if batch:
        yield batch, cast(list[bytes | None], mget(batch))


def load_customers(client: redis.Redis, keys: Keys, *, sample: int | None = None, seed: int = 0) -> Customers:
    """Every loaded customer (or a seeded sample of `sample`), sorted by id.

    Raises SegmentsError when there is no feature schema yet.
    """
    store = FeatureStore(client, keys)
    live = store.current_schema()
    if live is None:
        raise SegmentsError("no feature schema in Redis: load customers first (`nbo features load FILE`)")
    width = len(live.features)
    readable: dict[int, bool] = {}
    kept: dict[str, npt.NDArray[np.float32]] = {}
    heap: list[tuple[int, str]] = []  # (-rank, id): the largest rank kept is on top
    total = unreadable = 0
    for batch, blobs in _batches(client, keys):
        for key, blob in zip(batch, blobs, strict=True):
            if blob is None:  # deleted between SCAN and MGET
                continue
            total += 1
            try:
                version, vector = decode_vector(blob)
            except ValueError:
                unreadable += 1
                continue
            if version not in readable:
                schema = store.schema(version)
                readable[version] = schema is not None and live.extends(schema)
            if not readable[version] or len(vector) != width:
                unreadable += 1
                continue
            cid = _customer_id(key, keys.prefix)
            if sample is None:
                kept[cid] = vector
                continue
            rank = _sample_rank(seed, cid)
            if len(heap) < sample:
                heapq.heappush(heap, (-rank, cid))
                kept[cid] = vector
            elif rank < -heap[0][0]:
                _, dropped = heapq.heapreplace(heap, (-rank, cid))
                del kept[dropped]
                kept[cid] = vector
    ids = sorted(kept)
    matrix = np.array([kept[c] for c in ids], dtype=np.float64).reshape(len(ids), width)
    return Customers(live, ids, matrix, total, unreadable)
