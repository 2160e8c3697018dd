"""The export behind `nbo export`: the decision log joined with its outcomes, in the dataset schema.

One row per offer awarded by a non-degraded decision outside the universal control group whose
answer reached its caller (the customers the policy acted on; an undelivered award was spent but
nobody saw it), in the columns of `training/dataset.py` (docs/dataset.md), so
`nbo train` and `nbo ope` read real history the way they read the synthetic log:

* the customer's features as the decision used them, named and decoded (categorical codes back
  to level strings) with the feature schema version the decision read;
* the request context as `ctx_<key>` for every context key of the catalog versions involved;
* `selection_probability`: the probability the logging policy awarded the offer with;
* `outcome` = 1 when an ACCEPTED or CONVERTED outcome for that decision and offer arrived
  within the reward window after the decision, and `value` the reported value (else the
  offer's value in the catalog version the decision was made under) when it did.

Rewards may arrive up to the window after the decision, so a younger decision is *open*: its
0 may still become a 1. Open decisions are left out unless `--include-open`. Both streams are
at least once, so decisions are de-duplicated by decision id and outcomes by event id: a
redelivered or re-appended entry changes nothing.

Memory: the export streams, so a log of any length exports in bounded memory. It reads the
outcome stream once, keeping the rewarding outcomes in an on-disk index (training/export_index.py),
then the decision stream twice (XRANGE chunks): a first pass finds the columns (feature schemas and
context keys of the exported decisions), the second joins each decision with its rewards by index
lookup and hands `CHUNK_ROWS` rows at a time to the writer (training/dataset_writer.py). The
join needs no look-ahead and no ordering: an outcome logged any time after its decision, in any
chunk, even replayed from a spill file days later, is found. Held in memory: one chunk of rows,
the SQLite page cache (`CACHE_KIB`), the feature schemas and catalog versions involved, and with
`partitioned` at most `MAX_OPEN_PARTITIONS` open Parquet writers; none of it grows with the log.
The ids already read (de-duplication) are on disk too.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import redis
import yaml

from server.domain import RESPONSES
from server.features.schema import FeatureSchema
from server.pipeline.service import UNAVAILABLE_STATUSES
from server.state.catalog_store import CatalogNotStored, stored_catalog
from server.state.keys import Keys
from server.state.log_reader import LogReader
from server.state.records import DecisionRecord
from training.dataset import CONTEXT_PREFIX, FIXED_COLUMNS, UNAVAILABLE
from training.dataset_writer import FileWriter, PartitionedWriter
from training.export_index import ExportIndex

# a probability written as 1 + rounding error is 1; anything further above is a corrupt record
_PROBABILITY_SLACK = 1e-9
# rows held before they are written: with the SQLite index's cache, the export's memory bound
CHUNK_ROWS = 20_000


class ExportError(Exception):
    """The log cannot be exported as asked; the message names the decision or version."""


@dataclass(frozen=True, slots=True)
class ExportOptions:
    window_seconds: float = 30 * 86_400.0
    since: float | None = None  # decisions at or after this epoch time
    until: float | None = None  # decisions before this epoch time
    include_open: bool = False
    # None: a missing or zero probability is an error; else such (and smaller) ones become this
    min_probability: float | None = None
    # the time windows are judged at (default: now); outcomes logged later are ignored
    as_of: float | None = None


@dataclass(slots=True)
class ExportSummary:
    rows: int = 0
    decisions: int = 0
    accepted: int = 0
    open: int = 0
    control_group: int = 0
    degraded: int = 0
    undelivered: int = 0
    no_offer: int = 0
    outside_range: int = 0
    duplicate_decisions: int = 0
    duplicate_outcomes: int = 0
    late_rewards: int = 0  # rewarding outcomes of exported rows that arrived after the window
    clipped: int = 0
    unreadable: int = 0
    first_unreadable: str = ""
    columns: list[str] = field(default_factory=list)

    def line(self, out: Path, window_days: float) -> str:
        skipped = [
            f"{self.open:,} open (younger than the {window_days:g}-day reward window)",
            f"{self.control_group:,} control group",
            f"{self.degraded:,} degraded",
            f"{self.no_offer:,} without an offer",
        ]
        if self.undelivered:
            skipped.append(f"{self.undelivered:,} undelivered (the caller was gone)")
        if self.outside_range:
            skipped.append(f"{self.outside_range:,} outside --since/--until")
        duplicates = self.duplicate_decisions + self.duplicate_outcomes
        parts = [
            f"exported {_count(self.rows, 'row')} ({self.accepted:,} accepted) "
            f"from {_count(self.decisions, 'decision')} to {out}",
            "skipped " + ", ".join(skipped),
            f"ignored {_count(duplicates, 'duplicate entry', 'duplicate entries')} "
            f"and {_count(self.late_rewards, 'reward')} after the window",
        ]
        if self.clipped:
            parts.append(f"{_count(self.clipped, 'probability', 'probabilities')} raised to --min-probability")
        if self.unreadable:
            parts.append(
                f"{_count(self.unreadable, 'unreadable entry', 'unreadable entries')} (first: {self.first_unreadable})"
            )
        return "; ".join(parts)


def _count(n: int, one: str, many: str = "") -> str:
    return f"{n:,} {one if n == 1 else many or one + 's'}"


@dataclass(frozen=True, slots=True)
class _CatalogInfo:
    offer_values: Mapping[str, float]
    context_keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Row:
    record: DecisionRecord
    offer_id: str
    selection_probability: float
    outcome: int
    value: float
    features: Mapping[str, float | str | None]
    clipped: bool  # the logged probability was missing or below --min-probability
    late_rewards: int  # rewarding outcomes that arrived after the window


class _Versions:
    """Feature schemas and catalog versions read from Redis once each (every record names its own)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._schemas: dict[int, FeatureSchema] = {}
        self._catalogs: dict[str, _CatalogInfo] = {}

    def schema(self, version: int, decision_id: str) -> FeatureSchema:
        if version not in self._schemas:
            raw: Any = self.client.get(self.keys.schema(version))
            if raw is None:
                raise ExportError(f"decision {decision_id}: feature schema v{version} is not in Redis")
            self._schemas[version] = FeatureSchema.from_json(raw)
        return self._schemas[version]

    def catalog(self, version: str, decision_id: str) -> _CatalogInfo:
        if version not in self._catalogs:
            try:
                stored = stored_catalog(self.client, self.keys, version)
            except CatalogNotStored:
                raise ExportError(
                    f"decision {decision_id}: catalog version {version!r} is not stored in Redis"
                ) from None
            # the YAML, not the compiled catalog: its offers' values and context keys are all the
            # export needs, and they read even where a later feature schema no longer compiles it
            doc = yaml.safe_load(stored.text) or {}
            self._catalogs[version] = _CatalogInfo(
                offer_values={str(o["id"]): float(o.get("value", 0.0)) for o in doc.get("offers") or ()},
                context_keys=tuple(str(k) for k in doc.get("context_keys") or ()),
            )
        return self._catalogs[version]


