"""What sets a cluster apart: the features whose cluster mean differs most from the population's.

Differences are in population standard deviations, so features of any unit compare: for a
numeric feature (cluster mean - population mean) / population sd over the known values; for a
categorical level the same on its 0/1 indicator (its share).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from server.features.schema import FeatureSchema


@dataclass(frozen=True, slots=True)
class Trait:
    feature: str  # `name`, or `name=level` for a categorical level's share
    mean: float  # in the cluster (a share for a level)
    population: float
    score: float  # the difference in population standard deviations

    def text(self) -> str:
        if "=" in self.feature:
            return f"{self.feature} {self.mean:.0%} (all {self.population:.0%})"
        return f"{self.feature} {_short(self.mean)} (all {_short(self.population)})"


def _short(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _indicators(schema: FeatureSchema, raw: npt.NDArray[np.float64]) -> list[tuple[str, npt.NDArray[np.float64]]]:
    """Each numeric feature's values, and each categorical level's 0/1 indicator (NaN: missing)."""
    out: list[tuple[str, npt.NDArray[np.float64]]] = []
    for i, spec in enumerate(schema.features):
        values = raw[:, i]
        if spec.kind == "numeric":
            out.append((spec.name, values))
            continue
        for level_index, level in enumerate(spec.levels):
            out.append((f"{spec.name}={level}", np.where(np.isnan(values), np.nan, values == level_index)))
    return out


def traits(
    schema: FeatureSchema, raw: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], k: int, top: int
) -> dict[int, list[Trait]]:
    """The `top` most distinctive features of each cluster 0..k-1, most distinctive first."""
    found: dict[int, list[Trait]] = {c: [] for c in range(k)}
    for name, values in _indicators(schema, raw):
        known = ~np.isnan(values)
        if known.sum() < 2:
            continue
        pop_mean = float(values[known].mean())
        sd = float(values[known].std())
        if not sd > 0:
            continue
        for c in range(k):
            inside = known & (labels == c)
            if not inside.any():
                continue
            mean = float(values[inside].mean())
            found[c].append(Trait(name, mean, pop_mean, (mean - pop_mean) / sd))
    return {c: sorted(ts, key=lambda t: (-abs(t.score), t.feature))[:top] for c, ts in found.items()}
