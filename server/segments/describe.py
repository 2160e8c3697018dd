"""Each cluster as a rule of the catalog's rule language, from a shallow decision tree.

The tree is fitted to the cluster labels on the customers' own (unscaled) values, so its
thresholds are in business units. A segment's rule is the OR of the paths to the leaves that
predict its cluster; a subtree whose leaves all predict one cluster is one path, and repeated
bounds of a feature on a path merge into one interval. Each threshold is moved to the roundest
number between the two neighbouring values the customers hold (`x <= 24` rather than
`x <= 24.5`): the same customers fall on each side, so fidelity on the data is unchanged.

Tree leaves are disjoint, so the rules of one suggestion never overlap: a customer falls in at
most one suggested segment (in several only once someone edits the rules to overlap). A rule
cannot impute, and comparisons with a missing value are false, so where the tree sent a missing
value (imputed with the median) along a path, the rule says so: `(is_missing(x) or x <= 24)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from server.features.schema import FeatureSchema
from server.segments.encode import Column, Encoded

# leaves smaller than this share of the customers are not split off: they would add a path
# (and a clause) for a handful of customers
MIN_LEAF_SHARE = 0.005


@dataclass(slots=True)
class _Path:
    """The conditions on one root-to-leaf path, merged per feature."""

    order: list[int] = field(default_factory=list)  # features in the order the path meets them
    lower: dict[int, float] = field(default_factory=dict)  # x > lower
    upper: dict[int, float] = field(default_factory=dict)  # x <= upper
    # categorical: the levels allowed, and whether a missing level is (the tree's one-hot columns
    # are all 0 for it, so it takes every "not this level" branch)
    levels: dict[int, frozenset[int]] = field(default_factory=dict)
    missing_ok: dict[int, bool] = field(default_factory=dict)

    def copy(self) -> _Path:
        return _Path(
            list(self.order),
            dict(self.lower),
            dict(self.upper),
            dict(self.levels),
            dict(self.missing_ok),
        )

    def key(self, without: int) -> tuple[object, ...]:
        """Everything but feature `without`'s categorical condition: equal keys differ only there."""
        levels = {f: v for f, v in self.levels.items() if f != without}
        missing = {f: v for f, v in self.missing_ok.items() if f != without}
        return (sorted(self.lower.items()), sorted(self.upper.items()), sorted(levels.items()), sorted(missing.items()))

    def meet(self, feature: int) -> None:
        if feature not in self.order:
            self.order.append(feature)


@dataclass(frozen=True, slots=True)
class TreeRules:
    rules: dict[int, str]  # cluster label -> rule; a cluster no leaf predicts has none
    depth: int  # the fitted tree's depth
    leaves: int


def nice_threshold(lo: float, hi: float) -> float:
    """The roundest number c with lo <= c < hi (so `x <= c` splits the values exactly as before)."""
    span = max(abs(lo), abs(hi))
    top = math.floor(math.log10(span)) + 1 if span > 0 else 0
    for k in range(top, -13, -1):
        for step in (10.0**k, 5 * 10.0 ** (k - 1)):
            c = round(math.ceil(lo / step) * step, 12)
            if lo <= c < hi:
                return c + 0.0  # no "-0"
    return lo


def number(value: float) -> str:
    return str(np.format_float_positional(value, trim="-"))


def fit_tree(
    enc: Encoded, labels: npt.NDArray[np.int64], *, depth: int, seed: int
) -> tuple[TreeRules, npt.NDArray[np.int64]]:
    """The rules of a tree of at most `depth` levels, and the tree's own prediction per customer."""
    from sklearn.tree import DecisionTreeClassifier

    min_leaf = max(1, math.ceil(MIN_LEAF_SHARE * len(labels)))
    model = DecisionTreeClassifier(max_depth=depth, min_samples_leaf=min_leaf, random_state=seed)
    model.fit(enc.tree, labels)
    return _TreeReader(model, enc).rules(), np.asarray(model.predict(enc.tree), dtype=np.int64)