def export_log(
    client: redis.Redis, keys: Keys, out: Path, options: ExportOptions, *, partitioned: bool = False
) -> ExportSummary:
    """Write the dataset to `out` (.csv or .parquet, or with `partitioned` a directory of date
    partitions) and say what was exported and skipped.

    Streams the log (module doc, "Memory"): writes nothing when no row qualifies. Raises
    ExportError when a record cannot be turned into a valid row (unknown schema or catalog
    version, missing selection probability); then nothing is written either.
    """
    now = time.time() if options.as_of is None else options.as_of
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as scratch:
        index = ExportIndex(Path(scratch) / "index.sqlite")
        try:
            reader = LogReader(client, keys, seen=index.seen_ids)
            index.add_rewards(_rewards(reader, options))
            versions = _Versions(client, keys)
            layout = _layout(reader, versions, options, now)
            writer = PartitionedWriter(out) if partitioned else FileWriter(out)
            try:
                summary = _write_rows(reader, index, versions, layout, writer, options, now)
            except BaseException:
                writer.abort()
                raise
            if summary.rows:
                writer.commit()
            else:
                writer.abort()
        finally:
            index.close()
    return summary


@dataclass(frozen=True, slots=True)
class _Layout:
    """The dataset's columns beyond the fixed ones, known before the first chunk is written."""

    feature_kinds: dict[str, str]  # name -> kind, in first-seen order
    context_keys: list[str]


