"""Propensity scoring behind one seam: a vectorised call over all candidates of a decision.

`PriorScorer` returns each offer's catalog prior (used until a model is published);
`ModelScorer` calls a trained model (compiled or plain, see server.models.loader) once per
decision with one row per candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from server.catalog.compiled import Catalog
from server.domain import Channel
from server.features.schema import FeatureSchema
from server.models.inputs import InputSpec, OfferAttributes, build_rows


@dataclass(frozen=True, slots=True)
class ScoringInput:
    catalog: Catalog
    channel: Channel
    features: npt.NDArray[np.float32]
    context: Mapping[str, float]
    positions: npt.NDArray[np.intp]  # positions in catalog.views[channel] of the candidates


class Scorer(Protocol):
    @property
    def version(self) -> str: ...

    def score(self, batch: ScoringInput) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Propensity per candidate, and whether each came from a model (False: the prior)."""
        ...


class PriorScorer:
    """P(accept) = the offer's catalog prior propensity."""

    version = "prior"

    def score(self, batch: ScoringInput) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        view = batch.catalog.views[batch.channel]
        return view.prior[batch.positions], np.zeros(len(batch.positions), dtype=np.bool_)


Predict = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]


class ModelScorer:
    """P(accept) from a trained model: one predict call over all candidates of a decision.

    Offers the model never saw (not among its offer_id levels) keep their catalog prior.
    """

    def __init__(self, version: str, spec: InputSpec, predict: Predict, schema: FeatureSchema, compiled: bool) -> None:
        self.version = version
        self.spec = spec
        self.predict = predict
        self.schema = schema
        self.compiled = compiled
        self._known = frozenset(spec.offer_levels())

    def score(self, batch: ScoringInput) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        view = batch.catalog.views[batch.channel]
        pos = batch.positions
        ids = [view.offer_ids[p] for p in pos.tolist()]
        known = np.fromiter((i in self._known for i in ids), dtype=np.bool_, count=len(ids))
        out = view.prior[pos].copy()
        if known.any():
            sel = pos[known]
            rows = build_rows(
                self.spec,
                self.schema,
                batch.features,
                batch.context,
                batch.channel.value,
                OfferAttributes(
                    offer_ids=[view.offer_ids[p] for p in sel.tolist()],
                    value=view.value[sel],
                    cost=view.cost[sel],
                    prior=view.prior[sel],
                    campaign_type=[view.campaign_types[p] for p in sel.tolist()],
                ),
            )
            out[known] = self.predict(rows)
        return out, known
