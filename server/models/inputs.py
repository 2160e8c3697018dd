"""The propensity model's input columns, shared by training and serving so both build the same rows.

A model sees one row per (customer, offer, channel, context). Its columns, in order:

* customer features, named as in the feature schema (categorical ones as level index);
* request context, named `ctx_<key>` (missing = NaN);
* `offer_id` and `channel`, categorical;
* offer attributes from the catalog: `offer_value`, `offer_cost`, `offer_prior`,
  `campaign_type` (categorical).

`InputSpec` records, per column, where its value comes from and, for categoricals, the level
list the model was trained with; it is stored in the model artifact's metadata. Serving builds
the matrix for all candidates of a decision with `build_rows` in one vectorised step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import numpy.typing as npt

from server.features.schema import FeatureSchema

Source = Literal[
    "feature", "context", "offer_id", "channel", "offer_value", "offer_cost", "offer_prior", "campaign_type"
]
# request context `k` is input column `ctx_k`, here and in the training dataset (training.dataset)
CONTEXT_PREFIX = "ctx_"
OFFER_COLUMNS: tuple[Source, ...] = ("offer_id", "channel", "offer_value", "offer_cost", "offer_prior", "campaign_type")
CATEGORICAL_SOURCES = frozenset({"offer_id", "channel", "campaign_type"})


@dataclass(frozen=True, slots=True)
class InputColumn:
    name: str
    source: Source
    categorical: bool = False
    levels: tuple[str, ...] = ()  # categorical levels in the order of their codes


@dataclass(frozen=True, slots=True)
class OfferAttributes:
    """Per-candidate attributes, aligned with the candidate list of one decision."""

    offer_ids: Sequence[str]
    value: npt.NDArray[np.float64]
    cost: npt.NDArray[np.float64]
    prior: npt.NDArray[np.float64]
    campaign_type: Sequence[str]


@dataclass(frozen=True)
class InputSpec:
    columns: tuple[InputColumn, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def categorical_indices(self) -> list[int]:
        return [i for i, c in enumerate(self.columns) if c.categorical]

    @cached_property
    def level_index(self) -> dict[int, dict[str, int]]:
        """Column position -> {level: code} of each categorical column, built once per spec."""
        return {j: {v: i for i, v in enumerate(c.levels)} for j, c in enumerate(self.columns) if c.categorical}

    def offer_levels(self) -> tuple[str, ...]:
        return next((c.levels for c in self.columns if c.source == "offer_id"), ())

    def feature_names(self) -> list[str]:
        return [c.name for c in self.columns if c.source == "feature"]

    def schema_hash(self) -> str:
        """Hash of the customer-feature part, compared with the live feature schema's."""
        cols = [(c.name, c.categorical, list(c.levels)) for c in self.columns if c.source == "feature"]
        return hashlib.sha256(json.dumps(cols).encode()).hexdigest()[:16]

    def to_json(self) -> list[dict[str, object]]:
        return [
            {"name": c.name, "source": c.source, "categorical": c.categorical, "levels": list(c.levels)}
            for c in self.columns
        ]

    @classmethod
    def from_json(cls, data: Sequence[Mapping[str, object]]) -> InputSpec:
        return cls(
            tuple(
                InputColumn(
                    name=str(d["name"]),
                    source=d["source"],  # type: ignore[arg-type]
                    categorical=bool(d["categorical"]),
                    levels=tuple(str(x) for x in d.get("levels", ()) or ()),  # type: ignore[attr-defined]
                )
                for d in data
            )
        )


