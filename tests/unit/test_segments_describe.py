"""The rules server/segments/describe.py writes from a tree: merged categorical levels, missing
levels and values, 0/1 flags and round thresholds, each checked through the catalog's compiler."""

from __future__ import annotations

import numpy as np
import pytest

from server.features.schema import FeatureSchema, FeatureSpec
from server.segments.cluster import cluster
from server.segments.describe import fidelity, fit_tree, nice_threshold
from server.segments.encode import encode

SCHEMA = FeatureSchema(
    1,
    (
        FeatureSpec("color", "categorical", ("red", "green", "blue", "black")),
        FeatureSpec("x", "numeric"),
        FeatureSpec("flag", "numeric"),
    ),
)


def _population(n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(0)
    color = rng.integers(0, 4, n).astype(float)
    color[:20] = np.nan  # a missing level
    x = np.where(rng.random(n) < 0.7, rng.uniform(0, 4.9, n), rng.uniform(5.1, 10, n)).round(1)
    x[20:40] = np.nan  # missing values: the median (below 5) stands in for them
    flag = (rng.random(n) < 0.5).astype(float)
    return np.column_stack([color, x, flag])


@pytest.mark.parametrize(
    ("lo", "hi", "want"),
    [(24, 25, 24), (24.5, 31, 30), (0.123, 0.2, 0.15), (-3.7, -1.2, -3), (-0.4, 0.3, 0), (1894.25, 1894.5, 1894.3)],
)
def test_nice_threshold_is_the_roundest_number_in_the_gap(lo: float, hi: float, want: float) -> None:
    got = nice_threshold(lo, hi)
    assert got == want and lo <= got < hi


def test_categorical_levels_missing_values_and_flags() -> None:
    raw = _population()
    color, x, flag = raw.T
    enc = encode(SCHEMA, raw)
    assert enc.medians == {1: pytest.approx(float(np.nanmedian(x)), abs=1e-6)} and enc.missing == {0: 20, 1: 20}
    # 0: red or blue; 1: the other colours (a missing one too) with x low or missing; 2: the rest
    labels = np.where(np.isin(color, [0, 2]), 0, np.where(np.isnan(x) | (x <= 5), 1, 2)).astype(np.int64)
    tree, _ = fit_tree(enc, labels, depth=3, seed=0)
    assert tree.rules == {
        # two leaves (red; not red and blue) merged into one path
        0: 'color in ["red", "blue"]',
        # "not in": true for the customers whose colour is missing, as the tree sent them
        1: 'color not in ["red", "blue"] and (is_missing(x) or x <= 5)',
        2: 'color not in ["red", "blue"] and x > 5',
    }
    fit = fidelity(SCHEMA, raw, labels, tree.rules)
    assert fit.accuracy == 1.0 and fit.overlapping == 0
    assert fit.matched == {0: int(np.isin(color, [0, 2]).sum()), 1: 161, 2: 57}
    flags, _ = fit_tree(enc, np.where(flag == 1, 0, 1).astype(np.int64), depth=3, seed=0)
    assert flags.rules == {0: "flag == 1", 1: "flag == 0"}


def test_a_cluster_no_leaf_predicts_has_no_rule() -> None:
    raw = _population()
    enc = encode(SCHEMA, raw)
    # cluster 2 is 3 customers scattered among cluster 0: too few for a leaf of their own
    labels = np.where(raw[:, 2] == 1, 0, 1).astype(np.int64)
    labels[[50, 51, 52]] = 2
    tree, _ = fit_tree(enc, labels, depth=1, seed=0)
    assert sorted(tree.rules) == [0, 1]
    fit = fidelity(SCHEMA, raw, labels, tree.rules)
    assert fit.accuracy == pytest.approx(1 - 3 / len(labels))


def test_clusters_are_numbered_by_size() -> None:
    rng = np.random.default_rng(2)
    points = np.concatenate([rng.normal(0, 0.1, (30, 2)), rng.normal(5, 0.1, (50, 2)), rng.normal(-5, 0.1, (20, 2))])
    labels = cluster(points, 3, seed=0)
    assert np.bincount(labels).tolist() == [50, 30, 20]
    assert (labels[:30] == 1).all() and (labels[30:80] == 0).all() and (labels[80:] == 2).all()
