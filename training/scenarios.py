"""Changes to a synthetic world for the closed-loop simulation: drift (of levels or of the
response to customer features) and a new offer.

Both return new `World`s and leave the original untouched, so the simulation can switch the
truth mid-run while the server keeps its (now stale) model.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from training.population import CHANNEL_LEVELS
from training.world import World

DRIFT_SHIFT = 1.5  # log-odds; x4.5 odds up or down for the affected offers
RESPONSE_SLOPE = 1.2  # log-odds per sd: the slope response drift gives an offer that had none
MIN_SLOPE = 0.3  # below this (per sd) an offer has no slope on the feature worth flipping
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


def response_drifted(world: World, seed: int, n_changed: int = 8) -> World:
    """The same world after how `n_changed` offers respond to customer features changed: the
    most attractive half of them and as many others drawn at random. Each changes its slope on
    one of the spec's drift features (the one it depends on most; alternating when it depends on
    none): a slope of at least MIN_SLOPE per sd flips sign (even positions) or doubles (odd); a
    smaller one becomes +-RESPONSE_SLOPE. The slopes are on standardised features, centred on
    the world's customers, and the changed offers' intercepts are calibrated again to their base
    rates (as `World.create` does), so their mean response stays: what changes is who responds,
    which a per-offer level offset cannot represent. The model stays stale."""
    spec = world.spec
    features = [spec.slope_features.index(f) for f in spec.drift_features]
    if not features:
        raise ValueError(f"world {spec.name!r} declares no drift features")
    rng = np.random.default_rng([world.seed, seed, 37])
    order = np.argsort(-world.base_rate * world.offer_value)
    top = order[: n_changed // 2]
    others = rng.choice(order[n_changed // 2 :], size=n_changed - n_changed // 2, replace=False)
    slopes = world.slopes.copy()
    for i, j in enumerate(np.concatenate([top, others])):
        current = np.abs(slopes[j, features])
        f = features[int(current.argmax())] if current.max() >= MIN_SLOPE else features[i % len(features)]
        if abs(slopes[j, f]) >= MIN_SLOPE:
            slopes[j, f] *= -1.0 if i % 2 == 0 else 2.0
        else:
            slopes[j, f] = RESPONSE_SLOPE if i % 2 == 0 else -RESPONSE_SLOPE
    steeper = dataclasses.replace(world, slopes=slopes)
    # on the same reference sample as World.create, so the unchanged offers would keep theirs exactly
    calibrated = steeper._calibrate(np.random.default_rng([world.seed, 2]))
    changed = np.any(slopes != world.slopes, axis=1)
    return dataclasses.replace(steeper, intercept=np.where(changed, calibrated, world.intercept))


def changed_offers(before: World, after: World) -> list[str]:
    """Offers whose level (intercept) or response to features (slopes) differ between the two."""
    return [
        o
        for j, o in enumerate(before.offer_ids)
        if before.intercept[j] != after.intercept[j] or not np.array_equal(before.slopes[j], after.slopes[j])
    ]


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
        slopes=np.vstack([world.slopes, np.zeros((1, world.slopes.shape[1]))]),
    )
    # calibrate only the new offer: the others keep the intercepts the model was trained on
    calibrated = extended._calibrate(np.random.default_rng([world.seed, 2, k]))
    intercept = np.append(world.intercept, calibrated[-1])
    return dataclasses.replace(extended, intercept=intercept)
