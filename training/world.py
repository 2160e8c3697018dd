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

This module is the machinery; what a world contains (the offers' campaigns and kinds, the
customers, the response above, eligibility and catalog text) is a `WorldSpec`:
training/world_default.py describes the world above (`DEFAULT`), training/world_alt.py a second
one (`ALT`, `nbo simulate --world alt`: 24 offers, other customers and another response). A spec
may add linear slopes on standardised customer features (`World.slopes`, z = (x - mean) / sd over
the world's customers); the default world has none until a response drift adds some
(training/scenarios.py).

CLI: `python -m training.world --out DIR [--world default|alt] --customers N --decisions M --seed S`.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from training.dataset import CONTEXT_PREFIX, write_dataset
from training.population import CATEGORICAL, CHANNEL_LEVELS, Population
from training.world_alt import ALT
from training.world_catalog import catalog_yaml
from training.world_default import CAMPAIGNS, DEFAULT, KINDS
from training.world_spec import CONTEXT_KEYS, F64, I64, B, CampaignDef, WorldSpec

__all__ = ["CAMPAIGNS", "CONTEXT_KEYS", "KINDS", "WORLDS", "CampaignDef", "World", "WorldSpec"]
WORLDS = {spec.name: spec for spec in (DEFAULT, ALT)}  # `--world` choices

CC, WEB = CHANNEL_LEVELS.index("call_centre"), CHANNEL_LEVELS.index("web")
TIERS = ("A", "B", "C")
DEFAULT_START_TS = 1767225600.0  # 2026-01-01T00:00:00Z
WEB_SHARE = 0.6
BILLING_SHARE = 0.3
POLICY_RATIO = 4.0  # the most likely offer is at most this many times likelier than the least
BASE_RATE_RANGE = DEFAULT.base_rate_range


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


def _months(timestamps: Any, n: int) -> I64:
    """UTC calendar month (1-12) of epoch-second timestamps; 0 (no month) when None."""
    if timestamps is None:
        return np.zeros(n, dtype=np.int64)
    ts = np.broadcast_to(np.asarray(timestamps, dtype=np.float64), (n,))
    months: I64 = ts.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64) % 12 + 1
    return months


def _draw_offers(spec: WorldSpec, n_offers: int, rng: np.random.Generator) -> dict[str, Any]:
    """Offer ids, campaigns, channels, value, cost, base rate, prior, strength and the logging
    policy's temperature (the draws, in this order, are the default world's since its start)."""
    templates = [spec.templates[j % len(spec.templates)] for j in range(n_offers)]
    kinds = tuple(t[1] for t in templates)
    lo, hi = _logit(spec.base_rate_range[0]), _logit(spec.base_rate_range[1])
    grid = np.linspace(lo, hi, n_offers) if n_offers > 1 else np.array([(lo + hi) / 2])
    base_rate = np.round(_sigmoid(rng.permutation(grid)), 4)
    median, sigma = spec.value_lognormal
    value = np.clip(np.round(rng.lognormal(math.log(median), sigma, n_offers)), *spec.value_clip)
    cost = np.round(value * rng.uniform(*spec.cost_share, n_offers), 1)
    prior = np.clip(np.round(base_rate * np.exp(rng.normal(scale=0.5, size=n_offers)), 3), 0.005, 0.6)
    strength = np.round(rng.uniform(0.6, 1.4, n_offers), 3)
    on_channel = np.zeros((len(CHANNEL_LEVELS), n_offers), dtype=bool)
    for j, (_, _, chans) in enumerate(templates):
        for c in chans:
            on_channel[CHANNEL_LEVELS.index(c), j] = True
    score = prior * value
    spread = float(score.max() - score.min())
    return {
        "offer_ids": tuple(f"{kind}_{j + 1:02d}" for j, kind in enumerate(kinds)),
        "offer_campaign": tuple(t[0] for t in templates),
        "offer_kind": kinds,
        "offer_channels": tuple(t[2] for t in templates),
        "offer_value": value,
        "offer_cost": cost,
        "prior_propensity": prior,
        "base_rate": base_rate,
        "strength": strength,
        "on_channel": on_channel,
        "temperature": spread / math.log(POLICY_RATIO) if spread > 0 else 1.0,
    }


