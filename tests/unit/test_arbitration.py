"""Tiers first, then P x C x V x L; expected value threshold; reproducible tie-breaks."""

from __future__ import annotations

import numpy as np

from server.catalog.compiler import parse_catalog
from server.domain import Channel
from server.pipeline.arbitration import rank
from tests.unit.catalog_fixtures import BASE, SCHEMA


def test_tier_beats_score() -> None:
    catalog = parse_catalog(BASE, SCHEMA)
    view = catalog.views[Channel.WEB]  # o_adhoc (tier 0), o_trig (tier 1), o_life (tier 2)
    positions = np.arange(3)
    # the lifecycle offer has by far the best score, but tiers come first
    propensity = np.array([0.01, 0.5, 0.9])
    r = rank(view, positions, propensity, min_expected_value=-100.0)
    assert r.order.tolist() == [0, 1, 2]
    assert r.score.tolist() == [0.01 * 1 * 100 * 1, 0.5 * 1 * 20 * 1, 0.9 * 1.5 * 10 * 2]


def test_inside_a_tier_p_c_v_l_decides() -> None:
    text = BASE.replace("campaign: trig", "campaign: life").replace("    eligibility: 'context.cart_value >= 30'\n", "")
    catalog = parse_catalog(text, SCHEMA)
    view = catalog.views[Channel.WEB]  # o_adhoc, o_trig (now lifecycle, weight 1), o_life (weight 1.5, lever 2)
    r = rank(view, np.arange(3), np.array([0.1, 0.5, 0.2]), min_expected_value=0.0)
    # o_trig: 0.5*1*20*1 = 10; o_life: 0.2*1.5*10*2 = 6
    assert r.order.tolist() == [0, 1, 2]
    r = rank(view, np.arange(3), np.array([0.1, 0.2, 0.5]), min_expected_value=0.0)
    # o_trig: 4; o_life: 15
    assert r.order.tolist() == [0, 2, 1]


def test_expected_value_threshold_removes_offers() -> None:
    catalog = parse_catalog(BASE, SCHEMA)
    view = catalog.views[Channel.WEB]
    # expected values: 0.1*100-1 = 9, 0.01*20-0 = 0.2, 0.2*10-0 = 2
    r = rank(view, np.arange(3), np.array([0.1, 0.01, 0.2]), min_expected_value=0.5)
    assert r.order.tolist() == [0, 2]
    assert r.below.tolist() == [1]
    assert np.allclose(r.expected_value, [9.0, 0.2, 2.0])


def test_subset_of_positions_and_ties_break_on_catalog_order() -> None:
    text = BASE.replace("campaign: trig", "campaign: life").replace("    eligibility: 'context.cart_value >= 30'\n", "")
    text = text.replace("    channel_weight: {web: 1.5}\n    lever: 2\n", "").replace("value: 10\n", "value: 20\n")
    catalog = parse_catalog(text, SCHEMA)
    view = catalog.views[Channel.WEB]
    r = rank(view, np.array([2, 1]), np.array([0.3, 0.3]), min_expected_value=0.0)
    # equal tier, score and priority: catalog position 1 before 2 (indices into the candidate arrays)
    assert r.order.tolist() == [1, 0]
