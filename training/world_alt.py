"""A second synthetic world (`nbo simulate --world alt`): a telecom with other customers
(training.population.make_alt_population), 24 offers over seven campaigns of all three kinds,
dearer offers (value ~ lognormal around 90, 15-400; cost 2-12 % of value; base rates 3-25 %) and
its own hidden response:

============  ==========================================================================  ===========
kind          threshold effects on the log-odds                                            slopes
                                                                                          (age, sat.)
============  ==========================================================================  ===========
bundle        +1.2 household >= 3, +0.6 on the web with >= 10 app sessions, +0.4 tier B    0, +0.8
roaming       +1.5 tier A using > 15 GB, +0.7 using > 15 GB, -0.5 in the call centre        -0.6, 0
device        +1.0 contract ends within 3 months, +0.8 spend trend > 0.3, +0.5 under 35    -0.9, 0
              using > 12 GB
retention     +1.8 contract ends within 2 months and satisfaction < 5, +0.7 call centre,   0, -1.0
              +0.6 with >= 2 support calls
family        +1.4 household >= 4, +0.5 tier B, -0.6 living alone                         +0.8, 0
streaming     +1.3 >= 15 app sessions, +0.5 web, -0.4 call centre                          -1.0, +0.4
insurance     +1.1 no late payment and not tier C, +0.6 household >= 3 aged 40+            +0.9, 0
payment_plan  call centre: +2.0 billing call with a late payment, -1.0 other calls         0, -0.4
============  ==========================================================================  ===========

The slopes are log-odds per standard deviation of `age` and `satisfaction` over the world's
customers (linear, centred: they move who responds, not the offer's mean). Kind effects and
slopes are scaled by the offer's strength; every offer also gets +0.4 on the customer's preferred
channel, -0.6 when spend_trend < -0.5 and a per-customer random effect N(0, 0.4). Intercepts are
calibrated to the base rates as in the default world. Response drift (training/scenarios.py)
changes the slopes on `age` and `satisfaction`, so those two are the natural arm inputs
(`nbo simulate --world alt --arm-inputs age,satisfaction`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from training.population import CHANNEL_LEVELS, make_alt_population
from training.world_default import context_value
from training.world_spec import F64, I64, B, CampaignDef, WorldLike, WorldSpec, flag

CC, WEB = CHANNEL_LEVELS.index("call_centre"), CHANNEL_LEVELS.index("web")
KINDS = ("bundle", "roaming", "device", "retention", "family", "streaming", "insurance", "payment_plan")
SLOPE_FEATURES = ("age", "satisfaction")

CAMPAIGNS = (
    CampaignDef("bundle_week", "Bundle week", "ad_hoc", 80, ("web", "call_centre")),
    CampaignDef("device_refresh", "Device refresh", "ad_hoc", 65, ("web", "call_centre")),
    CampaignDef("contract_end", "Contract ending", "trigger", 70, ("call_centre", "web"), ("contract_expiry",)),
    CampaignDef("payment_trouble", "Payment difficulty", "trigger", 35, ("call_centre",), ("late_payment",)),
    CampaignDef("app_engagement", "App engagement", "trigger", 45, ("web",), ("app_login",)),
    CampaignDef("lifecycle_family", "Family journey", "lifecycle", 50, ("web", "call_centre", "email")),
    CampaignDef("lifecycle_care", "Care journey", "lifecycle", 40, ("call_centre", "web", "email")),
)

TEMPLATES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("bundle_week", "bundle", ("web", "call_centre")),
    ("device_refresh", "device", ("web", "call_centre")),
    ("contract_end", "retention", ("call_centre", "web")),
    ("payment_trouble", "payment_plan", ("call_centre",)),
    ("app_engagement", "streaming", ("web",)),
    ("lifecycle_family", "family", ("web", "call_centre")),
    ("lifecycle_care", "insurance", ("call_centre", "web")),
    ("bundle_week", "roaming", ("web",)),
    ("device_refresh", "insurance", ("web", "call_centre")),
    ("contract_end", "device", ("call_centre",)),
    ("lifecycle_care", "streaming", ("web", "call_centre")),
    ("app_engagement", "bundle", ("web",)),
)

ELIGIBILITY = {
    "device": "contract_months_left <= 6",
    "insurance": 'tier in ["A", "B"]',
    "family": "household_size >= 2",
}

SEGMENTS = {
    "premium": ('tier == "A"', "Premium customer"),
    "families": ("household_size >= 3", "Household of three or more"),
    "heavy_users": ("data_usage_gb >= 12", "Uses a lot of data"),
    "contract_ending": ("contract_months_left <= 3", "Contract ends within three months"),
    "unhappy": ("satisfaction < 5 or support_calls_90d >= 3", "Unhappy or calling support often"),
    "app_fans": ('app_sessions_30d >= 10 or preferred_channel in ["web", "mobile_app"]', "Uses the app"),
    "everyone": ("true", "All customers"),
}

TITLES = {
    "bundle": "Bundle TV and broadband - save {pct}%",
    "roaming": "Travel pass: {pct}% off roaming",
    "device": "A new phone at half price for {months} months",
    "retention": "Stay with us: {pct}% off for {months} months",
    "family": "Add a family line - {months} months free",
    "streaming": "{months} months of streaming on us",
    "insurance": "Device cover - the first {months} months free",
    "payment_plan": "Spread your bill over {months} months",
}

SCRIPTS = {
    "bundle": "Walk them through the bundle price; installation is free this week.",
    "roaming": "The travel pass starts the day they land; no need to call us.",
    "device": "The new phone ships tomorrow; the old one can be traded in.",
    "retention": "Thank them for their years with us; the discount starts on the next bill.",
    "family": "The extra line shares the data allowance; the SIM arrives in two days.",
    "streaming": "Streaming is added to their plan today; they can cancel at any time.",
    "insurance": "Cover starts today and includes theft and screen damage.",
    "payment_plan": "Offer to split the bill interest-free; no credit check is needed.",
}
TARGETS = {"bundle_week": ["families", "heavy_users", "premium"], "lifecycle_care": ["everyone"]}
HOLDOUTS = {"bundle_week": 0.1}
KIND_SLOPES = {  # per sd of (age, satisfaction)
    "bundle": (0.0, 0.8),
    "roaming": (-0.6, 0.0),
    "device": (-0.9, 0.0),
    "retention": (0.0, -1.0),
    "family": (0.8, 0.0),
    "streaming": (-1.0, 0.4),
    "insurance": (0.9, 0.0),
    "payment_plan": (0.0, -0.4),
}


def _effects(world: WorldLike, customer: I64, offer: I64, channel: I64, context: Mapping[str, Any], month: I64) -> F64:
    """Threshold effects and interactions (the table above); the slopes are added by World."""
    col = world.customer_column
    f = flag
    tier = world.tier_code[customer]
    tier_a, tier_b, tier_c = f(tier == 0), f(tier == 1), f(tier == 2)
    age, household = col("age")[customer], col("household_size")[customer]
    data, sessions = col("data_usage_gb")[customer], col("app_sessions_30d")[customer]
    left, sat = col("contract_months_left")[customer], col("satisfaction")[customer]
    calls, late = col("support_calls_90d")[customer], col("late_payments_12m")[customer]
    trend = col("spend_trend")[customer]
    web, cc = f(channel == WEB), f(channel == CC)
    billing = np.nan_to_num(context_value(context, "call_reason_billing", len(customer)), nan=0.0)
    kind = np.array([KINDS.index(k) for k in world.offer_kind], dtype=np.int64)[offer]
    per_kind = np.select(
        [kind == KINDS.index(k) for k in KINDS],
        [
            1.2 * f(household >= 3) + 0.6 * web * f(sessions >= 10) + 0.4 * tier_b,
            1.5 * tier_a * f(data > 15) + 0.7 * f(data > 15) - 0.5 * cc,
            1.0 * f(left <= 3) + 0.8 * f(trend > 0.3) + 0.5 * f((age < 35) & (data > 12)),
            1.8 * f((left <= 2) & (sat < 5)) + 0.7 * cc + 0.6 * f(calls >= 2),
            1.4 * f(household >= 4) + 0.5 * tier_b - 0.6 * f(household == 1),
            1.3 * f(sessions >= 15) + 0.5 * web - 0.4 * cc,
            1.1 * f(late == 0) * (1 - tier_c) + 0.6 * f((household >= 3) & (age >= 40)),
            cc * (2.0 * billing * f(late >= 1) - 1.0 * (1 - billing)),
        ],
    )
    pref = world.preferred_code[customer]
    common = 0.4 * f(pref == channel) - 0.6 * f(trend < -0.5) + world.random_effect[customer]
    out: F64 = world.strength[offer] * per_kind + common
    return out


def _rules(world: WorldLike, customer: I64, context: Mapping[str, F64]) -> dict[str, B]:
    col = world.customer_column
    return {
        "device": col("contract_months_left")[customer] <= 6,
        "insurance": world.tier_code[customer] <= 1,
        "family": col("household_size")[customer] >= 2,
    }


ALT = WorldSpec(
    name="alt",
    catalog_name="synthetic-alt-world",
    n_offers=24,
    make_population=make_alt_population,
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
    base_rate_range=(0.03, 0.25),
    value_lognormal=(90.0, 0.5),
    value_clip=(15.0, 400.0),
    cost_share=(0.02, 0.12),
    random_effect_sd=0.4,
    slope_features=SLOPE_FEATURES,
    kind_slopes=KIND_SLOPES,
    drift_features=SLOPE_FEATURES,
)
