"""The catalog's `bandit:` section, compiled: how much each channel explores, the arms' priors and
the inputs each arm learns a weight for.

The policy that uses it lives in server.learning.bandit; the catalog only validates and holds it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from server.domain import Channel

InputKind = Literal["feature", "context", "model"]


@dataclass(frozen=True, slots=True)
class ChannelExploration:
    exploration: float = 1.0  # multiplies the posterior sd in the draws; 0 = greedy on the mean
    epsilon: float = 0.0  # probability mass spread evenly over the candidates (OPE support)


@dataclass(frozen=True, slots=True)
class ArmInput:
    """One input an arm learns a weight for: (raw - center) / scale, clipped to +-CLIP, 0 when
    missing. `feature` reads the customer's vector at `index`, `context` the request's context
    key, `model` the model's log-odds for the offer."""

    kind: InputKind
    name: str
    center: float = 0.0
    scale: float = 1.0
    index: int = -1  # the feature's position in the schema (kind "feature"); -1 when not resolved

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"


INPUT_CLIP = 5.0  # standardised inputs beyond 5 sd are outliers; capped so one cannot swamp a draw


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
    inputs: tuple[ArmInput, ...] = ()
    input_prior_sd: float = 0.05  # sd of each input weight before any outcome (measured: docs/learning.md)
    signature: str = field(init=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "signature", inputs_signature(self.inputs, self.input_prior_sd))

    def on(self, channel: Channel) -> ChannelExploration:
        return self.channels.get(channel, self.default)


def inputs_signature(inputs: tuple[ArmInput, ...], prior_sd: float) -> str:
    """Names the input declaration (kinds, names, centers, scales and the weights' prior): weights
    learned under another declaration mean something else, so arms keep them under this name and
    ignore weights learned under any other. "" when there are no inputs."""
    if not inputs:
        return ""
    text = ";".join(f"{i.label}/{i.center!r}/{i.scale!r}" for i in inputs) + f";{prior_sd!r}"
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()
