"""Write the load-test catalog: 100 offers on web and call_centre, all three campaign types.

The rules reference the feature columns of `training/population.py` (tier, tenure_months,
churn_risk, ... with `tier` and `preferred_channel` categorical), so a population written with
`make_population(n, seed).write_csv(...)` and loaded with
`nbo features load FILE --categorical tier,preferred_channel` validates against it.

Shape (deterministic for a given --seed):
  * 20 campaigns x 5 offers: 6 ad_hoc (one already ended, one with a 10 % holdout),
    7 trigger (events cart_view, cart_abandoned, login_after_absence, ...; the load-test request
    carries cart_view and login_after_absence, so some fire and some don't), 7 lifecycle;
  * 10 segments, eligibility rules on most offers (features, context.cart_value, now.month);
  * consent flags per channel, a 5 % universal control group, a few budgeted offers (huge
    budgets, so the budget counter is incremented but never runs out);
  * a contact policy with a generous frequency cap (1,000,000 per 24 h per channel) so one
    customer hammered by h2load is never capped out -- the cap check and the award write (ZADD
    to the customer's sent-set, decision key, budget INCR) still run on every decision;
  * min_expected_value 0.

    .venv/bin/python loadtest/make_catalog.py --out /tmp/loadtest_catalog.yaml
"""

from __future__ import annotations

import argparse
import random
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml

OFFERS_PER_CAMPAIGN = 5
CHANNELS = ["web", "call_centre"]
CAP = 1_000_000

SEGMENTS: dict[str, dict[str, str]] = {
    "high_value": {"rule": 'tier == "A"', "description": "High-value customer"},
    "mid_value": {"rule": 'tier in ["A", "B"]', "description": "Tier A or B"},
    "loyal": {"rule": "tenure_months >= 36 and frequency_12m >= 4", "description": "Loyal customer"},
    "churn_risk": {"rule": "churn_risk >= 0.3 or recency_days > 120", "description": "At risk of leaving"},
    "new_customer": {"rule": "days_since_signup <= 90", "description": "New customer (first 90 days)"},
    "digital": {
        "rule": 'digital_score >= 55 or preferred_channel in ["web", "mobile_app"]',
        "description": "Prefers digital channels",
    },
    "price_sensitive": {"rule": "price_sensitivity >= 0.5", "description": "Price sensitive"},
    "big_spender": {"rule": "monetary_12m >= 500", "description": "Spent 500+ in 12 months"},
    "birthday_month": {"rule": "birthday_month == now.month", "description": "Birthday this month"},
    "everyone": {"rule": "true", "description": "All customers"},
}

# (type, targets, events); events only for triggers
CAMPAIGNS: list[tuple[str, list[str], list[str]]] = [
    ("ad_hoc", ["churn_risk", "high_value"], []),
    ("ad_hoc", ["mid_value"], []),
    ("ad_hoc", ["price_sensitive", "digital"], []),
    ("ad_hoc", ["big_spender"], []),
    ("ad_hoc", [], []),  # ended yesterday-but-one: exercises the "not live" path
    ("ad_hoc", ["everyone"], []),  # 10 % campaign holdout
    ("trigger", ["everyone"], ["cart_view", "cart_abandoned"]),
    ("trigger", [], ["login_after_absence"]),
    ("trigger", ["digital"], ["search_no_result"]),
    ("trigger", [], ["billing_call"]),
    ("trigger", ["mid_value"], ["cart_abandoned"]),
    ("trigger", ["churn_risk"], ["login_after_absence", "app_install"]),
    ("trigger", [], ["page_depth_high"]),
    ("lifecycle", ["new_customer"], []),
    ("lifecycle", ["loyal", "birthday_month", "high_value"], []),
    ("lifecycle", ["churn_risk"], []),
    ("lifecycle", ["digital"], []),
    ("lifecycle", ["everyone"], []),
    ("lifecycle", ["big_spender", "loyal"], []),
    ("lifecycle", ["price_sensitive"], []),
]

ELIGIBILITY: list[str | None] = [
    None,
    "churn_risk >= 0.2",
    'tier in ["A", "B"]',
    "context.cart_value >= 30",
    "price_sensitivity >= 0.3 and not is_missing(monetary_12m)",
    "monetary_12m >= 100 or frequency_12m >= 2",
    "digital_score >= 40",
    "recency_days <= 365",
    "max(tenure_months, 1) * 2 >= 6",
    'preferred_channel != "email" and open_quotes >= 0',
    "birthday_month == now.month or context.page_depth >= 3",
    None,
]