class _TreeReader:
    def __init__(self, model: object, enc: Encoded) -> None:
        t = model.tree_  # type: ignore[attr-defined]
        self.left: list[int] = t.children_left.tolist()
        self.right: list[int] = t.children_right.tolist()
        self.feature: list[int] = t.feature.tolist()
        self.threshold: list[float] = t.threshold.tolist()
        classes = model.classes_  # type: ignore[attr-defined]
        self.label: list[int] = [int(classes[int(np.argmax(v))]) for v in t.value[:, 0, :]]
        self.enc = enc
        # customers x nodes: which customers reach each node (a threshold is moved within the
        # gap between the values of the customers that reach its node, not of everyone)
        self.reach = model.decision_path(enc.tree).tocsc()  # type: ignore[attr-defined]
        # 0/1 features (consents, flags) read better as `x == 1` than as `x > 0`
        self.binary = {
            col.feature
            for j, col in enumerate(enc.columns)
            if col.level is None and set(np.unique(enc.tree[:, j]).tolist()) <= {0.0, 1.0}
        }
        self.depth = int(model.get_depth())  # type: ignore[attr-defined]
        self.leaves = int(model.get_n_leaves())  # type: ignore[attr-defined]

    def rules(self) -> TreeRules:
        found: dict[int, list[_Path]] = {}
        for label, path in self._paths(0, _Path()):
            found.setdefault(label, []).append(path)
        found = {label: self._merged(paths) for label, paths in found.items()}
        rules = {label: " or ".join(self._wrap(paths, p) for p in paths) for label, paths in sorted(found.items())}
        return TreeRules(rules, self.depth, self.leaves)

    def _merged(self, paths: list[_Path]) -> list[_Path]:
        """Paths that differ only in the levels of one categorical feature, as one path allowing
        both (`tier == "A" and x > 1` or `tier == "B" and x > 1`: `tier in ["A", "B"] and x > 1`)."""
        paths = list(paths)
        i = 0
        while i < len(paths):
            for j in range(i + 1, len(paths)):
                both = self._union(paths[i], paths[j])
                if both is not None:
                    paths[i] = both
                    del paths[j]
                    break
            else:
                i += 1
        return paths

    def _union(self, p: _Path, q: _Path) -> _Path | None:
        differ = [f for f in p.levels if f in q.levels and p.levels[f] != q.levels[f]]
        if len(differ) != 1 or set(p.order) != set(q.order) or p.key(differ[0]) != q.key(differ[0]):
            return None
        f = differ[0]
        both = p.copy()
        both.levels[f] = p.levels[f] | q.levels[f]
        both.missing_ok[f] = p.missing_ok[f] or q.missing_ok[f]
        if both.missing_ok[f] and len(both.levels[f]) == len(self.enc.schema.features[f].levels):
            both.order.remove(f)  # every level and a missing one: no condition left
            del both.levels[f], both.missing_ok[f]
        return both

    def _wrap(self, paths: list[_Path], path: _Path) -> str:
        # "and" binds tighter than "or", so the parentheses are for the reader only
        text = self._path_text(path)
        alone = len(path.order) == 1 and (text.startswith("(") or " and " not in text)  # one condition
        return f"({text})" if len(paths) > 1 and not alone else text

    def _pure(self, node: int) -> int | None:
        """The label every leaf under `node` predicts, or None when they differ."""
        if self.left[node] < 0:
            return self.label[node]
        a, b = self._pure(self.left[node]), self._pure(self.right[node])
        return a if a is not None and a == b else None

    def _paths(self, node: int, path: _Path) -> list[tuple[int, _Path]]:
        label = self._pure(node)
        if label is not None:
            return [(label, path)]
        col = self.enc.columns[self.feature[node]]
        left, right = path.copy(), path.copy()
        self._split(col, node, left, right)
        return self._paths(self.left[node], left) + self._paths(self.right[node], right)

    def _split(self, col: Column, node: int, left: _Path, right: _Path) -> None:
        f = col.feature
        left.meet(f)
        right.meet(f)
        if col.level is not None:  # one-hot: left is "not this level", right "this level"
            every = frozenset(range(len(self.enc.schema.features[f].levels)))
            left.levels[f] = left.levels.get(f, every) - {col.level}
            left.missing_ok.setdefault(f, True)
            right.levels[f] = right.levels.get(f, every) & {col.level}
            right.missing_ok[f] = False
            return
        members = self.reach[:, node].indices
        values = self.enc.tree[members, self.enc.columns.index(col)]
        threshold = self.threshold[node]
        lo = float(values[values <= threshold].max())
        hi = float(values[values > threshold].min())
        c = nice_threshold(lo, hi)
        left.upper[f] = min(left.upper.get(f, math.inf), c)
        right.lower[f] = max(right.lower.get(f, -math.inf), c)

    def _path_text(self, path: _Path) -> str:
        if not path.order:
            return "true"
        return " and ".join(self._condition(path, f) for f in path.order)

    def _condition(self, path: _Path, f: int) -> str:
        spec = self.enc.schema.features[f]
        name = spec.name
        if spec.kind == "categorical":
            kept = sorted(path.levels[f])
            out = [i for i in range(len(spec.levels)) if i not in path.levels[f]]
            # "in" is false for a missing level, "not in" true; when no customer misses the
            # feature both read the customers the same way, so the shorter list is written
            negate = path.missing_ok[f] if f in self.enc.missing else len(out) < len(kept)
            if negate:
                return _levels(name, "!=", "not in", [spec.levels[i] for i in out])
            return _levels(name, "==", "in", [spec.levels[i] for i in kept])
            if len(out) < len(kept):
                return _levels(name, "!=", "not in", [spec.levels[i] for i in out])
            return _levels(name, "==", "in", [spec.levels[i] for i in kept])
        lower, upper = path.lower.get(f, -math.inf), path.upper.get(f, math.inf)
        flags = [v for v in (0.0, 1.0) if lower < v <= upper]
        if f in self.binary and len(flags) == 1:
            text = f"{name} == {number(flags[0])}"
        else:
            parts = [f"{name} > {number(lower)}"] if f in path.lower else []
            parts += [f"{name} <= {number(upper)}"] if f in path.upper else []
            text = " and ".join(parts)
        median = self.enc.medians.get(f)
        if median is not None and lower < median <= upper:
            return f"(is_missing({name}) or {text})"
        return text


