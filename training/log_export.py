"""`nbo export`: the decision log joined with its outcomes, in the training dataset schema.

One row per offer awarded by a non-degraded decision outside the universal control group (the
customers who met the policy), with the customer's features as they were used (decoded with the
feature schema version the decision read), the request context as `ctx_<key>` columns, the
probability the offer was awarded with, and the reward: `outcome` = 1 when an ACCEPTED or
CONVERTED outcome for that decision and offer arrived within the reward window after the
decision. Decisions younger than the window may still get their reward; they are left out
unless `--include-open`. The streams are read at least once: decisions are de-duplicated by
decision id and outcomes by event id, so a redelivered entry changes nothing.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
import yaml

from server.keys import Keys
from server.schema import FeatureSchema
from training.dataset import CONTEXT_PREFIX, write_dataset

REWARDED = {"accepted", "converted"}
CHUNK = 10_000


def stream_records(client: redis.Redis, stream: str) -> Iterator[dict[str, Any]]:
    """Every record of a log stream, oldest first, read in chunks."""
    start = "-"
    while True:
        entries: Any = client.xrange(stream, min=start, count=CHUNK)
        if not entries:
            return
        for _, fields in entries:
            yield json.loads(fields[b"r"])
        last = entries[-1][0].decode()
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"


@dataclass
class ExportSummary:
    rows: int = 0
    decisions: int = 0
    accepted: int = 0
    open: int = 0
    control_group: int = 0
    degraded: int = 0
    no_offer: int = 0
    duplicates: int = 0
    columns: list[str] = field(default_factory=list)

    def line(self, path: Path) -> str:
        return (
            f"wrote {self.rows:,} rows ({self.accepted:,} accepted) from {self.decisions:,} decisions to {path}; "
            f"left out: {self.open:,} still inside the reward window, {self.control_group:,} control group, "
            f"{self.degraded:,} degraded, {self.no_offer:,} without an offer; {self.duplicates:,} duplicate entries"
        )


class _Catalogs:
    """Offer values per stored catalog version (for the value of an accepted offer)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._values: dict[str, dict[str, float]] = {}

    def value(self, version: str, offer_id: str) -> float:
        if version not in self._values:
            raw = self.client.get(self.keys.catalog(int(version.split("-", maxsplit=1)[0]))) if version else None
            offers = yaml.safe_load(json.loads(raw)["text"]).get("offers", []) if raw else []
            self._values[version] = {o["id"]: float(o.get("value", 0.0)) for o in offers}
        return self._values[version].get(offer_id, 0.0)


def export(
    client: redis.Redis,
    keys: Keys,
    out: Path,
    *,
    window_seconds: float,
    include_open: bool = False,
    now: float | None = None,
) -> ExportSummary:
    now = time.time() if now is None else now
    summary = ExportSummary()
    rewards: dict[tuple[str, str], tuple[float, float]] = {}  # first rewarding outcome: (ts, value)
    seen_events: set[str] = set()
    for rec in stream_records(client, keys.outcome_stream):
        if rec["event_id"] in seen_events:
            summary.duplicates += 1
            continue
        seen_events.add(rec["event_id"])
        if rec["outcome"] in REWARDED:
            key = (rec["decision_id"], rec["offer_id"])
            if key not in rewards or rec["ts"] < rewards[key][0]:
                rewards[key] = (float(rec["ts"]), float(rec.get("value") or 0.0))
    schemas: dict[int, FeatureSchema | None] = {}
    catalogs = _Catalogs(client, keys)
    rows: list[dict[str, Any]] = []
    feature_names: dict[str, None] = {}
    context_keys: dict[str, None] = {}
    seen: set[str] = set()
    for rec in stream_records(client, keys.decision_stream):
        if rec["decision_id"] in seen:
            summary.duplicates += 1
            continue
        seen.add(rec["decision_id"])
        if rec.get("degraded"):
            summary.degraded += 1
            continue
        if rec.get("control_group"):
            summary.control_group += 1
            continue
        if not rec["chosen"]:
            summary.no_offer += 1
            continue
        if not include_open and now - rec["ts"] < window_seconds:
            summary.open += 1
            continue
        summary.decisions += 1
        features = _features(client, keys, schemas, rec)
        for name in features:
            feature_names.setdefault(name)
        for key in rec["context"]:
            context_keys.setdefault(key)
        cands = rec["candidates"]
        probability = dict(zip(cands["offer_id"], cands["selection_probability"], strict=True))
        for offer_id in rec["chosen"]:
            reward = rewards.get((rec["decision_id"], offer_id))
            accepted = reward is not None and reward[0] - rec["ts"] <= window_seconds
            value = 0.0
            if accepted and reward is not None:
                value = reward[1] if reward[1] > 0 else catalogs.value(rec["catalog_version"], offer_id)
            summary.accepted += accepted
            rows.append(
                {
                    "decision_id": rec["decision_id"],
                    "timestamp": float(rec["ts"]),
                    "customer_id": rec["customer_id"],
                    "channel": rec["channel"],
                    "placement": rec["placement"],
                    "offer_id": offer_id,
                    "selection_probability": float(probability.get(offer_id, 1.0)),
                    "outcome": int(accepted),
                    "value": value,
                    "features": features,
                    "context": rec["context"],
                }
            )
    summary.rows = len(rows)
    columns = _columns(rows, list(feature_names), sorted(context_keys))
    summary.columns = list(columns)
    if rows:
        write_dataset(out, columns)
    return summary


def _features(
    client: redis.Redis, keys: Keys, schemas: dict[int, FeatureSchema | None], rec: dict[str, Any]
) -> dict[str, Any]:
    version, values = rec.get("schema_version"), rec.get("features")
    if version is None or values is None:
        return {}
    if version not in schemas:
        raw = client.get(keys.schema(version))
        schemas[version] = FeatureSchema.from_json(raw) if raw is not None else None
    schema = schemas[version]
    if schema is None:
        return {}
    out: dict[str, Any] = {}
    for spec, value in zip(schema.features, values, strict=False):
        if spec.kind == "categorical":
            code = None if value is None else int(value)
            out[spec.name] = spec.levels[code] if code is not None and 0 <= code < len(spec.levels) else ""
        else:
            out[spec.name] = math.nan if value is None else float(value)
    return out


def _columns(rows: list[dict[str, Any]], features: list[str], context: list[str]) -> dict[str, Any]:
    fixed = (
        "decision_id",
        "timestamp",
        "customer_id",
        "channel",
        "placement",
        "offer_id",
        "selection_probability",
        "outcome",
        "value",
    )
    cols: dict[str, Any] = {name: [r[name] for r in rows] for name in fixed}
    for name in features:
        values = [r["features"].get(name, math.nan) for r in rows]
        text = any(isinstance(v, str) for v in values)
        cols[name] = [v if isinstance(v, str) else "" for v in values] if text else np.asarray(values, dtype=float)
    for key in context:
        cols[CONTEXT_PREFIX + key] = np.asarray([r["context"].get(key, math.nan) for r in rows], dtype=float)
    return cols