# The production mix (loadtest/production.py): the bandit as docs/learning.md shows it, and
# every BUDGET_EVERY-th offer with total and daily budgets no run can exhaust.
BANDIT: dict[str, Any] = {
    "seed": 7,
    "samples": 256,
    "prior_sd": 0.5,
    "new_offer_sd": 1.5,
    "decay": 0.999,
    "exploration": 1.0,
    "epsilon": 0.0,
    "channels": {"call_centre": {"exploration": 0.3, "epsilon": 0.0}, "web": {"exploration": 1.0, "epsilon": 0.05}},
}
BUDGET_EVERY = 5


def build_catalog(
    seed: int = 11, today: date | None = None, *, offers_n: int = 100, production: bool = False
) -> dict[str, Any]:
    """`offers_n` offers (campaigns cycle through CAMPAIGNS, 5 offers each; the first n offers
    of a larger catalog are those of a smaller one). `production`: every campaign live, bandit
    on, every BUDGET_EVERY-th offer with total and daily budgets."""
    rng = random.Random(seed)
    today = today or date.today()
    campaigns: list[dict[str, Any]] = []
    offers: list[dict[str, Any]] = []
    n_campaigns = -(-offers_n // OFFERS_PER_CAMPAIGN)
    for ci in range(n_campaigns):
        kind, targets, events = CAMPAIGNS[ci % len(CAMPAIGNS)]
        cid = f"lt_{kind}_{ci:02d}"
        camp: dict[str, Any] = {
            "id": cid,
            "name": f"Load test {kind.replace('_', ' ')} {ci}",
            "type": kind,
            "priority": rng.choice([20, 40, 50, 60, 80, 90]),
            "channels": list(CHANNELS),
        }
        if kind == "ad_hoc":
            camp["start"] = today - timedelta(days=30)
            camp["end"] = today + timedelta(days=60)
        if ci == 4 and not production:
            camp["end"] = today - timedelta(days=2)
        if ci == 5:
            camp["holdout"] = 0.10
        if targets:
            camp["target"] = targets
        if events:
            camp["events"] = events
        campaigns.append(camp)
        for j in range(OFFERS_PER_CAMPAIGN):
            n = ci * OFFERS_PER_CAMPAIGN + j
            if n >= offers_n:
                break
            value = round(rng.uniform(10, 150), 2)
            offer: dict[str, Any] = {
                "id": f"lt_offer_{n:03d}",
                "campaign": cid,
                "title": f"Load-test offer {n}",
                "script": f"Talking points for offer {n}: mention the benefit, keep it short.",
                "value": value,
                "cost": round(value * rng.uniform(0.0, 0.15), 2),
                "prior_propensity": round(rng.uniform(0.05, 0.4), 3),
            }
            rule = ELIGIBILITY[n % len(ELIGIBILITY)]
            if rule is not None:
                offer["eligibility"] = rule
            if n % 3 == 0:
                offer["channel_weight"] = {"web": round(rng.uniform(0.8, 1.3), 2), "call_centre": 1.1}
            if n % 7 == 0:
                offer["lever"] = 1.2
            if production and n % BUDGET_EVERY == 0:
                offer["budget"] = {"total_awards": 1_000_000_000, "daily_awards": 100_000_000}
            elif not production and n % 10 == 0:
                offer["budget"] = {"total_awards": 1_000_000_000}
            offers.append(offer)
    catalog = {
        "name": "loadtest",
        "timezone": "UTC",
        "context_keys": ["cart_value", "page_depth"],
        "consent": {"web": "consent_web", "call_centre": "consent_call", "email": "consent_email"},
        "consent_missing": "deny",
        "min_expected_value": 0,
        "contact_policy": {
            "window_hours": 24,
            "max_per_window": {"web": CAP, "call_centre": CAP},
            "decline_cooldown_days": 30,
            "max_presented_without_response": 3,
            "suppression_days": 14,
        },
        "control_group": {"fraction": 0.05, "salt": "loadtest"},
        "segments": SEGMENTS,
        "campaigns": campaigns,
        "offers": offers,
    }
    if production:
        catalog["bandit"] = BANDIT
    return catalog


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--offers", type=int, default=100, help="offers in the catalog")
    parser.add_argument(
        "--production", action="store_true", help="bandit on, every campaign live, total and daily budgets"
    )
    opts = parser.parse_args()
    catalog = build_catalog(opts.seed, offers_n=opts.offers, production=opts.production)
    header = (
        f"# Load-test catalog written by loadtest/make_catalog.py: {opts.offers} offers on web and call_centre.\n"
        "# Frequency cap 1,000,000 per 24 h so a repeated customer is never capped out; the cap\n"
        "# check and the award writes still run on every decision.\n"
    )
    opts.out.write_text(header + yaml.safe_dump(catalog, sort_keys=False, width=120))
    n_offers = len(catalog["offers"])
    kinds = {k: sum(1 for c in catalog["campaigns"] if c["type"] == k) for k in ("ad_hoc", "trigger", "lifecycle")}
    print(f"wrote {opts.out}: {n_offers} offers, campaigns {kinds}, {len(catalog['segments'])} segments")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