def _levels(name: str, one: str, many: str, levels: list[str]) -> str:
    if len(levels) == 1:
        return f'{name} {one} "{levels[0]}"'
    return f"{name} {many} [{', '.join(f'{chr(34)}{v}{chr(34)}' for v in levels)}]"


@dataclass(frozen=True, slots=True)
class Fidelity:
    accuracy: float  # customers whose rule is their cluster's / all customers
    precision: dict[int, float]  # of each rule's customers, the share in its cluster
    recall: dict[int, float]  # of each cluster's customers, the share its rule selects
    matched: dict[int, int]  # customers each rule selects
    overlapping: int  # customers selected by more than one rule (0 for one tree's rules)


def fidelity(
    schema: FeatureSchema, raw: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], rules: dict[int, str]
) -> Fidelity:
    """The compiled rules, evaluated the way the server evaluates them, against the clusters."""
    from server.catalog.rule_base import Now
    from server.catalog.rules import compile_rule

    now = Now(hour=0, weekday=0, month=1, day=1)
    rows = raw.tolist()
    assigned = np.full(len(labels), -1, dtype=np.int64)
    hits = np.zeros(len(labels), dtype=np.int64)
    precision: dict[int, float] = {}
    recall: dict[int, float] = {}
    matched: dict[int, int] = {}
    for label, text in rules.items():
        fn = compile_rule(text, schema, ()).fn
        mask = np.fromiter((fn(row, {}, now) for row in rows), dtype=bool, count=len(rows))
        hits += mask
        assigned[mask] = label
        ours = labels == label
        matched[label] = int(mask.sum())
        precision[label] = float((mask & ours).sum() / mask.sum()) if mask.any() else math.nan
        recall[label] = float((mask & ours).sum() / ours.sum()) if ours.any() else math.nan
    accuracy = float(((assigned == labels) & (hits == 1)).mean()) if len(labels) else math.nan
    return Fidelity(accuracy, precision, recall, matched, int((hits > 1).sum()))
