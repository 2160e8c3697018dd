"""How each suggested rule's customers responded, from the decision and outcome logs.

A decision counts for a segment when the features it logged satisfy the segment's rule (compiled
against the feature schema the decision read; a decision whose schema lacks a feature of the
rule counts for no segment). Degraded decisions and those of the universal control group are
left out: nobody was offered anything by the policy. Per segment:

* response rate = (decision, offer) pairs with an ACCEPTED or CONVERTED outcome / offers awarded;
* value per decision = the value those outcomes reported (the largest per pair: ACCEPTED then
  CONVERTED is one response; the offer's value in the decision's catalog version when none was
  reported, as `nbo export` counts it) / the segment's decisions.

Both logs are read once, each record once (server.state.log_reader).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis
import yaml

from server.catalog.rule_base import Now, RuleError
from server.catalog.rules import compile_rule
from server.domain import RESPONSES
from server.features.schema import FeatureSchema
from server.state.catalog_store import CatalogNotStored, stored_catalog
from server.state.feature_store import FeatureStore
from server.state.keys import Keys
from server.state.log_reader import LogReader

MIN_AWARDS = 30  # fewer awards than this: the response rate is "not enough data"
_NOW = Now(hour=0, weekday=0, month=1, day=1)  # suggested rules never read the time


@dataclass(slots=True)
class SegmentLog:
    decisions: int = 0
    awards: int = 0
    responses: int = 0
    value: float = 0.0

    def response_rate(self, min_awards: int = MIN_AWARDS) -> float | None:
        return self.responses / self.awards if self.awards >= min_awards else None

    def value_per_decision(self, min_awards: int = MIN_AWARDS) -> float | None:
        return self.value / self.decisions if self.awards >= min_awards else None


@dataclass(frozen=True, slots=True)
class LogStats:
    decisions: int  # decisions read (after leaving out degraded and control group)
    segments: dict[int, SegmentLog]
    no_rule_schema: int  # decisions whose feature schema a rule did not compile against


Matcher = Callable[[Sequence[float]], bool]


def _matchers(schema: FeatureSchema | None, rules: dict[int, str]) -> dict[int, Matcher]:
    found: dict[int, Matcher] = {}
    if schema is None:
        return found
    for label, text in rules.items():
        try:
            fn = compile_rule(text, schema, ()).fn
        except RuleError:
            continue
        found[label] = lambda f, fn=fn: fn(f, {}, _NOW)  # type: ignore[misc]
    return found


def _offer_values(client: redis.Redis, keys: Keys, version: str) -> dict[str, float]:
    """The offers' values in a stored catalog version ({} when it is not stored)."""
    try:
        doc = yaml.safe_load(stored_catalog(client, keys, version).text) or {}
    except CatalogNotStored:
        return {}
    return {str(o["id"]): float(o.get("value", 0.0)) for o in doc.get("offers") or ()}


def log_stats(client: redis.Redis, keys: Keys, rules: dict[int, str]) -> LogStats | None:
    """Per segment counts from the log; None when there is no decision log."""
    if not client.exists(keys.decision_stream):
        return None
    reader = LogReader(client, keys)
    rewards: dict[tuple[str, str], float] = {}
    for out in reader.outcomes():
        if out.outcome in RESPONSES:
            value = out.value if math.isfinite(out.value) and out.value > 0 else 0.0
            pair = (out.decision_id, out.offer_id)
            rewards[pair] = max(rewards.get(pair, 0.0), value)
    store = FeatureStore(client, keys)
    by_version: dict[int, dict[int, Matcher]] = {}
    values: dict[str, dict[str, float]] = {}  # catalog version -> offer -> value
    stats = {label: SegmentLog() for label in rules}
    decisions = missed = 0
    for rec in reader.decisions():
        if rec.degraded or rec.control_group or rec.features is None or rec.schema_version is None:
            continue
        decisions += 1
        if rec.schema_version not in by_version:
            by_version[rec.schema_version] = _matchers(store.schema(rec.schema_version), rules)
        matchers = by_version[rec.schema_version]
        missed += len(matchers) < len(rules)
        for label, matches in matchers.items():
            if not matches(rec.features):
                continue
            s = stats[label]
            s.decisions += 1
            s.awards += len(rec.chosen)
            for offer in rec.chosen:
                reported = rewards.get((rec.decision_id, offer))
                if reported is None:
                    continue
                if not reported:
                    if rec.catalog_version not in values:
                        values[rec.catalog_version] = _offer_values(client, keys, rec.catalog_version)
                    reported = values[rec.catalog_version].get(offer, 0.0)
                s.responses += 1
                s.value += reported
    return LogStats(decisions, stats, missed)
