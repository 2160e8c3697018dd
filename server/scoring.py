"""Propensity scoring behind one seam: a vectorised call over all candidates of a decision.

This issue's scorer returns each offer's catalog prior; the trained model (a later issue) plugs
in as another `Scorer` with the same call, one row per candidate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from server.catalog import Catalog
from server.domain import Channel


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
