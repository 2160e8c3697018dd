"""The compiled catalog: what the decision pipeline reads, built by server.catalog.compiler.

Immutable; a new catalog version is a new object swapped in by reference.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from server.catalog.budgets import Limits
from server.catalog.exploration import BanditPolicy
from server.catalog.rules import Rule
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


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
