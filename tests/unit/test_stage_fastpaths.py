"""The eligibility stage and the model rows, built from per-catalog precomputation, against the
plain per-offer definitions they replace: same stages, same segments, same bits."""

from __future__ import annotations

from datetime import datetime
from itertools import product

import numpy as np
import numpy.typing as npt

from server.catalog.compiled import Catalog
from server.catalog.compiler import parse_catalog
from server.catalog.rules import Now
from server.domain import CampaignType, Channel
from server.features.schema import FeatureSchema, FeatureSpec
from server.models.inputs import InputColumn, InputSpec, OfferAttributes, RowTemplate, build_rows, spec_for
from server.pipeline.context import Stage
from server.pipeline.control_groups import in_holdout
from server.pipeline.eligibility import eligibility
from tests.unit.catalog_fixtures import SCHEMA

DAY = 86400.0
T0 = datetime(2026, 3, 10, 12).timestamp()
CATALOG = """\
name: fast
timezone: Europe/Paris
context_keys: [cart_value]
segments:
  vip: {rule: 'tier == "A"'}
  at_risk: {rule: 'churn_risk >= 0.5'}
  long: {rule: 'tenure_months > 24'}
campaigns:
  - {id: a, type: ad_hoc, channels: [web], target: [vip, at_risk], start: 2026-03-01, end: 2026-03-20}
  - {id: b, type: trigger, channels: [web], events: [cart, login], target: [long]}
  - {id: c, type: trigger, channels: [web], events: [login]}
  - {id: d, type: lifecycle, channels: [web], holdout: 0.5}
  - {id: e, type: lifecycle, channels: [web], target: [at_risk], end: 2026-03-12}
offers:
"""
RULES = ["churn_risk >= 0.2", 'tier in ["A", "B"]', "context.cart_value >= 30", None]


def _catalog() -> Catalog:
    offers = "".join(
        f"  - {{id: o{i}, campaign: {'abcde'[i % 5]}, title: O{i}, value: {10 + i}, prior_propensity: 0.1"
        + (f", eligibility: '{RULES[i % 4]}'" if RULES[i % 4] else "")
        + "}\n"
        for i in range(20)
    )
    return parse_catalog(CATALOG + offers, SCHEMA)


def _reference(
    catalog: Catalog,
    feats: list[float],
    context: dict[str, float],
    now: float,
    events: set[str] | None,
    customer: str | None,
    segments: dict[int, bool],
) -> npt.NDArray[np.int8]:
    """The stage definition, campaign by campaign and offer by offer."""
    view = catalog.views[Channel.WEB]
    parts = Now.from_datetime(datetime.fromtimestamp(now, catalog.timezone))

    def in_segment(s: int) -> bool:
        if s not in segments:
            segments[s] = catalog.segments[s].rule(feats, context, parts)
        return segments[s]

    camp_stage, held = [], []
    for ci in view.campaigns:
        camp = catalog.campaigns[ci]
        stage, out = Stage.ALIVE, False
        if not camp.live(now):
            stage = Stage.NOT_LIVE
        elif events is not None and camp.type is CampaignType.TRIGGER and not camp.events & events:
            stage = Stage.NOT_FIRED
        elif camp.target and not any(in_segment(s) for s in camp.target):
            stage = Stage.NOT_TARGETED
        elif customer is not None and in_holdout(camp.holdout_salt, customer, camp.holdout):
            out = True
        camp_stage.append(stage)
        held.append(out)
    stage = np.array(camp_stage, dtype=np.int8)[view.offer_campaign]
    for pos, rule in view.rules:
        if stage[pos] == Stage.ALIVE and not rule(feats, context, parts):
            stage[pos] = Stage.INELIGIBLE
    for pos in range(len(stage)):
        if stage[pos] == Stage.ALIVE and held[view.offer_campaign[pos]]:
            stage[pos] = Stage.HELD_OUT
    return stage


