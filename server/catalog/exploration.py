"""The catalog's `bandit:` section, compiled: how much each channel explores, and the arms' priors.

The policy that uses it lives in server.learning.bandit; the catalog only validates and holds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from server.domain import Channel


@dataclass(frozen=True, slots=True)
class ChannelExploration:
    exploration: float = 1.0  # multiplies the posterior sd in the draws; 0 = greedy on the mean
    epsilon: float = 0.0  # probability mass spread evenly over the candidates (OPE support)


@dataclass(frozen=True, slots=True)
class BanditPolicy:
    """Validated by the catalog (`bandit:` section); immutable, seeded."""

    enabled: bool = False
    seed: int = 0
    samples: int = 256
    prior_sd: float = 0.5  # sd of an arm's offset before any outcome, offers the model knows
    new_offer_sd: float = 1.5  # the same for offers the model has never seen
    decay: float = 0.999  # per outcome, an arm's precision moves back toward its prior by 1 - decay
    # False: draws and the epsilon floor stay inside the best tier present (the arbitration rule);
    # True: they range over every candidate, so a lower tier can come first
    cross_tier: bool = False
    channels: Mapping[Channel, ChannelExploration] = field(default_factory=dict)
    default: ChannelExploration = ChannelExploration()

    def on(self, channel: Channel) -> ChannelExploration:
        return self.channels.get(channel, self.default)