def _layout(reader: LogReader, versions: _Versions, options: ExportOptions, now: float) -> _Layout:
    """A first pass over the decisions: every chunk is written with the columns of the whole export."""
    kinds: dict[str, str] = {}
    context_keys: dict[str, None] = {}
    for rec in reader.decisions():
        if _skipped(rec, options, now) is None:
            context_keys.update(dict.fromkeys(versions.catalog(rec.catalog_version, rec.decision_id).context_keys))
            _features(rec, versions, kinds)
    return _Layout(kinds, list(context_keys))


def _write_rows(
    reader: LogReader,
    index: ExportIndex,
    versions: _Versions,
    layout: _Layout,
    writer: FileWriter | PartitionedWriter,
    options: ExportOptions,
    now: float,
) -> ExportSummary:
    """The second pass: rows joined with their rewards, written CHUNK_ROWS at a time."""
    summary = ExportSummary()
    rows: list[_Row] = []
    for rec in reader.decisions():
        skipped = _skipped(rec, options, now)
        if skipped is not None:
            setattr(summary, skipped, getattr(summary, skipped) + 1)
            continue
        catalog = versions.catalog(rec.catalog_version, rec.decision_id)
        features = _features(rec, versions, layout.feature_kinds)
        rewards = index.rewards(rec.decision_id)
        summary.decisions += 1
        for offer_id in rec.chosen:
            row = _row(rec, offer_id, features, catalog, rewards.get(offer_id, []), options)
            summary.accepted += row.outcome
            summary.clipped += row.clipped
            summary.late_rewards += row.late_rewards
            rows.append(row)
        if len(rows) >= CHUNK_ROWS:
            summary.rows += len(rows)
            writer.write(_columns(rows, layout.feature_kinds, layout.context_keys))
            rows.clear()
    if rows:
        summary.rows += len(rows)
        writer.write(_columns(rows, layout.feature_kinds, layout.context_keys))
    decisions, outcomes = reader.decision_stats, reader.outcome_stats
    summary.duplicate_decisions, summary.duplicate_outcomes = decisions.duplicates, outcomes.duplicates
    summary.unreadable = decisions.unreadable + outcomes.unreadable
    summary.first_unreadable = outcomes.first_unreadable or decisions.first_unreadable  # outcomes are read first
    summary.columns = [
        *FIXED_COLUMNS,
        UNAVAILABLE,
        *layout.feature_kinds,
        *(CONTEXT_PREFIX + k for k in layout.context_keys),
    ]
    return summary


def _skipped(rec: DecisionRecord, options: ExportOptions, now: float) -> str | None:
    """The ExportSummary count a decision that gives no row falls under; None when it gives rows."""
    if (options.since is not None and rec.ts < options.since) or (
        options.until is not None and rec.ts >= options.until
    ):
        return "outside_range"
    if rec.degraded:
        return "degraded"
    if rec.undelivered:
        return "undelivered"
    if rec.control_group:
        return "control_group"
    if not rec.chosen:
        return "no_offer"
    if not options.include_open and now - rec.ts < options.window_seconds:
        return "open"
    return None


def _rewards(reader: LogReader, options: ExportOptions) -> Iterator[tuple[str, str, float, float]]:
    """(decision, offer, ts, value) of each rewarding outcome, each event once."""
    for rec in reader.outcomes():
        if rec.outcome not in RESPONSES or (options.as_of is not None and rec.ts > options.as_of):
            continue
        value = rec.value if math.isfinite(rec.value) and rec.value > 0 else 0.0
        yield rec.decision_id, rec.offer_id, rec.ts, value


def _logged_probability(rec: DecisionRecord, offer_id: str) -> float:
    cands = rec.candidates
    try:
        return cands.selection_probability[cands.offer_id.index(offer_id)]
    except ValueError:  # the offer is not among the logged candidates
        return math.nan


