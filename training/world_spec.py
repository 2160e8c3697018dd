"""What differs between synthetic worlds: offers, customers, hidden response, catalog text.

`training.world.World` is the machinery (customers, offers, intercept calibration, oracle,
logging policy, log and catalog output); a `WorldSpec` is one world's content. The default world
is `training.world_default.DEFAULT`, the second one `training.world_alt.ALT`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from training.population import Population

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

CONTEXT_KEYS = ("cart_value", "call_reason_billing")  # every world's context (web cart, billing call)


class WorldLike(Protocol):
    """What a spec's functions read of a `training.world.World` (a protocol, so the spec modules
    need not import the machinery that imports them)."""

    @property
    def seed(self) -> int: ...
    @property
    def spec(self) -> WorldSpec: ...
    @property
    def tier_code(self) -> I64: ...
    @property
    def preferred_code(self) -> I64: ...
    @property
    def random_effect(self) -> F64: ...
    @property
    def strength(self) -> F64: ...
    @property
    def offer_ids(self) -> tuple[str, ...]: ...
    @property
    def offer_campaign(self) -> tuple[str, ...]: ...
    @property
    def offer_kind(self) -> tuple[str, ...]: ...
    @property
    def offer_channels(self) -> tuple[tuple[str, ...], ...]: ...
    @property
    def offer_value(self) -> F64: ...
    @property
    def offer_cost(self) -> F64: ...
    @property
    def prior_propensity(self) -> F64: ...
    @property
    def n_offers(self) -> int: ...
    def customer_column(self, name: str) -> F64: ...


# log-odds of acceptance without intercept and slopes: (world, customer, offer, channel, context, month)
Effects = Callable[[WorldLike, I64, I64, I64, Mapping[str, Any], I64], F64]
# eligibility rules in numpy, per offer kind: (world, customer, context) -> mask over rows
Rules = Callable[[WorldLike, I64, Mapping[str, F64]], dict[str, B]]


@dataclass(frozen=True)
class CampaignDef:
    id: str
    name: str
    type: str
    priority: int
    channels: tuple[str, ...]
    events: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorldSpec:
    """One synthetic world's content; `World.create(spec=...)` draws it under a seed."""

    name: str  # "default" / "alt": the `nbo simulate --world` choice
    catalog_name: str  # the catalog's `name:` prefix, followed by "-<seed>"
    n_offers: int  # default offer count
    make_population: Callable[[int, int], Population]
    campaigns: tuple[CampaignDef, ...]
    templates: tuple[tuple[str, str, tuple[str, ...]], ...]  # offer j: templates[j % len] (campaign, kind, channels)
    kinds: tuple[str, ...]
    effects: Effects
    rules: Rules
    eligibility: Mapping[str, str]  # the same rules as catalog text, per kind
    segments: Mapping[str, tuple[str, str]]  # name -> (rule, description)
    titles: Mapping[str, str]  # per kind; may use {pct}, {months}, {points}
    scripts: Mapping[str, str]
    targets: Mapping[str, list[str]] = field(default_factory=dict)
    holdouts: Mapping[str, float] = field(default_factory=dict)
    base_rate_range: tuple[float, float] = (0.01, 0.30)
    value_lognormal: tuple[float, float] = (40.0, 0.6)  # median, sigma
    value_clip: tuple[float, float] = (5.0, 250.0)
    cost_share: tuple[float, float] = (0.05, 0.25)  # cost = value x U(lo, hi)
    random_effect_sd: float = 0.3
    # linear, standardised features in the response: slope per offer = kind slope x strength;
    # response drift changes these (see training/scenarios.py)
    slope_features: tuple[str, ...] = ()
    kind_slopes: Mapping[str, tuple[float, ...]] = field(default_factory=dict)  # per kind, per slope feature
    drift_features: tuple[str, ...] = ()  # what response-drift changes: the natural arm inputs


def flag(cond: B) -> F64:
    out: F64 = cond.astype(np.float64)
    return out
