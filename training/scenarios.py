"""Changes to a synthetic world for the closed-loop simulation: drift and a new offer.

Both return new `World`s and leave the original untouched, so the simulation can switch the
truth mid-run while the server keeps its (now stale) model.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from training.population import CHANNEL_LEVELS
from training.world import World

DRIFT_SHIFT = 1.5  # log-odds; x4.5 odds up or down for the affected offers
NEW_OFFER_ID = "loyalty_new"


def drifted(world: World, seed: int, n_changed: int = 8) -> World:
    """The same world after its response changed: half of `n_changed` offers gain `DRIFT_SHIFT`
    in log-odds, the other half lose it (the most attractive ones lose first, so a stale model
    keeps betting on offers that went off)."""
    rng = np.random.default_rng([world.seed, seed, 31])
    order = np.argsort(-world.base_rate * world.offer_value)
    losers = order[: n_changed // 2]
    rest = order[n_changed // 2 :]
    winners = rng.choice(rest, size=n_changed - n_changed // 2, replace=False)
    intercept = world.intercept.copy()
    intercept[losers] -= DRIFT_SHIFT
    intercept[winners] += DRIFT_SHIFT
    return dataclasses.replace(world, intercept=intercept)


def changed_offers(before: World, after: World) -> list[str]:
    return [o for o, a, b in zip(before.offer_ids, before.intercept, after.intercept, strict=True) if a != b]


def with_new_offer(
    world: World,
    *,
    campaign: str = "spring_sale",
    kind: str = "loyalty",
    channels: tuple[str, ...] = ("web", "call_centre"),
    base_rate: float = 0.22,
    value: float = 60.0,
    prior_propensity: float = 0.06,
    cost: float = 1.0,
) -> World:
    """The world with one more offer that the propensity model has never seen: a good one (base
    rate `base_rate`) that the marketers underestimate (`prior_propensity`), cheap enough that its
    prior expected value passes the catalog's minimum (else the pipeline drops it before any
    policy sees it)."""
    k = world.n_offers
    on_channel = np.zeros((len(CHANNEL_LEVELS), k + 1), dtype=bool)
    on_channel[:, :k] = world.on_channel
    for name in channels:
        on_channel[CHANNEL_LEVELS.index(name), k] = True
    extended = dataclasses.replace(
        world,
        offer_ids=(*world.offer_ids, NEW_OFFER_ID),
        offer_campaign=(*world.offer_campaign, campaign),
        offer_kind=(*world.offer_kind, kind),
        offer_channels=(*world.offer_channels, channels),
        offer_value=np.append(world.offer_value, value),
        offer_cost=np.append(world.offer_cost, cost),
        prior_propensity=np.append(world.prior_propensity, prior_propensity),
        base_rate=np.append(world.base_rate, base_rate),
        strength=np.append(world.strength, 1.2),
        intercept=np.append(world.intercept, 0.0),
        on_channel=on_channel,
    )
    # calibrate only the new offer: the others keep the intercepts the model was trained on
    calibrated = extended._calibrate(np.random.default_rng([world.seed, 2, k]))
    intercept = np.append(world.intercept, calibrated[-1])
    return dataclasses.replace(extended, intercept=intercept)
