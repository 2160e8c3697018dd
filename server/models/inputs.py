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


def _codes(levels: tuple[str, ...], values: Sequence[str]) -> npt.NDArray[np.float64]:
    index = {v: i for i, v in enumerate(levels)}
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
            out[:, j] = _codes(col.levels, offers.offer_ids)
        elif col.source == "channel":
            out[:, j] = _codes(col.levels, [channel])[0]
        elif col.source == "offer_value":
            out[:, j] = offers.value
        elif col.source == "offer_cost":
            out[:, j] = offers.cost
        elif col.source == "offer_prior":
            out[:, j] = offers.prior
        else:
            out[:, j] = _codes(col.levels, offers.campaign_type)
    return out