def test_eligibility_matches_the_per_offer_definition() -> None:
    catalog = _catalog()
    rng = np.random.default_rng(5)
    seen = set()
    for i, (when, events) in enumerate(product((-30, 0, 3, 15, 40), (None, set(), {"cart"}, {"login", "x"}))):
        for j in range(12):
            feats = [float(rng.integers(0, 3)), float(rng.integers(0, 60)), float(rng.random()), 1.0, 1.0]
            if j % 4 == 0:
                feats[2] = float("nan")
            context = {} if j % 3 == 0 else {"cart_value": float(rng.integers(0, 60))}
            customer = None if j % 5 == 0 else f"c{i}-{j}"
            now = T0 + when * DAY
            want_segments: dict[int, bool] = {}
            want = _reference(catalog, feats, context, now, events, customer, want_segments)
            segments: dict[int, bool] = {}
            got = eligibility(
                catalog,
                Channel.WEB,
                feats,
                context,
                now,
                events=events,
                customer_id=customer,
                history=None,
                segments=segments,
            )
            assert got is not None
            assert got.status.stage.tolist() == want.tolist()
            assert list(segments.items()) == list(want_segments.items())  # same segments, same order
            got.status.stage[:] = Stage.BUDGET  # the caller's copy: the next decision does not see it
            seen.add(tuple(want.tolist()))
    assert len(seen) > 20  # the grid reaches many different outcomes
    stages = {s for outcome in seen for s in outcome}
    assert stages == {
        Stage.ALIVE,
        Stage.NOT_LIVE,
        Stage.NOT_FIRED,
        Stage.NOT_TARGETED,
        Stage.INELIGIBLE,
        Stage.HELD_OUT,
    }


def test_campaigns_are_live_from_their_start_to_just_before_their_end() -> None:
    catalog = _catalog()
    feats = [0.0, 30.0, 0.9, 1.0, 1.0]  # in every target segment, passes every rule
    bounds = sorted({t for c in catalog.campaigns for t in (c.start, c.end) if t is not None})
    for now in [t + d for t in bounds for d in (-1e-6, 0.0, 1e-6)]:
        want = _reference(catalog, feats, {"cart_value": 50.0}, now, {"login"}, None, {})
        got = eligibility(
            catalog,
            Channel.WEB,
            feats,
            {"cart_value": 50.0},
            now,
            events={"login"},
            customer_id=None,
            history=None,
            segments={},
        )
        assert got is not None
        assert got.status.stage.tolist() == want.tolist()
    start = catalog.campaigns[0].start
    assert start is not None
    assert _reference(catalog, feats, {}, start, None, None, {})[0] == Stage.ALIVE
    assert _reference(catalog, feats, {}, start - 1e-6, None, None, {})[0] == Stage.NOT_LIVE


def test_shared_rules_are_grouped_once_per_view() -> None:
    catalog = _catalog()
    checks = catalog.checks[Channel.WEB]
    assert len(checks.rules) == 3  # 15 offers with a rule, 3 distinct rules
    view = catalog.views[Channel.WEB]
    assert checks.offer_group.tolist() == [i % 4 for i in range(len(view.offers))]


def test_row_template_gives_the_rows_build_rows_gives() -> None:
    catalog = _catalog()
    view = catalog.views[Channel.WEB]
    spec = spec_for(SCHEMA, ["cart_value", "page"], list(view.offer_ids[::2]), ["call_centre", "web"], ["ad_hoc"])
    # a model column the live schema lacks (NaN) and one out of the schema's order
    spec = InputSpec((InputColumn("gone", "feature"), *spec.columns[2:], spec.columns[0], spec.columns[1]))
    live = FeatureSchema(1, (*SCHEMA.features, FeatureSpec("extra", "numeric")))
    offers = OfferAttributes(view.offer_ids, view.value, view.cost, view.prior, view.campaign_types)
    template = RowTemplate(spec, live, "web", offers)
    rng = np.random.default_rng(2)
    for context in ({}, {"cart_value": 42.5}, {"cart_value": 1.0, "page": -3.0}):
        customer = rng.normal(size=len(live.features)).astype(np.float32)
        customer[1] = np.nan
        positions = np.sort(rng.choice(len(view.offers), 7, replace=False)).astype(np.intp)
        want = build_rows(
            spec,
            live,
            customer,
            context,
            "web",
            OfferAttributes(
                [view.offer_ids[p] for p in positions],
                view.value[positions],
                view.cost[positions],
                view.prior[positions],
                [view.campaign_types[p] for p in positions],
            ),
        )
        got = template.rows(positions, customer, context)
        assert got.tobytes() == want.tobytes()
        # the lacking feature is missing; the out-of-order ones carry the customer's values
        assert np.isnan(got[:, 0]).all() and np.isnan(got[:, -1]).all()
        assert (got[:, -2] == np.float64(customer[0])).all()
