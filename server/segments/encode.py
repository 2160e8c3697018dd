"""The customers as the clustering and the describing tree see them.

Clustering (`Encoded.scaled`): numeric features with a missing value imputed by the feature's
median, then standardised (a feature with no spread is left out: it cannot separate anyone);
categorical features one-hot, one 0/1 column per level (a missing level is all zeros).

The tree (`Encoded.tree`): the same imputed numeric values, unscaled, so its thresholds are in
the features' own units, and the same one-hot columns. Rules cannot impute, so describe.py turns
"went where the median goes" into `is_missing(x) or ...`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from server.features.schema import FeatureSchema


@dataclass(frozen=True, slots=True)
class Column:
    """One column of the encoded matrices: a numeric feature, or one level of a categorical one."""

    feature: int  # index in the schema
    level: int | None = None  # the level index of a one-hot column


@dataclass(frozen=True, slots=True)
class Encoded:
    schema: FeatureSchema
    columns: list[Column]
    tree: npt.NDArray[np.float64]  # customers x columns: imputed raw values and one-hot levels
    scaled: npt.NDArray[np.float64]  # customers x columns: what the clustering reads
    medians: dict[int, float]  # feature index -> the median that stood in for its missing values
    missing: dict[int, int]  # feature index -> customers missing it (numeric and categorical)
    constant: list[int]  # numeric features with one value for everyone: left out


def encode(schema: FeatureSchema, raw: npt.NDArray[np.float64]) -> Encoded:
    columns: list[Column] = []
    tree_cols: list[npt.NDArray[np.float64]] = []
    scaled_cols: list[npt.NDArray[np.float64]] = []
    medians: dict[int, float] = {}
    missing: dict[int, int] = {}
    constant: list[int] = []
    for i, spec in enumerate(schema.features):
        values = raw[:, i]
        nan = np.isnan(values)
        if nan.any():
            missing[i] = int(nan.sum())
        if spec.kind == "categorical":
            for level in range(len(spec.levels)):
                onehot = (values == level).astype(np.float64)
                if onehot.any():
                    columns.append(Column(i, level))
                    tree_cols.append(onehot)
                    scaled_cols.append(onehot)
            continue
        if nan.all():
            constant.append(i)
            continue
        # a float32 value, as stored ones are: the tree's thresholds fall between stored values
        median = float(np.float32(np.median(values[~nan])))
        filled = np.where(nan, median, values)
        sd = float(filled.std())
        if not sd > 0:
            constant.append(i)
            continue
        if nan.any():
            medians[i] = median
        columns.append(Column(i))
        tree_cols.append(filled)
        scaled_cols.append((filled - filled.mean()) / sd)
    n = len(raw)
    return Encoded(
        schema=schema,
        columns=columns,
        tree=np.column_stack(tree_cols) if tree_cols else np.zeros((n, 0)),
        scaled=np.column_stack(scaled_cols) if scaled_cols else np.zeros((n, 0)),
        medians=medians,
        missing=missing,
        constant=constant,
    )
