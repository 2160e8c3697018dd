"""The compiled catalog: what the decision pipeline reads, built by server.catalog.compiler.

Immutable; a new catalog version is a new object swapped in by reference.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from server.catalog.budgets import Limits, per_customer_caps
from server.catalog.exploration import BanditPolicy
from server.catalog.rules import BoolFn, Rule
from server.domain import CampaignType, Channel


@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    description: str
    rule: Rule


@dataclass(frozen=True, slots=True)
class Campaign:
    id: str
    name: str
    type: CampaignType
    priority: int
    tier: int
    start: float | None
    end: float | None
    channels: frozenset[Channel]
    target: tuple[int, ...]
    events: frozenset[str]
    holdout: float
    holdout_salt: str
    limits: Limits | None

    def live(self, now: float) -> bool:
        return (self.start is None or now >= self.start) and (self.end is None or now < self.end)


@dataclass(frozen=True, slots=True)
class Offer:
    id: str
    campaign: int
    campaign_id: str
    title: str
    script: str
    value: float
    max_value: float  # the largest outcome value ReportOutcome accepts for it
    cost: float
    channels: frozenset[Channel]
    eligibility: Rule | None
    channel_weight: Mapping[Channel, float]
    lever: float
    prior_propensity: float
    limits: Limits | None


@dataclass(frozen=True)
class ChannelView:
    """Everything about the offers on one channel, as arrays the pipeline can vectorise over."""

    offers: tuple[int, ...]
    offer_ids: tuple[str, ...]
    campaign_types: tuple[str, ...]
    offer_campaign: npt.NDArray[np.intp]  # position in `campaigns` of each offer's campaign
    campaigns: tuple[int, ...]
    prior: npt.NDArray[np.float64]
    value: npt.NDArray[np.float64]
    cost: npt.NDArray[np.float64]
    weight: npt.NDArray[np.float64]
    lever: npt.NDArray[np.float64]
    tier: npt.NDArray[np.int64]
    priority: npt.NDArray[np.int64]
    rules: tuple[tuple[int, Rule], ...]  # (position, eligibility rule) of offers that have one
    # `arbitration.value: margin`: rank inside a tier by C x L x (P x value - cost), not P x C x V x L
    margin: bool = False
    # derived, for arbitration's tie-break: each offer's rank by priority (desc) then position
    tie_rank: npt.NDArray[np.intp] = field(init=False, repr=False, compare=False)
    # derived: the rank score is P x gain - loss (loss 0 when ranking by value)
    gain: npt.NDArray[np.float64] = field(init=False, repr=False, compare=False)
    loss: npt.NDArray[np.float64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tie_order = np.lexsort((np.arange(len(self.offers)), -self.priority))
        tie_rank = np.empty(len(self.offers), dtype=np.intp)
        tie_rank[tie_order] = np.arange(len(self.offers))
        object.__setattr__(self, "tie_rank", tie_rank)
        object.__setattr__(self, "gain", self.weight * self.value * self.lever)
        loss = self.weight * self.lever * self.cost if self.margin else np.zeros(len(self.offers))
        object.__setattr__(self, "loss", loss)


@dataclass(frozen=True, slots=True)
class ContactPolicy:
    window_seconds: float
    max_per_window: Mapping[Channel, int]
    decline_cooldown_seconds: float
    max_presented_without_response: int
    suppression_seconds: float


# Arbitration tiers, best first: ad hoc > high-priority trigger > lifecycle > other trigger.
TIER_NAMES = ("ad hoc", "high-priority trigger", "lifecycle", "trigger")


@dataclass(frozen=True)
class Catalog:
    version: str
    content_hash: str
    name: str
    schema_version: int
    timezone: ZoneInfo
    context_keys: frozenset[str]
    consent: Mapping[Channel, int]  # feature index of the consent flag per channel
    consent_missing_allows: bool
    min_expected_value: float
    contact_policy: ContactPolicy
    control_fraction: float
    control_salt: str
    channel_capacity: Mapping[Channel, int]  # awards per hour
    bandit: BanditPolicy
    segments: tuple[Segment, ...]
    campaigns: tuple[Campaign, ...]
    offers: tuple[Offer, ...]
    views: Mapping[Channel, ChannelView]
    offer_index: Mapping[str, int] = field(default_factory=dict)
    # derived from the fields above, once per catalog version, for the eligibility stage
    checks: Mapping[Channel, CampaignChecks] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checks = {ch: campaign_checks(self, view) for ch, view in self.views.items()}
        object.__setattr__(self, "checks", checks)


@dataclass(frozen=True, slots=True)
class CampaignChecks:
    """A channel view's campaign checks precomputed as bit masks over its campaigns (bit i: the
    view's i-th campaign), so that a decision combines masks instead of visiting each campaign.

    `not_live[k]` holds the campaigns not live at a time with exactly k of `bounds` at or before
    it (bisect_right): a campaign is live from its start (inclusive) to its end (exclusive).
    Offers sharing an eligibility rule (the same text compiles to the same rule) form one rule
    group, evaluated once per decision."""

    everything: int  # every campaign of the view
    bounds: tuple[float, ...]  # every distinct start and end time, sorted
    not_live: tuple[int, ...]  # len(bounds) + 1 masks
    triggers: int
    fired_by: Mapping[str, int]  # event -> the trigger campaigns it fires
    targeted: tuple[tuple[int, tuple[int, ...]], ...]  # (campaign position, target segments), in order
    segment_rules: tuple[BoolFn, ...]  # per catalog segment
    holdouts: tuple[tuple[int, str, float], ...]  # (campaign position, salt, fraction > 0), in order
    rules: tuple[tuple[int, int, BoolFn], ...]  # (group bit, campaigns of its offers, rule) per rule group
    offer_group: npt.NDArray[np.intp]  # per offer: its rule group, or len(rules) without a rule
    caps: tuple[tuple[str, int, int], ...]  # per offer: campaign id, offer's and campaign's per-customer caps
    # the eligibility stage's results by outcome of the checks above, shared by the decisions
    memo: dict[tuple[int, ...], npt.NDArray[np.int8]] = field(default_factory=dict, compare=False)

    def not_live_at(self, now: float) -> int:
        return self.not_live[bisect_right(self.bounds, now)]


def campaign_checks(catalog: Catalog, view: ChannelView) -> CampaignChecks:
    camps = [catalog.campaigns[ci] for ci in view.campaigns]
    bounds = tuple(sorted({t for c in camps for t in (c.start, c.end) if t is not None}))
    not_live = tuple(
        sum(
            1 << i
            for i, c in enumerate(camps)
            if (c.start is not None and bounds.index(c.start) >= k) or (c.end is not None and bounds.index(c.end) < k)
        )
        for k in range(len(bounds) + 1)
    )
    triggers = [i for i, c in enumerate(camps) if c.type is CampaignType.TRIGGER]
    fired_by: dict[str, int] = {}
    for i in triggers:
        for event in camps[i].events:
            fired_by[event] = fired_by.get(event, 0) | 1 << i
    groups: dict[Rule, int] = {}
    group_campaigns: list[int] = []
    offer_group = np.full(len(view.offers), -1, dtype=np.intp)
    for pos, rule in view.rules:
        g = groups.setdefault(rule, len(groups))
        if g == len(group_campaigns):
            group_campaigns.append(0)
        group_campaigns[g] |= 1 << int(view.offer_campaign[pos])
        offer_group[pos] = g
    offer_group[offer_group < 0] = len(groups)
    return CampaignChecks(
        everything=(1 << len(camps)) - 1,
        bounds=bounds,
        not_live=not_live,
        triggers=sum(1 << i for i in triggers),
        fired_by=fired_by,
        targeted=tuple((i, c.target) for i, c in enumerate(camps) if c.target),
        segment_rules=tuple(s.rule.fn for s in catalog.segments),
        holdouts=tuple((i, c.holdout_salt, c.holdout) for i, c in enumerate(camps) if c.holdout > 0.0),
        rules=tuple((1 << g, group_campaigns[g], rule.fn) for rule, g in groups.items()),
        offer_group=offer_group,
        caps=tuple((o.campaign_id, *per_customer_caps(catalog, o)) for o in (catalog.offers[i] for i in view.offers)),
    )


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
