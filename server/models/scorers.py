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
from server.models.inputs import InputSpec, OfferAttributes, RowTemplate


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


@dataclass(frozen=True, slots=True)
class _ViewInputs:
    """What a model's scoring of one catalog's channel view needs beyond the request, built once."""

    catalog: Catalog
    known: npt.NDArray[np.bool_]  # per offer of the view: among the model's offer_id levels
    all_known: bool
    rows: RowTemplate


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
        self._views: dict[Channel, _ViewInputs] = {}  # of the last catalog scored on each channel

    def _inputs(self, catalog: Catalog, channel: Channel) -> _ViewInputs:
        cached = self._views.get(channel)
        if cached is not None and cached.catalog is catalog:
            return cached
        view = catalog.views[channel]
        known = np.fromiter((i in self._known for i in view.offer_ids), dtype=np.bool_, count=len(view.offer_ids))
        rows = RowTemplate(
            self.spec,
            self.schema,
            channel.value,
            OfferAttributes(view.offer_ids, view.value, view.cost, view.prior, view.campaign_types),
        )
        made = self._views[channel] = _ViewInputs(catalog, known, bool(known.all()), rows)
        return made

    def score(self, batch: ScoringInput) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        inputs = self._inputs(batch.catalog, batch.channel)
        pos = batch.positions
        out = batch.catalog.views[batch.channel].prior[pos]
        if inputs.all_known:
            known = np.ones(len(pos), dtype=np.bool_)
            sel = pos
        else:
            known = inputs.known[pos]
            sel = pos[known]
        if sel.size:
            out[known] = self.predict(inputs.rows.rows(sel, batch.features, batch.context))
        return out, known
