"""Catalog versions in Redis: publishing (CLI), the stored versions the log names, and the
background reloader (every worker).

A published catalog is immutable: `catalog:v<N>` holds its text and metadata and
`catalog:current` names the live N. Workers poll the pointer (and the feature-schema pointer,
since rules compile against the schema), compile off the event loop, and swap one reference;
a catalog that does not compile is never swapped in and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from server.catalog.compiled import Catalog, content_hash
from server.catalog.compiler import parse_catalog
from server.catalog.spec import CatalogInvalid
from server.features.schema import FeatureSchema
from server.metrics import Metrics
from server.state.keys import Keys
from server.state.polling import Poller

log = logging.getLogger(__name__)


class NoSchema(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Published:
    seq: int
    version: str
    changed: bool


def version_label(seq: int, text: str) -> str:
    return f"{seq}-{content_hash(text)[:8]}"


def current_schema(client: redis.Redis, keys: Keys) -> FeatureSchema | None:
    current = client.get(keys.schema_current)
    if current is None:
        return None
    raw = client.get(keys.schema(int(current)))
    return FeatureSchema.from_json(raw) if raw is not None else None


def publish(client: redis.Redis, keys: Keys, text: str, source: str = "catalog") -> Published:
    """Validate `text` against the live feature schema and make it the live catalog.

    Raises CatalogInvalid (nothing published) or NoSchema. Publishing the text that is already
    live is a no-op.
    """
    schema = current_schema(client, keys)
    if schema is None:
        raise NoSchema("no feature schema in Redis: load customer features first (nbo features load FILE)")
    parse_catalog(text, schema)  # raises CatalogInvalid with every error
    digest = content_hash(text)
    live = client.get(keys.catalog_current)
    if live is not None:
        raw = client.get(keys.catalog(int(live)))
        if raw is not None and json.loads(raw)["hash"] == digest:
            return Published(int(live), version_label(int(live), text), changed=False)
    seq = int(client.incr(keys.catalog_seq))
    record = {
        "text": text,
        "hash": digest,
        "source": source,
        "schema_version": schema.version,
        "published_at": time.time(),
    }
    pipe = client.pipeline(transaction=True)
    pipe.set(keys.catalog(seq), json.dumps(record))
    pipe.set(keys.catalog_current, seq)
    pipe.execute()
    return Published(seq, version_label(seq, text), changed=True)


class CatalogNotStored(LookupError):
    """No stored catalog is the version asked for."""


@dataclass(frozen=True, slots=True)
class StoredCatalog:
    seq: int
    version: str  # "<seq>-<hash prefix>": how decisions (DecisionRecord.catalog_version) name it
    text: str
    source: str
    schema_version: int | None  # the feature schema it was published against
    published_at: float


def _stored(client: redis.Redis, keys: Keys, seq: int) -> StoredCatalog | None:
    raw = client.get(keys.catalog(seq))
    if raw is None:
        return None
    rec: dict[str, Any] = json.loads(cast(bytes, raw))
    text = str(rec["text"])
    schema_version = rec.get("schema_version")
    return StoredCatalog(
        seq=seq,
        version=version_label(seq, text),
        text=text,
        source=str(rec.get("source", "")),
        schema_version=schema_version if isinstance(schema_version, int) else None,
        published_at=float(rec.get("published_at", 0.0)),
    )


def stored_catalog(client: redis.Redis, keys: Keys, version: str) -> StoredCatalog:
    """The stored catalog a decision names. A Redis rebuilt from scratch reuses sequence numbers,
    so the content hash in the name must match too; CatalogNotStored when nothing does."""
    seq, _, _ = version.partition("-")
    if not seq.isdigit():
        raise CatalogNotStored(f"catalog version {version!r} is not a stored catalog version")
    found = _stored(client, keys, int(seq))
    if found is None:
        raise CatalogNotStored(f"catalog v{seq} is not stored")
    if found.version != version:
        raise CatalogNotStored(f"catalog v{seq} holds {found.version}, not {version}")
    return found


def compile_stored(client: redis.Redis, keys: Keys, stored: StoredCatalog) -> Catalog:
    """Compile a stored catalog against the feature schema it was published against (a later
    schema may no longer compile its rules), else the current one. LookupError when there is
    no schema; CatalogInvalid when it does not compile."""
    schema = None
    if stored.schema_version is not None:
        raw = client.get(keys.schema(stored.schema_version))
        schema = None if raw is None else FeatureSchema.from_json(cast(bytes, raw))
    schema = schema or current_schema(client, keys)
    if schema is None:
        raise LookupError("no feature schema in Redis")
    return parse_catalog(stored.text, schema, version=stored.version)


class NoCatalog(RuntimeError):
    """No catalog is published, or the live one cannot be loaded."""


def live_catalog(client: redis.Redis, keys: Keys) -> Catalog:
    """The live catalog compiled as the servers compile it; NoCatalog when there is none."""
    current = client.get(keys.catalog_current)
    if current is None:
        raise NoCatalog("no catalog published: run `nbo catalog load FILE`")
    seq = int(cast(bytes, current))
    try:
        stored = _stored(client, keys, seq)
        if stored is None:
            raise LookupError(f"catalog v{seq} is not stored")
        return compile_stored(client, keys, stored)
    except (LookupError, CatalogInvalid) as err:
        raise NoCatalog(f"the live catalog v{seq} cannot be loaded: {err}") from err


def list_versions(client: redis.Redis, keys: Keys) -> list[tuple[int, str, str, float, bool]]:
    """(seq, version, source, published_at, live) of every stored catalog version."""
    live = client.get(keys.catalog_current)
    live_seq = int(cast(bytes, live)) if live is not None else None
    last = int(cast(bytes, client.get(keys.catalog_seq) or 0))
    out = []
    for seq in range(1, last + 1):
        found = _stored(client, keys, seq)
        if found is not None:
            out.append((seq, found.version, found.source, found.published_at, seq == live_seq))
    return out


@dataclass(frozen=True, slots=True)
class LiveSnapshot:
    catalog: Catalog
    schema: FeatureSchema
    readable_versions: frozenset[int]


class CatalogReloader(Poller):
    """Polls Redis and calls `on_change` with a freshly compiled snapshot when anything changed."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        metrics: Metrics,
        on_change: Callable[[LiveSnapshot], None],
        poll_seconds: float,
    ) -> None:
        self.client = client
        self.keys = keys
        self.metrics = metrics
        self.on_change = on_change
        self.poll_seconds = poll_seconds
        self._seen: tuple[int, int] | None = None

    async def check(self) -> bool:
        """Load a new snapshot if the pointers moved; True when one was swapped in."""
        seq_raw, schema_raw = await self.client.mget(self.keys.catalog_current, self.keys.schema_current)
        if seq_raw is None or schema_raw is None:
            return False
        pointers = (int(seq_raw), int(schema_raw))
        if pointers == self._seen:
            return False
        self._seen = pointers
        seq, schema_version = pointers
        raw_catalog = await self.client.get(self.keys.catalog(seq))
        raw_schemas = await self.client.mget([self.keys.schema(v) for v in range(1, schema_version + 1)])
        if raw_catalog is None or raw_schemas[-1] is None:
            log.error("catalog v%d or schema v%d missing from Redis", seq, schema_version)
            self.metrics.catalog_reloads.labels("failed").inc()
            return False
        text = json.loads(raw_catalog)["text"]
        schemas = [FeatureSchema.from_json(r) for r in raw_schemas if r is not None]
        schema = schemas[-1]
        try:
            catalog = await asyncio.to_thread(parse_catalog, text, schema, version=version_label(seq, text))
        except CatalogInvalid as err:
            # e.g. the schema changed under the catalog: keep serving the old snapshot
            log.error(
                "catalog v%d does not compile against schema v%d; keeping the old one:\n%s", seq, schema_version, err
            )
            self.metrics.catalog_reloads.labels("failed").inc()
            return False
        readable = frozenset(s.version for s in schemas if schema.extends(s))
        self.on_change(LiveSnapshot(catalog, schema, readable))
        self.metrics.catalog_reloads.labels("ok").inc()
        self.metrics.catalog_version.set(seq)
        log.info("serving catalog %s (feature schema v%d)", catalog.version, schema_version)
        return True
