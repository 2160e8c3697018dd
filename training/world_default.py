"""The default synthetic world's content (`nbo simulate --world default`); see training/world.py
for the response model it describes and the machinery that draws it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from training.population import CHANNEL_LEVELS, make_population
from training.world_spec import F64, I64, B, CampaignDef, WorldLike, WorldSpec, flag

CC, WEB = CHANNEL_LEVELS.index("call_centre"), CHANNEL_LEVELS.index("web")
KINDS = ("discount", "upgrade", "cart", "billing", "loyalty", "digital", "gift")

CAMPAIGNS = (
    CampaignDef("winter_retention", "Winter retention push", "ad_hoc", 90, ("call_centre", "web")),
    CampaignDef("spring_sale", "Spring sale", "ad_hoc", 70, ("web", "call_centre")),
    CampaignDef("cart_rescue", "Cart rescue", "trigger", 30, ("web",), ("cart_view",)),
    CampaignDef("billing_help", "Billing question follow-up", "trigger", 60, ("call_centre",), ("billing_call",)),
    CampaignDef("win_back", "Welcome back", "trigger", 40, ("web", "call_centre"), ("login_after_absence",)),
    CampaignDef("lifecycle_onboarding", "Onboarding journey", "lifecycle", 50, ("web", "call_centre", "email")),
    CampaignDef("lifecycle_loyalty", "Loyalty journey", "lifecycle", 50, ("call_centre", "web", "email")),
)

# offer j follows template j % len: (campaign, kind, channels)
TEMPLATES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("winter_retention", "discount", ("call_centre", "web")),
    ("winter_retention", "upgrade", ("call_centre",)),
    ("cart_rescue", "cart", ("web",)),
    ("billing_help", "billing", ("call_centre",)),
    ("lifecycle_loyalty", "loyalty", ("call_centre", "web")),
    ("lifecycle_onboarding", "digital", ("web",)),
    ("win_back", "discount", ("web", "call_centre")),
    ("lifecycle_loyalty", "gift", ("call_centre", "web")),
    ("spring_sale", "upgrade", ("web", "call_centre")),
    ("lifecycle_onboarding", "digital", ("web", "call_centre")),
)

# eligibility rules: catalog text and the same rule in numpy (see _rules)
ELIGIBILITY = {
    "upgrade": 'tier in ["A", "B"]',
    "cart": "context.cart_value >= 20",
    "loyalty": "tenure_months >= 6",
}

SEGMENTS = {
    "high_value": ('tier == "A"', "High-value customer"),
    "loyal": ("tenure_months >= 36 and frequency_12m >= 4", "Loyal customer (3+ years, frequent buyer)"),
    "churn_risk": ("churn_risk >= 0.3 or recency_days > 120", "At risk of leaving"),
    "new_customer": ("days_since_signup <= 90", "New customer (first 90 days)"),
    "price_sensitive": ("price_sensitivity >= 0.55", "Responds to discounts"),
    "digital": ('digital_score >= 55 or preferred_channel in ["web", "mobile_app"]', "Prefers digital channels"),
    "everyone": ("true", "All customers"),
}

TITLES = {
    "discount": "{pct}% off your next 3 months",
    "upgrade": "Free Premium upgrade for {months} months",
    "cart": "{pct}% off this order",
    "billing": "Interest-free payment plan over {months} months",
    "loyalty": "{points} bonus loyalty points",
    "digital": "Get the app - {points} bonus points",
    "gift": "A birthday gift from us",
}

# agent talking points per offer kind
SCRIPTS = {
    "discount": "Thank them for staying with us; the discount applies automatically to the next three bills.",
    "upgrade": "Offer the Premium upgrade at no cost; mention the extra data and priority support.",
    "cart": "The discount applies at checkout to everything in the cart.",
    "billing": "Offer to spread the bill interest-free; no credit check is needed.",
    "loyalty": "The bonus points are added to their account today.",
    "digital": "Suggest the app; the bonus points arrive after the first login.",
    "gift": "Wish them a happy birthday month; a gift voucher is waiting in their account.",
}
# serving-side targeting (the simulator's logging policy ignores it: it only narrows candidates)
TARGETS = {"winter_retention": ["churn_risk", "high_value", "price_sensitive"], "lifecycle_onboarding": ["everyone"]}
HOLDOUTS = {"winter_retention": 0.1}


def context_value(context: Mapping[str, Any], key: str, n: int) -> F64:
    if key not in context:
        return np.full(n, np.nan)
    out: F64 = np.broadcast_to(np.asarray(context[key], dtype=np.float64), (n,))
    return out


def _effects(world: WorldLike, customer: I64, offer: I64, channel: I64, context: Mapping[str, Any], month: I64) -> F64:
    """Log-odds of acceptance without the per-offer intercept (see training/world.py's docstring)."""
    n = len(customer)
    col = world.customer_column
    tier = world.tier_code[customer]
    tier_a, tier_b = (tier == 0).astype(float), (tier == 1).astype(float)
    ps, churn = col("price_sensitivity")[customer], col("churn_risk")[customer]
    tenure, freq = col("tenure_months")[customer], col("frequency_12m")[customer]
    recency, digital = col("recency_days")[customer], col("digital_score")[customer]
    birthday = col("birthday_month")[customer]
    pref = world.preferred_code[customer]
    web, cc = (channel == WEB).astype(float), (channel == CC).astype(float)
    cart = np.nan_to_num(context_value(context, "cart_value", n), nan=0.0)
    billing = np.nan_to_num(context_value(context, "call_reason_billing", n), nan=0.0)
    kind = np.array([KINDS.index(k) for k in world.offer_kind], dtype=np.int64)[offer]
    f = flag
    per_kind = np.select(
        [kind == KINDS.index(k) for k in KINDS],
        [
            1.8 * f(ps > 0.55) + 1.0 * f(churn > 0.3) - 0.9 * tier_a + 0.4 * web,
            1.6 * tier_a + 0.5 * tier_b + 0.8 * tier_a * f(tenure >= 24) - 1.4 * f(ps > 0.6) + 0.8 * cc - 0.4 * web,
            web * (1.6 * f((cart >= 30) & (cart <= 150)) - 1.0 * f(cart > 300) + 0.8 * f((ps > 0.5) & (cart >= 80))),
            cc * (2.2 * billing * f(ps >= 0.4) - 1.2 * (1 - billing)),
            1.5 * f((tenure >= 36) & (freq >= 4)) - 0.8 * f(tenure < 12) + 0.4 * f(recency < 30),
            1.2 * f(digital > 60)
            - 0.8 * f(digital < 35)
            + 0.7 * web * f((pref == WEB) | (pref == CHANNEL_LEVELS.index("mobile_app")))
            - 0.6 * cc,
            2.5 * f(birthday == month) + 0.3 * tier_a,
        ],
    )
    common = 0.5 * f(pref == channel) - 0.7 * f(recency > 180) + world.random_effect[customer]
    out: F64 = world.strength[offer] * per_kind + common
    return out


def _rules(world: WorldLike, customer: I64, context: Mapping[str, F64]) -> dict[str, B]:
    cart = context_value(context, "cart_value", len(customer))
    with np.errstate(invalid="ignore"):
        return {
            "upgrade": world.tier_code[customer] <= 1,
            "cart": cart >= 20,
            "loyalty": world.customer_column("tenure_months")[customer] >= 6,
        }


DEFAULT = WorldSpec(
    name="default",
    catalog_name="synthetic-world",
    n_offers=30,
    make_population=make_population,
    campaigns=CAMPAIGNS,
    templates=TEMPLATES,
    kinds=KINDS,
    effects=_effects,
    rules=_rules,
    eligibility=ELIGIBILITY,
    segments=SEGMENTS,
    titles=TITLES,
    scripts=SCRIPTS,
    targets=TARGETS,
    holdouts=HOLDOUTS,
    # no slopes until response drift adds some: the default world's response is thresholds only
    slope_features=("price_sensitivity", "digital_score"),
    drift_features=("price_sensitivity", "digital_score"),
)