def spec_for(
    schema: FeatureSchema,
    context_keys: Sequence[str],
    offer_ids: Sequence[str],
    channels: Sequence[str],
    campaign_types: Sequence[str],
) -> InputSpec:
    """The input spec of a model over `schema`'s features, these context keys and offers."""
    cols = [InputColumn(f.name, "feature", f.kind == "categorical", f.levels) for f in schema.features]
    cols += [InputColumn(CONTEXT_PREFIX + k, "context") for k in context_keys]
    cols += [
        InputColumn("offer_id", "offer_id", True, tuple(offer_ids)),
        InputColumn("channel", "channel", True, tuple(channels)),
        InputColumn("offer_value", "offer_value"),
        InputColumn("offer_cost", "offer_cost"),
        InputColumn("offer_prior", "offer_prior"),
        InputColumn("campaign_type", "campaign_type", True, tuple(campaign_types)),
    ]
    return InputSpec(tuple(cols))


def _codes(index: Mapping[str, int], values: Sequence[str]) -> npt.NDArray[np.float64]:
    return np.array([index.get(v, np.nan) for v in values], dtype=np.float64)


def build_rows(
    spec: InputSpec,
    schema: FeatureSchema,
    customer: npt.NDArray[np.float32],
    context: Mapping[str, float],
    channel: str,
    offers: OfferAttributes,
) -> npt.NDArray[np.float64]:
    """The model matrix for one decision: one row per candidate offer."""
    n = len(offers.offer_ids)
    out = np.empty((n, len(spec.columns)), dtype=np.float64)
    for j, col in enumerate(spec.columns):
        if col.source == "feature":
            i = schema.index(col.name)
            out[:, j] = np.nan if i is None else customer[i]
        elif col.source == "context":
            out[:, j] = context.get(col.name[len(CONTEXT_PREFIX) :], np.nan)
        elif col.source == "offer_id":
            out[:, j] = _codes(spec.level_index[j], offers.offer_ids)
        elif col.source == "channel":
            out[:, j] = _codes(spec.level_index[j], [channel])[0]
        elif col.source == "offer_value":
            out[:, j] = offers.value
        elif col.source == "offer_cost":
            out[:, j] = offers.cost
        elif col.source == "offer_prior":
            out[:, j] = offers.prior
        else:
            out[:, j] = _codes(spec.level_index[j], offers.campaign_type)
    return out


class RowTemplate:
    """The rows `build_rows` makes for every offer of one channel view, built once (per catalog,
    channel and model): a decision takes its candidates' rows and writes in the columns that
    vary by request, the customer's features and the request's context. Same values, bit for bit."""

    __slots__ = ("_context", "_feature_cols", "_features", "_rows")

    def __init__(self, spec: InputSpec, schema: FeatureSchema, channel: str, offers: OfferAttributes) -> None:
        self._rows = build_rows(spec, schema, np.zeros(len(schema.features), np.float32), {}, channel, offers)
        # features the live schema lacks stay NaN, as build_rows leaves them
        known = [(j, schema.index(c.name)) for j, c in enumerate(spec.columns) if c.source == "feature"]
        pairs = [(j, i) for j, i in known if i is not None]
        cols, idx = [j for j, _ in pairs], [i for _, i in pairs]
        self._feature_cols: slice | npt.NDArray[np.intp] = _as_slice(cols) or np.array(cols, dtype=np.intp)
        self._features: slice | npt.NDArray[np.intp] = _as_slice(idx) or np.array(idx, dtype=np.intp)
        self._context = tuple(
            (j, c.name[len(CONTEXT_PREFIX) :]) for j, c in enumerate(spec.columns) if c.source == "context"
        )

    def rows(
        self, positions: npt.NDArray[np.intp], customer: npt.NDArray[np.float32], context: Mapping[str, float]
    ) -> npt.NDArray[np.float64]:
        """The model matrix of the offers at `positions` of the view, for this customer and request."""
        out = self._rows.take(positions, axis=0)
        out[:, self._feature_cols] = customer[self._features]
        for j, key in self._context:
            out[:, j] = context.get(key, np.nan)
        return out


def _as_slice(indices: Sequence[int]) -> slice | None:
    """`indices` as a slice when they are consecutive (faster to index with), else None."""
    if indices and list(indices) == list(range(indices[0], indices[0] + len(indices))):
        return slice(indices[0], indices[0] + len(indices))
    return None
