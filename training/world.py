"""A seeded synthetic world: customers, an offer catalog, a hidden response model and a logged history.

`World.create(n_customers, n_offers, seed)` builds correlated customers
(`training.population.make_population`) and `n_offers` offers spread over seven campaigns
(ad hoc, trigger and lifecycle). Each offer has a *kind* that decides how customers respond to it:

========  ==========================================================================================
kind      hidden effect on the log-odds of acceptance (thresholds, not straight lines)
========  ==========================================================================================
discount  +1.8 if price_sensitivity > 0.55, +1.0 if churn_risk > 0.3, -0.9 for tier A, +0.4 on web
upgrade   +1.6 tier A, +0.5 tier B, +0.8 tier A with tenure >= 24, -1.4 if price_sensitivity > 0.6;
          +0.8 in the call centre, -0.4 on the web
cart      (web) +1.6 if 30 <= cart_value <= 150, -1.0 above 300, +0.8 if price_sensitivity > 0.5
          and cart_value >= 80
billing   (call centre) +2.2 if the call is about billing and price_sensitivity >= 0.4,
          -1.2 if the call is not about billing
loyalty   +1.5 if tenure >= 36 months and frequency >= 4, -0.8 if tenure < 12, +0.4 if recency < 30
digital   +1.2 if digital_score > 60, -0.8 if < 35, +0.7 on the web for customers preferring
          web/mobile, -0.6 in the call centre
gift      +2.5 in the customer's birthday month (UTC month of the decision), +0.3 tier A
========  ==========================================================================================

Each kind effect is scaled by a per-offer strength in [0.6, 1.4]. On top of it, every offer gets
+0.5 when the channel is the customer's preferred one, -0.7 when recency_days > 180, and a fixed
per-customer random effect N(0, 0.3) (drawn once, so it is part of the truth). Finally each offer has
an intercept, calibrated so its mean acceptance probability over a reference sample of eligible
customers and contexts equals the offer's base rate; base rates are spread evenly in log-odds from
1 % to 30 %. `World.oracle` is the true acceptance probability; the only noise in the log is the
Bernoulli draw of the outcome.

The marketers' `prior_propensity` is a noisy guess of the base rate (x exp(N(0, 0.5))).

`World.simulate_log` replays decisions under a known logging policy: a channel (web 60 %, call
centre 40 %), a customer who consented to it, the context (`cart_value` ~ lognormal on the web,
`call_reason_billing` ~ Bernoulli(0.3) in the call centre), the offers eligible on that channel
(channel, eligibility rules as in the catalog), then a softmax over prior_propensity x value with
temperature `(max - min) / ln 4` over all offers, so no eligible offer is picked with probability
below ~1 %. Trigger events are not simulated: each decision counts as carrying its channel's
events. The log (training.dataset schema) never contains the oracle; `World.oracle_for_log`
recomputes it for evaluation.

CLI: `python -m training.world --out DIR --customers N --decisions M --seed S`.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import yaml

from training.dataset import CONTEXT_PREFIX, write_dataset
from training.population import CATEGORICAL, CHANNEL_LEVELS, Population, make_population

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

CC, WEB = CHANNEL_LEVELS.index("call_centre"), CHANNEL_LEVELS.index("web")
TIERS = ("A", "B", "C")
KINDS = ("discount", "upgrade", "cart", "billing", "loyalty", "digital", "gift")
CONTEXT_KEYS = ("cart_value", "call_reason_billing")
DEFAULT_START_TS = 1767225600.0  # 2026-01-01T00:00:00Z
WEB_SHARE = 0.6
BILLING_SHARE = 0.3
POLICY_RATIO = 4.0  # the most likely offer is at most this many times likelier than the least
BASE_RATE_RANGE = (0.01, 0.30)


@dataclass(frozen=True)
class CampaignDef:
    id: str
    name: str
    type: str
    priority: int
    channels: tuple[str, ...]
    events: tuple[str, ...] = ()


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

# eligibility rules: catalog text and the same rule in numpy (see World.eligible)
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


def _sigmoid(x: F64) -> F64:
    out: F64 = 1.0 / (1.0 + np.exp(-x))
    return out


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _channel_codes(channel: Any, n: int) -> I64:
    arr = np.asarray(channel)
    if arr.dtype.kind in "iu":
        codes: I64 = np.broadcast_to(arr.astype(np.int64), (n,)).copy()
        return codes
    arr = np.broadcast_to(arr.astype(str), (n,))
    codes = np.full(n, -1, dtype=np.int64)
    for i, name in enumerate(CHANNEL_LEVELS):
        codes[arr == name] = i
    if (codes < 0).any():
        raise ValueError(f"unknown channel {arr[codes < 0][0]!r} (channels: {', '.join(CHANNEL_LEVELS)})")
    return codes


def _context_array(context: Mapping[str, Any], key: str, n: int) -> F64:
    if key not in context:
        return np.full(n, np.nan)
    out: F64 = np.broadcast_to(np.asarray(context[key], dtype=np.float64), (n,))
    return out


def _months(timestamps: Any, n: int) -> I64:
    """UTC calendar month (1-12) of epoch-second timestamps; 0 (no month) when None."""
    if timestamps is None:
        return np.zeros(n, dtype=np.int64)
    ts = np.broadcast_to(np.asarray(timestamps, dtype=np.float64), (n,))
    months: I64 = ts.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64) % 12 + 1
    return months


@dataclass(frozen=True)
class World:
    """Customers, offers and the hidden response model. Build it with `World.create`."""

    seed: int
    population: Population
    # customers (arrays over customers)
    tier_code: I64  # index into TIERS
    preferred_code: I64  # index into CHANNEL_LEVELS
    consent: F64  # (n_customers, len(CHANNEL_LEVELS)); 0 for channels without a consent feature
    random_effect: F64
    # offers (arrays over offers)
    offer_ids: tuple[str, ...]
    offer_campaign: tuple[str, ...]
    offer_kind: tuple[str, ...]
    offer_channels: tuple[tuple[str, ...], ...]
    offer_value: F64
    offer_cost: F64
    prior_propensity: F64
    base_rate: F64
    strength: F64
    intercept: F64
    on_channel: B  # (len(CHANNEL_LEVELS), n_offers)
    temperature: float

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def create(cls, n_customers: int = 20000, n_offers: int = 30, seed: int = 7) -> World:
        if n_customers < 1 or n_offers < 1:
            raise ValueError("n_customers and n_offers must be >= 1")
        pop = make_population(n_customers, seed)
        rng = np.random.default_rng([seed, 1])
        cols = pop.columns
        tier_code = np.array([TIERS.index(t) for t in cols["tier"]], dtype=np.int64)
        preferred = np.array([CHANNEL_LEVELS.index(c) for c in cols["preferred_channel"]], dtype=np.int64)
        consent = np.zeros((n_customers, len(CHANNEL_LEVELS)))
        consent[:, CC] = cols["consent_call"]
        consent[:, WEB] = cols["consent_web"]
        consent[:, CHANNEL_LEVELS.index("email")] = cols["consent_email"]
        random_effect = rng.normal(scale=0.3, size=n_customers)

        templates = [TEMPLATES[j % len(TEMPLATES)] for j in range(n_offers)]
        kinds = tuple(t[1] for t in templates)
        ids = tuple(f"{kind}_{j + 1:02d}" for j, kind in enumerate(kinds))
        lo, hi = _logit(BASE_RATE_RANGE[0]), _logit(BASE_RATE_RANGE[1])
        grid = np.linspace(lo, hi, n_offers) if n_offers > 1 else np.array([(lo + hi) / 2])
        base_rate = np.round(_sigmoid(rng.permutation(grid)), 4)
        value = np.clip(np.round(rng.lognormal(math.log(40), 0.6, n_offers)), 5, 250)
        cost = np.round(value * rng.uniform(0.05, 0.25, n_offers), 1)
        prior = np.clip(np.round(base_rate * np.exp(rng.normal(scale=0.5, size=n_offers)), 3), 0.005, 0.6)
        strength = np.round(rng.uniform(0.6, 1.4, n_offers), 3)
        on_channel = np.zeros((len(CHANNEL_LEVELS), n_offers), dtype=bool)
        for j, (_, _, chans) in enumerate(templates):
            for c in chans:
                on_channel[CHANNEL_LEVELS.index(c), j] = True
        score = prior * value
        spread = float(score.max() - score.min())
        temperature = spread / math.log(POLICY_RATIO) if spread > 0 else 1.0

        world = cls(
            seed=seed,
            population=pop,
            tier_code=tier_code,
            preferred_code=preferred,
            consent=consent,
            random_effect=random_effect,
            offer_ids=ids,
            offer_campaign=tuple(t[0] for t in templates),
            offer_kind=kinds,
            offer_channels=tuple(t[2] for t in templates),
            offer_value=value,
            offer_cost=cost,
            prior_propensity=prior,
            base_rate=base_rate,
            strength=strength,
            intercept=np.zeros(n_offers),
            on_channel=on_channel,
            temperature=temperature,
        )
        object.__setattr__(world, "intercept", world._calibrate(np.random.default_rng([seed, 2])))
        return world

    @property
    def n_customers(self) -> int:
        return len(self.population.customer_ids)

    @property
    def n_offers(self) -> int:
        return len(self.offer_ids)

    def _col(self, name: str) -> F64:
        return np.asarray(self.population.columns[name], dtype=np.float64)

    def _draw_context(self, rng: np.random.Generator, channel: I64) -> dict[str, F64]:
        n = len(channel)
        cart = np.round(rng.lognormal(math.log(50), 0.8, n), 2)
        billing = (rng.random(n) < BILLING_SHARE).astype(np.float64)
        return {
            "cart_value": np.where(channel == WEB, cart, np.nan),
            "call_reason_billing": np.where(channel == CC, billing, np.nan),
        }

    def _calibrate(self, rng: np.random.Generator, per_offer: int = 4000) -> F64:
        """Per-offer intercepts so mean P(accept) over eligible sampled rows equals the base rate."""
        k = self.n_offers
        offer = np.repeat(np.arange(k), per_offer)
        n = len(offer)
        customer = rng.integers(0, self.n_customers, n)
        # channel: web with WEB_SHARE among the offer's channels (call centre otherwise)
        on_web, on_cc = self.on_channel[WEB][offer], self.on_channel[CC][offer]
        pick_web = rng.random(n) < WEB_SHARE
        channel = np.where(on_web & (pick_web | ~on_cc), WEB, CC)
        context = self._draw_context(rng, channel)
        month = rng.integers(1, 13, n)
        z = self._effects(customer, offer, channel, context, month)
        ok = self.eligible(customer, channel, context)[np.arange(n), offer]
        lo, hi = np.full(k, -20.0), np.full(k, 20.0)
        counts = np.maximum(np.bincount(offer, weights=ok, minlength=k), 1)
        for _ in range(50):
            mid = (lo + hi) / 2
            mean = np.bincount(offer, weights=_sigmoid(mid[offer] + z) * ok, minlength=k) / counts
            high = mean > self.base_rate
            hi = np.where(high, mid, hi)
            lo = np.where(high, lo, mid)
        out: F64 = np.round((lo + hi) / 2, 6)
        return out

    # -- the hidden response model -----------------------------------------------------------
    def _effects(self, customer: I64, offer: I64, channel: I64, context: Mapping[str, Any], month: I64) -> F64:
        """Log-odds of acceptance without the per-offer intercept (see the module docstring)."""
        n = len(customer)
        cols = self.population.columns
        tier = self.tier_code[customer]
        tier_a, tier_b = (tier == 0).astype(float), (tier == 1).astype(float)
        ps = np.asarray(cols["price_sensitivity"], dtype=np.float64)[customer]
        churn = np.asarray(cols["churn_risk"], dtype=np.float64)[customer]
        tenure = np.asarray(cols["tenure_months"], dtype=np.float64)[customer]
        freq = np.asarray(cols["frequency_12m"], dtype=np.float64)[customer]
        recency = np.asarray(cols["recency_days"], dtype=np.float64)[customer]
        digital = np.asarray(cols["digital_score"], dtype=np.float64)[customer]
        birthday = np.asarray(cols["birthday_month"], dtype=np.float64)[customer]
        pref = self.preferred_code[customer]
        web, cc = (channel == WEB).astype(float), (channel == CC).astype(float)
        cart = np.nan_to_num(_context_array(context, "cart_value", n), nan=0.0)
        billing = np.nan_to_num(_context_array(context, "call_reason_billing", n), nan=0.0)
        kind = np.array([KINDS.index(k) for k in self.offer_kind], dtype=np.int64)[offer]

        def f(cond: B) -> F64:
            return cond.astype(np.float64)

        per_kind = np.select(
            [kind == KINDS.index(k) for k in KINDS],
            [
                1.8 * f(ps > 0.55) + 1.0 * f(churn > 0.3) - 0.9 * tier_a + 0.4 * web,
                1.6 * tier_a + 0.5 * tier_b + 0.8 * tier_a * f(tenure >= 24) - 1.4 * f(ps > 0.6) + 0.8 * cc - 0.4 * web,
                web
                * (1.6 * f((cart >= 30) & (cart <= 150)) - 1.0 * f(cart > 300) + 0.8 * f((ps > 0.5) & (cart >= 80))),
                cc * (2.2 * billing * f(ps >= 0.4) - 1.2 * (1 - billing)),
                1.5 * f((tenure >= 36) & (freq >= 4)) - 0.8 * f(tenure < 12) + 0.4 * f(recency < 30),
                1.2 * f(digital > 60)
                - 0.8 * f(digital < 35)
                + 0.7 * web * f((pref == WEB) | (pref == CHANNEL_LEVELS.index("mobile_app")))
                - 0.6 * cc,
                2.5 * f(birthday == month) + 0.3 * tier_a,
            ],
        )
        common = 0.5 * f(pref == channel) - 0.7 * f(recency > 180) + self.random_effect[customer]
        out: F64 = self.strength[offer] * per_kind + common
        return out

    def oracle(
        self,
        customer_idx: npt.ArrayLike,
        offer_idx: npt.ArrayLike,
        channel: Any,
        context: Mapping[str, Any],
        timestamps: Any = None,
    ) -> F64:
        """True acceptance probability of each (customer, offer, channel, context) row, in (0, 1).

        `channel` holds names (or CHANNEL_LEVELS codes); `context` maps `cart_value` /
        `call_reason_billing` to arrays (NaN = absent); `timestamps` (epoch seconds) give the
        month for the birthday effect — without them no row is in a birthday month.
        """
        customer = np.asarray(customer_idx, dtype=np.int64)
        offer = np.broadcast_to(np.asarray(offer_idx, dtype=np.int64), customer.shape)
        n = len(customer)
        ch = _channel_codes(channel, n)
        z = self._effects(customer, offer, ch, context, _months(timestamps, n))
        return _sigmoid(self.intercept[offer] + z)

    # -- the logging policy ------------------------------------------------------------------
    def eligible(self, customer_idx: npt.ArrayLike, channel: Any, context: Mapping[str, Any]) -> B:
        """(n, n_offers) mask: offer on the channel and its eligibility rule (ELIGIBILITY) holds."""
        customer = np.asarray(customer_idx, dtype=np.int64)
        n = len(customer)
        ch = _channel_codes(channel, n)
        mask: B = self.on_channel[ch].copy()
        kinds = np.array(self.offer_kind)
        cart = _context_array(context, "cart_value", n)
        with np.errstate(invalid="ignore"):
            rules: dict[str, B] = {
                "upgrade": self.tier_code[customer] <= 1,
                "cart": cart >= 20,
                "loyalty": self._col("tenure_months")[customer] >= 6,
            }
        for kind, ok in rules.items():
            cols = np.flatnonzero(kinds == kind)
            if cols.size:
                mask[:, cols] &= ok[:, None]
        return mask

    def logging_policy(self, customer_idx: npt.ArrayLike, channel: Any, context: Mapping[str, Any]) -> F64:
        """(n, n_offers) selection probabilities: softmax of prior x value / temperature over eligible offers."""
        mask = self.eligible(customer_idx, channel, context)
        logits = (self.prior_propensity * self.offer_value) / self.temperature
        weights = np.where(mask, np.exp(logits - logits.max()), 0.0)
        total = weights.sum(axis=1, keepdims=True)
        out: F64 = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
        return out

    # -- outputs -----------------------------------------------------------------------------
    def simulate_log(
        self, n_decisions: int = 200_000, seed: int = 11, start_ts: float = DEFAULT_START_TS, days: float = 60
    ) -> dict[str, Any]:
        """A logged history in the training.dataset schema (columns dict of numpy arrays)."""
        rng = np.random.default_rng([self.seed, seed])
        n = n_decisions
        ts = start_ts + np.sort(rng.uniform(0.0, days * 86400.0, n))
        channel = np.where(rng.random(n) < WEB_SHARE, WEB, CC)
        customer = np.zeros(n, dtype=np.int64)
        for ch in (CC, WEB):
            rows = np.flatnonzero(channel == ch)
            pool = np.flatnonzero(self.consent[:, ch] == 1)
            if pool.size == 0:
                pool = np.arange(self.n_customers)
            customer[rows] = pool[rng.integers(0, pool.size, rows.size)]
        context = self._draw_context(rng, channel)
        probs = self.logging_policy(customer, channel, context)
        if (probs.sum(axis=1) == 0).any():
            raise ValueError("some decisions have no eligible offer")
        u = rng.random(n)
        offer = np.minimum((np.cumsum(probs, axis=1) < u[:, None]).sum(axis=1), self.n_offers - 1)
        # guard against rounding landing on an ineligible trailing offer
        offer = np.where(probs[np.arange(n), offer] > 0, offer, probs.argmax(axis=1))
        p_sel = probs[np.arange(n), offer]
        p_true = self.oracle(customer, offer, channel, context, ts)
        outcome = (rng.random(n) < p_true).astype(np.int64)
        ids = np.array(self.population.customer_ids)
        offers = np.array(self.offer_ids)
        names = np.array(CHANNEL_LEVELS)
        columns: dict[str, Any] = {
            "decision_id": np.char.add("D", np.char.zfill(np.arange(n).astype(str), 9)),
            "timestamp": np.round(ts, 3),
            "customer_id": ids[customer],
            "channel": names[channel],
            "placement": np.where(channel == WEB, "home_banner", ""),
            "offer_id": offers[offer],
            "selection_probability": p_sel,
            "outcome": outcome,
            "value": np.where(outcome == 1, self.offer_value[offer], 0.0),
        }
        for name, col in self.population.columns.items():
            arr = np.asarray(col)
            columns[name] = arr.astype(str)[customer] if name in CATEGORICAL else arr.astype(np.float64)[customer]
        for key in CONTEXT_KEYS:
            columns[CONTEXT_PREFIX + key] = context[key]
        return columns

    def oracle_for_log(self, columns: Mapping[str, Any] | pa.Table) -> F64:
        """The true acceptance probability of every row of a log (columns dict or pyarrow Table)."""

        def col(name: str) -> npt.NDArray[Any]:
            if isinstance(columns, pa.Table):
                return np.asarray(columns.column(name).to_numpy(zero_copy_only=False))
            return np.asarray(columns[name])

        cindex = {cid: i for i, cid in enumerate(self.population.customer_ids)}
        oindex = {oid: i for i, oid in enumerate(self.offer_ids)}
        customer = np.array([cindex[str(c)] for c in col("customer_id")], dtype=np.int64)
        offer = np.array([oindex[str(o)] for o in col("offer_id")], dtype=np.int64)
        names = columns.column_names if isinstance(columns, pa.Table) else list(columns)
        context = {
            key: np.asarray(col(CONTEXT_PREFIX + key), dtype=np.float64)
            for key in CONTEXT_KEYS
            if CONTEXT_PREFIX + key in names
        }
        return self.oracle(customer, offer, col("channel").astype(str), context, col("timestamp"))

    def write_features(self, path: Path | str) -> None:
        """The customers' features as a CSV the server loads (`nbo features load`)."""
        self.population.write_csv(str(path))

    def catalog_yaml(self) -> str:
        """A catalog for this world's offers, valid against its feature schema."""
        used = {c for c in self.offer_campaign}
        campaigns = []
        for c in CAMPAIGNS:
            if c.id not in used:
                continue
            spec: dict[str, Any] = {"id": c.id, "name": c.name, "type": c.type, "priority": c.priority}
            spec["channels"] = list(c.channels)
            if c.events:
                spec["events"] = list(c.events)
            if c.id in TARGETS:
                spec["target"] = TARGETS[c.id]
            if c.id in HOLDOUTS:
                spec["holdout"] = HOLDOUTS[c.id]
            campaigns.append(spec)
        offers = []
        for j, oid in enumerate(self.offer_ids):
            kind = self.offer_kind[j]
            title = TITLES[kind].format(pct=10 + 5 * (j % 5), months=3 + 3 * (j % 2), points=250 * (1 + j % 4))
            offer: dict[str, Any] = {
                "id": oid,
                "campaign": self.offer_campaign[j],
                "title": title,
                "script": SCRIPTS[kind],
                "value": float(self.offer_value[j]),
                "cost": float(self.offer_cost[j]),
                "channels": list(self.offer_channels[j]),
            }
            if kind in ELIGIBILITY:
                offer["eligibility"] = ELIGIBILITY[kind]
            offer["prior_propensity"] = float(self.prior_propensity[j])
            offers.append(offer)
        doc: dict[str, Any] = {
            "name": f"synthetic-world-{self.seed}",
            "timezone": "UTC",
            "context_keys": list(CONTEXT_KEYS),
            "consent": {"call_centre": "consent_call", "web": "consent_web", "email": "consent_email"},
            "consent_missing": "deny",
            "min_expected_value": 0.1,
            "contact_policy": {
                "window_hours": 24,
                "max_per_window": {"call_centre": 3, "web": 6, "email": 1},
                "decline_cooldown_days": 30,
                "max_presented_without_response": 3,
                "suppression_days": 14,
            },
            "control_group": {"fraction": 0.05, "salt": f"world-{self.seed}"},
            "segments": {name: {"rule": rule, "description": desc} for name, (rule, desc) in SEGMENTS.items()},
            "campaigns": campaigns,
            "offers": offers,
        }
        header = (
            f"# Synthetic world catalog (training.world, seed {self.seed}): {self.n_offers} offers.\n"
            "# Generated; see training/world.py for the hidden response model behind it.\n"
        )
        return header + yaml.safe_dump(doc, sort_keys=False, width=120, default_flow_style=None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.world", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--customers", type=int, default=20000)
    parser.add_argument("--offers", type=int, default=30)
    parser.add_argument("--decisions", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7, help="world seed (the log uses --log-seed)")
    parser.add_argument("--log-seed", type=int, default=11)
    parser.add_argument("--days", type=float, default=60)
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    world = World.create(args.customers, args.offers, args.seed)
    features, catalog, log = out / "customers.csv", out / "catalog.yaml", out / "log.parquet"
    world.write_features(features)
    catalog.write_text(world.catalog_yaml())
    columns = world.simulate_log(args.decisions, seed=args.log_seed, days=args.days)
    write_dataset(log, columns)
    rate = float(np.mean(columns["outcome"]))
    print(f"wrote {features} ({world.n_customers} customers)")
    print(f"wrote {catalog} ({world.n_offers} offers)")
    print(f"wrote {log} ({args.decisions} decisions over {args.days:g} days)")
    print(f"acceptance rate {rate:.4f}; {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
