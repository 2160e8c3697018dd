"""`nbo segments suggest`: load, encode, cluster, describe, profile and measure, in that order."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import redis

from server.segments.cluster import Method, cluster
from server.segments.describe import fidelity, fit_tree
from server.segments.encode import encode
from server.segments.load import Customers, SegmentsError, load_customers
from server.segments.log_stats import MIN_AWARDS, LogStats, SegmentLog, log_stats
from server.segments.profile import Trait, traits
from server.state.keys import Keys

DISJOINT_NOTE = (
    "the rules come from the leaves of one tree, which are disjoint: a customer falls in at most one "
    "suggested segment; it can fall in several only if you edit the rules to overlap"
)


@dataclass(frozen=True, slots=True)
class Options:
    k: int = 6
    method: Method = "kmeans"
    depth: int = 3
    sample: int | None = None
    seed: int = 0
    prefix: str = "suggested_"
    top: int = 3  # distinguishing features shown per segment
    min_awards: int = MIN_AWARDS


@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    size: int  # customers in the cluster
    share: float
    rule: str | None  # None: no leaf of the tree predicts this cluster
    precision: float  # of the rule's customers, the share in the cluster
    recall: float  # of the cluster, the share the rule selects
    matched: int  # customers the rule selects
    traits: list[Trait]
    log: SegmentLog | None = None

    def description(self) -> str:
        return (
            f"{self.size:,} customers ({self.share:.1%}) when suggested; rule precision {self.precision:.2f}, "
            f"recall {self.recall:.2f}; " + ", ".join(t.text() for t in self.traits)
        )


@dataclass(frozen=True, slots=True)
class Suggestion:
    options: Options
    schema_version: int
    customers: int  # clustered (the sample, when sampled)
    total: int  # feature vectors in Redis
    unreadable: int
    imputed: dict[str, tuple[int, float]]  # numeric feature -> (customers missing it, median used)
    left_out: list[str]  # numeric features with no spread
    accuracy: float  # share of customers whose rule is their cluster's
    overlapping: int
    tree_depth: int
    segments: list[Segment]
    log: LogStats | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["options"]["sample"] = self.options.sample
        for seg, raw in zip(self.segments, out["segments"], strict=True):
            for name in ("precision", "recall"):  # NaN (no rule, or an empty cluster) is not JSON
                raw[name] = None if math.isnan(raw[name]) else raw[name]
            raw["description"] = seg.description()
            raw["response_rate"] = None if seg.log is None else seg.log.response_rate(self.options.min_awards)
            raw["value_per_decision"] = None if seg.log is None else seg.log.value_per_decision(self.options.min_awards)
        return out


def check_options(options: Options) -> None:
    if options.k < 2:
        raise SegmentsError(f"--k must be at least 2, got {options.k}")
    if options.depth < 1:
        raise SegmentsError(f"--depth must be at least 1, got {options.depth}")
    if options.sample is not None and options.sample < options.k:
        raise SegmentsError(f"--sample {options.sample} is smaller than --k {options.k}")


def suggest(client: redis.Redis, keys: Keys, options: Options) -> Suggestion:
    check_options(options)
    customers = load_customers(client, keys, sample=options.sample, seed=options.seed)
    found = suggest_for(customers, options)
    rules = {i: s.rule for i, s in enumerate(found.segments) if s.rule is not None}
    stats = log_stats(client, keys, rules)
    if stats is None:
        return found
    segments = [replace(s, log=stats.segments.get(i)) for i, s in enumerate(found.segments)]
    return replace(found, segments=segments, log=stats)


def suggest_for(customers: Customers, options: Options) -> Suggestion:
    """The suggestion for customers already loaded (no log figures)."""
    check_options(options)
    n = len(customers.ids)
    if n == 0:
        raise SegmentsError("no customers loaded: `nbo features load FILE` first")
    if options.k > n:
        raise SegmentsError(f"--k {options.k} is more than the {n} customers loaded")
    schema, raw = customers.schema, customers.matrix
    enc = encode(schema, raw)
    if not enc.columns:
        raise SegmentsError("no feature varies between the customers: nothing to cluster on")
    labels = cluster(enc.scaled, options.k, method=options.method, seed=options.seed)
    tree, _ = fit_tree(enc, labels, depth=options.depth, seed=options.seed)
    fit = fidelity(schema, raw, labels, tree.rules)
    profile = traits(schema, raw, labels, options.k, options.top)
    segments = []
    for c in range(options.k):
        size = int((labels == c).sum())
        segments.append(
            Segment(
                name=f"{options.prefix}{c + 1}",
                size=size,
                share=size / n,
                rule=tree.rules.get(c),
                precision=fit.precision.get(c, math.nan),
                recall=fit.recall.get(c, math.nan),
                matched=fit.matched.get(c, 0),
                traits=profile[c],
            )
        )
    notes = [DISJOINT_NOTE]
    notes += [
        f"{s.name} has no rule: no leaf of the depth-{options.depth} tree predicts it"
        for s in segments
        if s.rule is None
    ]
    if any(s.size == 0 for s in segments):
        notes.append(f"the {options.method} model used fewer than {options.k} clusters: empty segments have no rule")
    return Suggestion(
        options=options,
        schema_version=schema.version,
        customers=n,
        total=customers.total,
        unreadable=customers.unreadable,
        imputed={schema.features[i].name: (enc.missing[i], m) for i, m in enc.medians.items()},
        left_out=[schema.features[i].name for i in enc.constant],
        accuracy=fit.accuracy,
        overlapping=fit.overlapping,
        tree_depth=tree.depth,
        segments=segments,
        notes=notes,
    )
