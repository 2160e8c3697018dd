"""A seeded synthetic customer base with correlated, realistic features.

A latent "engagement" factor and the value tier drive recency, frequency, monetary value,
tenure and consents together, so features are correlated the way real CRM data is (loyal
customers buy more often, answer more channels and churn less) rather than independent uniforms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

CATEGORICAL = ("tier", "preferred_channel")
CHANNEL_LEVELS = ("call_centre", "web", "mobile_app", "email")


@dataclass(frozen=True)
class Population:
    customer_ids: list[str]
    columns: dict[str, Any]

    def write_csv(self, path: str) -> None:
        import csv

        names = list(self.columns)
        with open(path, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["customer_id", *names])
            cols = [self.columns[n] for n in names]
            for i, cid in enumerate(self.customer_ids):
                row: list[object] = [cid]
                for col in cols:
                    v = col[i]
                    if v is None or (isinstance(v, float) and np.isnan(v)):
                        row.append("")
                    elif isinstance(v, str):
                        row.append(v)
                    else:
                        fv = float(v)
                        row.append(int(fv) if fv.is_integer() else round(fv, 4))
                out.writerow(row)


def make_population(n: int, seed: int = 7, id_prefix: str = "C") -> Population:
    rng = np.random.default_rng(seed)
    engagement = rng.normal(size=n)
    tier_draw = engagement * 0.8 + rng.normal(scale=0.6, size=n)
    tier = np.where(tier_draw > 0.9, "A", np.where(tier_draw > -0.3, "B", "C"))
    tier_boost = np.select([tier == "A", tier == "B"], [1.0, 0.3], -0.4)
    tenure = np.clip(rng.gamma(2.0, 18.0, size=n) * np.exp(0.25 * engagement), 0, 360).round()
    days_since_signup = (tenure * 30.4 + rng.integers(0, 30, size=n)).round()
    recency = np.clip(rng.exponential(40.0 * np.exp(-0.6 * engagement)), 0, 730).round()
    frequency = rng.poisson(np.exp(1.2 + 0.5 * engagement + 0.4 * tier_boost))
    monetary = np.round(frequency * rng.lognormal(3.6 + 0.5 * tier_boost, 0.5), 2)
    birthday_month = rng.integers(1, 13, size=n).astype(np.float64)
    open_quotes = rng.poisson(np.clip(0.3 + 0.3 * engagement, 0.05, None)).astype(np.float64)
    web_affinity = engagement + rng.normal(scale=1.0, size=n)
    pref_idx = np.select([web_affinity > 0.8, web_affinity > 0.0, web_affinity > -0.8], [1, 2, 3], 0)
    preferred = [CHANNEL_LEVELS[i] for i in pref_idx]
    consent_call = (rng.random(n) < 0.85).astype(np.float64)
    consent_web = (rng.random(n) < 0.93).astype(np.float64)
    consent_email = (rng.random(n) < np.clip(0.55 + 0.15 * engagement, 0.05, 0.98)).astype(np.float64)
    churn_risk = 1 / (1 + np.exp(1.0 + 0.9 * engagement - 0.01 * recency + rng.normal(scale=0.4, size=n)))
    digital_score = np.clip(50 + 15 * web_affinity + rng.normal(scale=8, size=n), 0, 100).round(1)
    price_sensitivity = np.clip(0.5 - 0.15 * tier_boost + rng.normal(scale=0.15, size=n), 0, 1).round(3)
    # some CRM gaps, as in life
    monetary[rng.random(n) < 0.02] = np.nan
    ids = [f"{id_prefix}{i:07d}" for i in range(n)]
    return Population(
        ids,
        {
            "tier": list(tier),
            "tenure_months": tenure,
            "days_since_signup": days_since_signup,
            "recency_days": recency,
            "frequency_12m": frequency.astype(np.float64),
            "monetary_12m": monetary,
            "birthday_month": birthday_month,
            "open_quotes": open_quotes,
            "preferred_channel": preferred,
            "consent_call": consent_call,
            "consent_web": consent_web,
            "consent_email": consent_email,
            "churn_risk": churn_risk.round(4),
            "digital_score": digital_score,
            "price_sensitivity": price_sensitivity,
        },
    )


def make_alt_population(n: int, seed: int = 7, id_prefix: str = "K") -> Population:
    """The second world's customers (training/world_alt.py): a telecom base whose features are
    driven by three latent factors (digital habit, household, satisfaction) and the value tier.
    It keeps `tier`, `preferred_channel` and the consents, which the catalog machinery needs."""
    rng = np.random.default_rng([seed, 41])
    digital, family, happy = rng.normal(size=(3, n))
    tier_draw = 0.5 * happy + 0.4 * family + rng.normal(scale=0.8, size=n)
    tier = np.where(tier_draw > 0.8, "A", np.where(tier_draw > -0.4, "B", "C"))
    age = np.clip(45 - 9 * digital + 4 * family + rng.normal(scale=11, size=n), 18, 90).round()
    household = np.clip(1 + rng.poisson(np.exp(0.2 + 0.5 * family)), 1, 7).astype(np.float64)
    data_gb = np.round(rng.lognormal(np.log(8) + 0.5 * digital - 0.01 * (age - 45), 0.6), 1)
    sessions = rng.poisson(np.exp(1.8 + 0.6 * digital - 0.015 * (age - 45))).astype(np.float64)
    contract_left = rng.integers(0, 25, size=n).astype(np.float64)
    satisfaction = np.clip(6.5 + 1.8 * happy + rng.normal(scale=0.8, size=n), 0, 10).round(1)
    support_calls = rng.poisson(np.exp(-0.5 - 0.5 * happy)).astype(np.float64)
    late = rng.poisson(np.exp(-1.2 + 0.6 * (tier == "C") - 0.3 * happy)).astype(np.float64)
    spend_trend = np.round(rng.normal(scale=0.4, size=n) + 0.2 * happy, 3)
    bill = np.round(rng.lognormal(np.select([tier == "A", tier == "B"], [4.3, 3.9], 3.5), 0.3), 2)
    web_affinity = digital + rng.normal(scale=0.8, size=n)
    pref_idx = np.select([web_affinity > 0.7, web_affinity > -0.1, web_affinity > -0.9], [2, 1, 3], 0)
    consent_call = (rng.random(n) < 0.8).astype(np.float64)
    consent_web = (rng.random(n) < 0.95).astype(np.float64)
    consent_email = (rng.random(n) < np.clip(0.5 + 0.1 * happy, 0.05, 0.98)).astype(np.float64)
    bill[rng.random(n) < 0.03] = np.nan  # CRM gaps
    return Population(
        [f"{id_prefix}{i:07d}" for i in range(n)],
        {
            "tier": list(tier),
            "age": age,
            "household_size": household,
            "data_usage_gb": data_gb,
            "app_sessions_30d": sessions,
            "contract_months_left": contract_left,
            "satisfaction": satisfaction,
            "support_calls_90d": support_calls,
            "late_payments_12m": late,
            "spend_trend": spend_trend,
            "monthly_bill": bill,
            "preferred_channel": [CHANNEL_LEVELS[i] for i in pref_idx],
            "consent_call": consent_call,
            "consent_web": consent_web,
            "consent_email": consent_email,
        },
    )