def _row(
    rec: DecisionRecord,
    offer_id: str,
    features: Mapping[str, float | str | None],
    catalog: _CatalogInfo,
    rewards: list[tuple[float, float]],
    options: ExportOptions,
) -> _Row:
    p = _logged_probability(rec, offer_id)
    # NaN (missing) fails both comparisons
    valid = p > 0 and p <= 1 + _PROBABILITY_SLACK
    if not valid and (options.min_probability is None or p > 1):
        shown = "missing" if math.isnan(p) else f"{p:g}"
        raise ExportError(
            f"decision {rec.decision_id}: offer {offer_id} has selection probability {shown}, not in (0, 1]; "
            "--min-probability P exports missing and smaller probabilities as P"
        )
    clipped = options.min_probability is not None and not (p >= options.min_probability)
    p = options.min_probability if clipped and options.min_probability is not None else min(p, 1.0)
    in_window = [value for ts, value in rewards if ts - rec.ts <= options.window_seconds]
    value = 0.0
    if in_window:
        # ACCEPTED then CONVERTED are one response: the largest reported value, not a sum
        value = max(in_window) or catalog.offer_values.get(offer_id, 0.0)
    return _Row(rec, offer_id, p, int(bool(in_window)), value, features, clipped, len(rewards) - len(in_window))


def _features(rec: DecisionRecord, versions: _Versions, kinds: dict[str, str]) -> Mapping[str, float | str | None]:
    """The decision's feature vector by name; categorical codes as level strings, missing = None/NaN."""
    if rec.schema_version is None or rec.features is None:
        return {}  # an unknown customer: every feature is missing
    schema = versions.schema(rec.schema_version, rec.decision_id)
    if len(schema.features) != len(rec.features):
        raise ExportError(
            f"decision {rec.decision_id}: {len(rec.features)} feature values for the "
            f"{len(schema.features)} features of schema v{schema.version}"
        )
    out: dict[str, float | str | None] = {}
    for spec, value in zip(schema.features, rec.features, strict=True):
        known = kinds.setdefault(spec.name, spec.kind)
        if known != spec.kind:
            raise ExportError(
                f"decision {rec.decision_id}: feature {spec.name!r} is {spec.kind} in schema v{schema.version} "
                f"but {known} in an earlier one; export the two periods separately (--since/--until)"
            )
        if spec.kind == "categorical":
            code = -1 if math.isnan(value) else int(value)
            out[spec.name] = spec.levels[code] if 0 <= code < len(spec.levels) else None
        else:
            out[spec.name] = value
    return out


def _unavailable(rec: DecisionRecord) -> str:
    """The offers a control group, the contact policy or a budget kept from the customer."""
    cands = rec.candidates
    return " ".join(o for o, s in zip(cands.offer_id, cands.status, strict=True) if s.startswith(UNAVAILABLE_STATUSES))


def _columns(rows: list[_Row], kinds: Mapping[str, str], context_keys: list[str]) -> dict[str, Any]:
    recs = [r.record for r in rows]
    cols: dict[str, Any] = {
        "decision_id": [r.decision_id for r in recs],
        "timestamp": np.array([r.ts for r in recs], dtype=float),
        "customer_id": [r.customer_id for r in recs],
        "channel": [r.channel for r in recs],
        "placement": [r.placement for r in recs],
        "offer_id": [r.offer_id for r in rows],
        "selection_probability": np.array([r.selection_probability for r in rows], dtype=float),
        "outcome": np.array([r.outcome for r in rows], dtype=np.int64),
        "value": np.array([r.value for r in rows], dtype=float),
        UNAVAILABLE: [_unavailable(r) for r in recs],
    }
    for name, kind in kinds.items():
        if kind == "categorical":
            # typed explicitly: a column missing everywhere must still read back as text
            cols[name] = pa.array([r.features.get(name) for r in rows], type=pa.string())
        else:
            cols[name] = np.array([r.features.get(name, math.nan) for r in rows], dtype=float)
    for key in context_keys:
        cols[CONTEXT_PREFIX + key] = np.array([r.context.get(key, math.nan) for r in recs], dtype=float)
    return cols