def _standardise(pop: Population, features: Sequence[str]) -> tuple[F64, F64, F64]:
    """Mean, sd and the standardised values (n_customers, len(features)) of customer features;
    a missing value counts as the mean."""
    if not features:
        return np.zeros(0), np.ones(0), np.zeros((len(pop.customer_ids), 0))
    x = np.column_stack([np.asarray(pop.columns[f], dtype=np.float64) for f in features])
    center = np.nanmean(x, axis=0)
    scale = np.nanstd(x, axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    z: F64 = np.nan_to_num((x - center) / scale, nan=0.0)
    return center, scale, z


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
    spec: WorldSpec = DEFAULT
    # linear response to standardised customer features (spec.slope_features): z = (x - center) / scale
    # over this world's customers (missing = 0); slopes (n_offers, n_features) are zero unless the spec
    # or a response drift sets them
    slope_center: F64 = field(default_factory=lambda: np.zeros(0))
    slope_scale: F64 = field(default_factory=lambda: np.ones(0))
    slope_z: F64 = field(default_factory=lambda: np.zeros((0, 0)))
    slopes: F64 = field(default_factory=lambda: np.zeros((0, 0)))

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def create(
        cls, n_customers: int = 20000, n_offers: int | None = None, seed: int = 7, spec: WorldSpec = DEFAULT
    ) -> World:
        """The world `spec` describes, drawn under `seed` (`n_offers` defaults to the spec's)."""
        n_offers = spec.n_offers if n_offers is None else n_offers
        if n_customers < 1 or n_offers < 1:
            raise ValueError("n_customers and n_offers must be >= 1")
        pop = spec.make_population(n_customers, seed)
        rng = np.random.default_rng([seed, 1])
        cols = pop.columns
        tier_code = np.array([TIERS.index(t) for t in cols["tier"]], dtype=np.int64)
        preferred = np.array([CHANNEL_LEVELS.index(c) for c in cols["preferred_channel"]], dtype=np.int64)
        consent = np.zeros((n_customers, len(CHANNEL_LEVELS)))
        consent[:, CC] = cols["consent_call"]
        consent[:, WEB] = cols["consent_web"]
        consent[:, CHANNEL_LEVELS.index("email")] = cols["consent_email"]
        random_effect = rng.normal(scale=spec.random_effect_sd, size=n_customers)
        offers = _draw_offers(spec, n_offers, rng)
        center, scale, z = _standardise(pop, spec.slope_features)
        # each offer's slopes are its kind's, scaled by its strength like the kind's other effects
        none = (0.0,) * len(spec.slope_features)
        kind_slopes = np.array([spec.kind_slopes.get(k, none) for k in offers["offer_kind"]]).reshape(n_offers, -1)
        slopes = kind_slopes * offers["strength"][:, None]
        world = cls(
            seed=seed,
            population=pop,
            tier_code=tier_code,
            preferred_code=preferred,
            consent=consent,
            random_effect=random_effect,
            **offers,
            intercept=np.zeros(n_offers),
            spec=spec,
            slope_center=center,
            slope_scale=scale,
            slope_z=z,
            slopes=slopes,
        )
        object.__setattr__(world, "intercept", world._calibrate(np.random.default_rng([seed, 2])))
        return world

    @property
    def n_customers(self) -> int:
        return len(self.population.customer_ids)

    @property
    def n_offers(self) -> int:
        return len(self.offer_ids)

    def feature_stats(self, name: str) -> tuple[float, float]:
        """Mean and sd of a numeric customer feature over this world's customers (missing
        values left out): the center and scale of a standardised input."""
        x = self.customer_column(name)
        return float(np.nanmean(x)), float(np.nanstd(x))

    def customer_column(self, name: str) -> F64:
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
        """Log-odds of acceptance without the per-offer intercept: the spec's effects, plus the
        linear slopes on standardised features (none in the default world until response drift)."""
        z = self.spec.effects(self, customer, offer, channel, context, month)
        if not self.slopes.any():
            return z
        out: F64 = z + np.einsum("ij,ij->i", self.slopes[offer], self.slope_z[customer])
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
        """(n, n_offers) mask: offer on the channel and its eligibility rule (the spec's) holds."""
        customer = np.asarray(customer_idx, dtype=np.int64)
        n = len(customer)
        ch = _channel_codes(channel, n)
        mask: B = self.on_channel[ch].copy()
        kinds = np.array(self.offer_kind)
        rules = self.spec.rules(self, customer, context)
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
        return catalog_yaml(self)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.world", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--customers", type=int, default=20000)
    parser.add_argument("--world", choices=sorted(WORLDS), default="default")
    parser.add_argument("--offers", type=int, default=None, help="offers (default: the world's, 30 or 24)")
    parser.add_argument("--decisions", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7, help="world seed (the log uses --log-seed)")
    parser.add_argument("--log-seed", type=int, default=11)
    parser.add_argument("--days", type=float, default=60)
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    world = World.create(args.customers, args.offers, args.seed, spec=WORLDS[args.world])
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
