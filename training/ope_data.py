"""Inputs of `nbo ope`: the logged dataset, the feature schema, the current catalog's candidates
and model artifacts scored exactly as the server scores them.

The log is read with `training.dataset.read_dataset`, except that rows whose
`selection_probability` is missing or 0 are kept (with NaN) so that the estimators can skip and
count them instead of rejecting the whole file.

Candidates of a logged row are what the *current* catalog would consider for it, decided by the
server's own eligibility function (server.pipeline.eligibility) on the row's features, context
and timestamp: the offers on the row's channel whose campaign is live, with channel consent, in
a target segment and passing the offer's eligibility rule. Trigger campaigns count as fired (the
dataset keeps no events; training.world logs the same way). Contact policy, budgets, capacity and
control groups depend on history that the dataset does not hold: where the log has the
`unavailable` column (`nbo export` writes it), the offers it names for a row (blocked then by
contact policy, a campaign control group or a budget) are removed from that row's candidates;
without it they are not applied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from server.catalog.compiled import Catalog
from server.catalog.compiler import parse_catalog
from server.catalog.spec import CatalogInvalid
from server.domain import Channel
from server.features.schema import FeatureSchema, FeatureSpec
from server.models.inputs import InputSpec, OfferAttributes, build_rows
from server.pipeline.eligibility import eligibility
from training.dataset import (
    CONTEXT_PREFIX,
    CSV_SUFFIXES,
    PARQUET_SUFFIXES,
    UNAVAILABLE,
    DatasetError,
    categorical_columns,
    context_columns,
    feature_columns,
    read_dataset,
)

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Str = npt.NDArray[np.str_]

__all__ = ["Candidates", "LoggedData", "OpeInputError", "Rules", "ScoringModel", "feature_schema", "read_log"]


class OpeInputError(ValueError):
    """Bad input to `nbo ope`; the message names the file and, where it applies, line and column."""


# -- the log -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoggedData:
    """The logged dataset as arrays, one entry per row (= per logged decision and offer)."""

    table: pa.Table
    source: str
    csv: bool  # row locations are CSV lines (header = line 1), else Parquet rows
    decision_id: Str
    customer_id: Str
    channel: Str
    placement: Str
    offer_id: Str
    timestamp: F64
    mu: F64  # logged selection probability; NaN where missing or 0 in the file
    outcome: F64
    value: F64
    # per row, offers blocked at decision time by what the rules cannot rebuild; None: not logged
    unavailable: tuple[frozenset[str], ...] | None = None

    @classmethod
    def from_table(cls, table: pa.Table, *, source: str = "log", csv: bool = True, mu: F64 | None = None) -> LoggedData:
        def text(name: str) -> Str:
            return np.asarray(table.column(name).to_pylist(), dtype=np.str_)

        def number(name: str) -> F64:
            return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)

        return cls(
            table=table,
            source=source,
            csv=csv,
            decision_id=text("decision_id"),
            customer_id=text("customer_id"),
            channel=text("channel"),
            placement=text("placement"),
            offer_id=text("offer_id"),
            timestamp=number("timestamp"),
            mu=number("selection_probability") if mu is None else mu,
            outcome=number("outcome"),
            value=number("value"),
            unavailable=(
                tuple(frozenset((v or "").split()) for v in table.column(UNAVAILABLE).to_pylist())
                if UNAVAILABLE in table.column_names
                else None
            ),
        )

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def where(self, i: int) -> str:
        """`file line N` / `file row N` of 0-based row `i`."""
        return f"{self.source} line {i + 2}" if self.csv else f"{self.source} row {i + 1}"

    def contexts(self) -> list[dict[str, float]]:
        """Per row, the context keys present (missing context is absent, as in a request)."""
        out: list[dict[str, float]] = [{} for _ in range(len(self))]
        for name in context_columns(self.table):
            key = name[len(CONTEXT_PREFIX) :]
            arr = np.asarray(self.table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)
            for i in np.flatnonzero(~np.isnan(arr)).tolist():
                out[i][key] = float(arr[i])
        return out

    def vectors(self, schema: FeatureSchema) -> F32:
        """(rows, features) in the feature store's encoding: float32, categorical = level index."""
        out = np.full((len(self), len(schema.features)), np.nan, dtype=np.float32)
        names = set(self.table.column_names)
        for j, f in enumerate(schema.features):
            if f.name not in names:
                continue
            col = self.table.column(f.name)
            if f.kind == "categorical":
                if not pa.types.is_string(col.type):
                    col = col.cast(pa.string())
                idx = pc.index_in(col, value_set=pa.array(list(f.levels), type=pa.string()))
                out[:, j] = np.asarray(idx.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
            else:
                if not pa.types.is_floating(col.type):
                    raise OpeInputError(f"{self.source}: feature column {f.name!r} is text but numeric in the schema")
                out[:, j] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        return out


def read_log(path: Path | str) -> LoggedData:
    """Read and check a dataset (docs/dataset.md); missing or zero probabilities become NaN."""
    path = Path(path)
    csv = path.suffix.lower() in CSV_SUFFIXES
    try:
        return LoggedData.from_table(read_dataset(path), source=str(path), csv=csv)
    except DatasetError as err:
        if "'selection_probability'" not in str(err):
            raise OpeInputError(str(err)) from None
    raw = _read_raw(path, csv)
    col = raw.column("selection_probability")
    if pa.types.is_null(col.type):
        mu = np.full(raw.num_rows, np.nan)
    elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        mu = np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    else:
        mu = np.zeros(0)  # text: let the dataset check report the offending line
    if mu.size:
        mu = np.where(mu == 0.0, np.nan, mu)
        patched = raw.set_column(
            raw.column_names.index("selection_probability"),
            "selection_probability",
            pa.array(np.where(np.isnan(mu), 1.0, mu), type=pa.float64()),
        )
    else:
        patched = raw
    # the same checks as read_dataset on everything else (private: it takes a table, not a path)
    from training.dataset import _check

    try:
        table = _check(patched, path, csv)
    except DatasetError as err:
        raise OpeInputError(str(err)) from None
    return LoggedData.from_table(table, source=str(path), csv=csv, mu=mu if mu.size else None)


def _read_raw(path: Path, csv: bool) -> pa.Table:
    if csv:
        from training.dataset import _read_csv  # text columns typed as read_dataset types them

        return _read_csv(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return pq.read_table(str(path))
    raise OpeInputError(f"{path}: unsupported file type")  # pragma: no cover - read_dataset said so first


# -- the feature schema ------------------------------------------------------------------------
def feature_schema(
    log: LoggedData, *, features: Path | None = None, models: Sequence[tuple[str, InputSpec]] = ()
) -> FeatureSchema:
    """The schema rules and models read the log's features with.

    With `features` (the customer file loaded into the servers) its schema, levels in the order
    `nbo features load` gives them; otherwise the log's feature columns, categorical levels as a
    model given on the command line knows them, then the log's other values sorted. Each model's
    levels must be a prefix of the schema's: the level codes are what it was trained on.
    """
    if features is not None:
        from server.features.file import merged_schema, read_feature_file

        try:
            table = read_feature_file(features, categorical_columns(log.table))
        except (OSError, ValueError) as err:
            raise OpeInputError(f"--features {features}: {err}") from None
        if table.errors:
            first = table.errors[0]
            raise OpeInputError(f"--features {features}: {first}")
        schema = merged_schema(table, None)
    else:
        known: dict[str, tuple[str, ...]] = {}
        for _, spec in models:
            for c in spec.columns:
                if c.source == "feature" and c.categorical:
                    known.setdefault(c.name, c.levels)
        cats = set(categorical_columns(log.table))
        specs = []
        for name in feature_columns(log.table):
            if name in cats:
                seen = sorted(v for v in pc.unique(log.table.column(name)).to_pylist() if v)
                levels = known.get(name, ())
                specs.append(FeatureSpec(name, "categorical", levels + tuple(v for v in seen if v not in set(levels))))
            else:
                specs.append(FeatureSpec(name, "numeric"))
        schema = FeatureSchema(1, tuple(specs))
    for label, spec in models:
        for c in spec.columns:
            if c.source != "feature":
                continue
            live = schema.spec(c.name)
            if live is None:
                continue  # scored as missing (NaN), as the server would with an absent feature
            if (live.kind == "categorical") != c.categorical:
                raise OpeInputError(f"{label}: feature {c.name!r} is {live.kind} in the log but not in the model")
            if c.categorical and live.levels[: len(c.levels)] != c.levels:
                raise OpeInputError(
                    f"{label}: feature {c.name!r} has levels {list(c.levels)} in the model but "
                    f"{list(live.levels)} in the feature schema; the level codes would not match"
                )
    return schema


# -- the current catalog's candidates ----------------------------------------------------------
@dataclass(frozen=True)
class Candidates:
    """Per row, the candidate offers (entries sorted by row; a row without any has no entry)."""

    row: I64
    position: I64  # position in catalog.views[channel of the row]
    offer_id: Str

    def bounds(self, n: int) -> I64:
        """Entries of row i are bounds[i]:bounds[i + 1]."""
        out: I64 = np.searchsorted(self.row, np.arange(n + 1)).astype(np.int64)
        return out


@dataclass(frozen=True)
class Rules:
    """The current catalog applied to the log's rows."""

    catalog: Catalog
    schema: FeatureSchema
    vectors: F32
    contexts: list[dict[str, float]]
    candidates: Candidates

    @classmethod
    def load(cls, log: LoggedData, catalog_path: Path, schema: FeatureSchema) -> Rules:
        try:
            text = catalog_path.read_text()
        except OSError as err:
            raise OpeInputError(f"--catalog {catalog_path}: {err.strerror}") from None
        try:
            catalog = parse_catalog(text, schema)
        except CatalogInvalid as err:
            raise OpeInputError(err.format_all(str(catalog_path))) from None
        vectors = log.vectors(schema)
        contexts = log.contexts()
        return cls(catalog, schema, vectors, contexts, _candidates(catalog, log, vectors, contexts))


def _candidates(catalog: Catalog, log: LoggedData, vectors: F32, contexts: list[dict[str, float]]) -> Candidates:
    rows: list[int] = []
    positions: list[int] = []
    ids: list[str] = []
    features = vectors.tolist()
    for i in range(len(log)):
        ch = Channel(str(log.channel[i]))
        view = catalog.views[ch]
        if not view.offers:
            continue
        # the server's eligibility; what a dataset row cannot know is passed as unknown: every
        # trigger counts as fired, control groups and contact history are not applied
        eligible = eligibility(
            catalog,
            ch,
            features[i],
            contexts[i],
            float(log.timestamp[i]),
            events=None,
            customer_id=None,
            history=None,
            segments={},
        )
        if eligible is None:
            continue  # no consent on the channel
        alive = eligible.status.alive().tolist()
        if log.unavailable is not None and log.unavailable[i]:
            blocked = log.unavailable[i]
            alive = [pos for pos in alive if view.offer_ids[pos] not in blocked]
        for pos in alive:
            rows.append(i)
            positions.append(pos)
            ids.append(view.offer_ids[pos])
    return Candidates(
        np.asarray(rows, dtype=np.int64), np.asarray(positions, dtype=np.int64), np.asarray(ids, dtype=np.str_)
    )


# -- model artifacts ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoringModel:
    """A model artifact directory (`nbo train --out DIR`) scored with LightGBM's Booster."""

    label: str
    version: str
    spec: InputSpec
    booster: Any  # lightgbm.Booster

    @classmethod
    def load(cls, directory: Path, label: str) -> ScoringModel:
        import lightgbm

        from server.models.registry import ModelRejected, read_artifact, verify_scores

        try:
            artifact = read_artifact(directory)
            booster = lightgbm.Booster(model_str=artifact.model_text)
            # the artifact's reference rows must score as at training: same model, same inputs
            verify_scores(artifact, lambda rows: booster.predict(rows, num_threads=1))
        except ModelRejected as err:
            raise OpeInputError(f"{label}: {err}") from None
        except lightgbm.basic.LightGBMError as err:
            raise OpeInputError(f"{label}: {directory}/model.txt does not load: {err}") from None
        return cls(label, artifact.version, artifact.spec, booster)

    def score(self, rules: Rules, log: LoggedData, row: I64, offer_id: Str) -> F64:
        """P(accept) of each (row, offer) pair, as the server's ModelScorer computes it: one
        build_rows matrix per decision; offers the model never saw get their catalog prior."""
        catalog = rules.catalog
        known = frozenset(self.spec.offer_levels())
        out = np.full(row.size, np.nan)
        order = np.argsort(row, kind="stable")
        sorted_rows = row[order]
        starts = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]]) if row.size else np.zeros(0, int)
        ends = np.r_[starts[1:], row.size] if row.size else np.zeros(0, int)
        blocks: list[F64] = []
        targets: list[npt.NDArray[np.intp]] = []
        pending = 0
        attrs = _offer_attributes(catalog)

        def flush() -> None:
            # one predict call per chunk: fast, and memory stays bounded on large logs
            p = self.booster.predict(np.vstack(blocks), num_threads=0)  # 0: all cores
            out[np.concatenate(targets)] = np.asarray(p, dtype=np.float64)
            blocks.clear()
            targets.clear()

        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            idx = order[s:e]
            i = int(sorted_rows[s])
            ids = [str(o) for o in offer_id[idx]]
            prior = np.array([attrs.get(o, _NO_OFFER)[2] for o in ids])
            out[idx] = prior
            mask = np.fromiter((o in known for o in ids), dtype=np.bool_, count=len(ids))
            if not mask.any():
                continue
            sel = [o for o, m in zip(ids, mask.tolist(), strict=True) if m]
            a = [attrs.get(o, _NO_OFFER) for o in sel]
            blocks.append(
                build_rows(
                    self.spec,
                    rules.schema,
                    rules.vectors[i],
                    rules.contexts[i],
                    str(log.channel[i]),
                    OfferAttributes(
                        offer_ids=sel,
                        value=np.array([x[0] for x in a]),
                        cost=np.array([x[1] for x in a]),
                        prior=np.array([x[2] for x in a]),
                        campaign_type=[x[3] for x in a],
                    ),
                )
            )
            targets.append(idx[mask])
            pending += int(mask.sum())
            if pending >= PREDICT_CHUNK:
                flush()
                pending = 0
        if blocks:
            flush()
        return out


_NO_OFFER = (math.nan, math.nan, math.nan, "")
PREDICT_CHUNK = 100_000  # model rows per predict call


def _offer_attributes(catalog: Catalog) -> dict[str, tuple[float, float, float, str]]:
    """Offer id -> (value, cost, prior, campaign type) from the catalog."""
    return {
        o.id: (o.value, o.cost, o.prior_propensity, catalog.campaigns[o.campaign].type.value) for o in catalog.offers
    }
