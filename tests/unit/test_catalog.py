"""Catalog validation: a valid catalog compiles; each invalid one gives its exact messages."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from server.catalog.budgets import DAY, HOUR, TOTAL, Limits, PaceOver, Pacing, Period, per_customer_caps, reservation
from server.catalog.compiler import parse_catalog
from server.catalog.spec import CatalogInvalid
from server.domain import CampaignType, Channel
from tests.unit.catalog_fixtures import BASE, SCHEMA


def errors_of(text: str) -> list[str]:
    with pytest.raises(CatalogInvalid) as info:
        parse_catalog(text, SCHEMA)
    return [e.format("c.yaml") for e in info.value.errors]


def test_valid_catalog_compiles_into_channel_views() -> None:
    catalog = parse_catalog(BASE, SCHEMA, version="7-abc")
    assert catalog.version == "7-abc"
    assert [c.type for c in catalog.campaigns] == [CampaignType.AD_HOC, CampaignType.TRIGGER, CampaignType.LIFECYCLE]
    # ad hoc tier 0, high-priority trigger tier 1, lifecycle tier 2
    assert [c.tier for c in catalog.campaigns] == [0, 1, 2]
    web = catalog.views[Channel.WEB]
    assert [catalog.offers[i].id for i in web.offers] == ["o_adhoc", "o_trig", "o_life"]
    assert web.weight.tolist() == [1.0, 1.0, 1.5]
    assert web.lever.tolist() == [1.0, 1.0, 2.0]
    call = catalog.views[Channel.CALL_CENTRE]
    assert [catalog.offers[i].id for i in call.offers] == ["o_adhoc"]
    assert catalog.views[Channel.EMAIL].offers == ()
    assert catalog.consent == {Channel.WEB: 3, Channel.CALL_CENTRE: 4}
    assert catalog.contact_policy.max_per_window == {Channel.WEB: 2}
    assert catalog.contact_policy.decline_cooldown_seconds == 30 * 86400


def test_an_offers_outcome_value_bound_defaults_to_ten_times_its_value_and_at_least_ten() -> None:
    text = BASE.replace("    value: 10\n", "    value: 0\n").replace(
        "    value: 20\n", "    value: 20\n    max_value: 25\n"
    )
    catalog = parse_catalog(text, SCHEMA)
    assert [(o.id, o.max_value) for o in catalog.offers] == [("o_adhoc", 1000.0), ("o_trig", 25.0), ("o_life", 10.0)]


def test_low_priority_trigger_ranks_below_lifecycle() -> None:
    catalog = parse_catalog(BASE.replace("priority: 80", "priority: 20"), SCHEMA)
    assert [c.tier for c in catalog.campaigns] == [0, 3, 2]


def test_dates_are_in_the_catalog_time_zone_and_a_bare_end_date_is_inclusive() -> None:
    text = BASE.replace("timezone: UTC", "timezone: Europe/Amsterdam").replace(
        "    priority: 90\n", "    priority: 90\n    start: 2026-11-20\n    end: 2026-11-30\n"
    )
    camp = parse_catalog(text, SCHEMA).campaigns[0]
    assert camp.start == 1795129200.0  # 2026-11-20T00:00+01:00
    assert camp.end == 1796079600.0  # 2026-12-01T00:00+01:00
    assert camp.live(1796079599.0) and not camp.live(1796079600.0) and not camp.live(1795129199.0)


INVALID = [
    pytest.param(
        ("channels: [web]\n    channel_weight", "channels: [fax]\n    channel_weight"),
        ['c.yaml:49:16: offers[2].channels[0]: unknown channel "fax" (channels: call_centre, web, mobile_app, email)'],
        id="unknown-offer-channel",
    ),
    pytest.param(
        ("type: lifecycle", "type: journey"),
        ['c.yaml:30:5: campaigns[2].type: unknown campaign type "journey" (types: ad_hoc, trigger, lifecycle)'],
        id="unknown-type",
    ),
    pytest.param(
        ("target: [vip]", "target: [vipp]"),
        ['c.yaml:23:14: campaigns[0].target[0]: unknown segment "vipp"; did you mean "vip"?'],
        id="unknown-segment",
    ),
    pytest.param(
        ("campaign: life", "campaign: lifecycle"),
        ['c.yaml:46:5: offers[2].campaign: unknown campaign "lifecycle"; did you mean "life"?'],
        id="unknown-campaign",
    ),
    pytest.param(
        ("value: 20\n", "value: twenty\n"),
        ["c.yaml:42:5: offers[1].value: must be a number, got 'twenty'"],
        id="value-not-a-number",
    ),
    pytest.param(
        ("prior_propensity: 0.3", "prior_propensity: 1.3"),
        ["c.yaml:44:5: offers[1].prior_propensity: must be <= 1.0, got 1.3"],
        id="propensity-above-one",
    ),
    pytest.param(
        ("    title: Ad hoc\n", ""),
        ["c.yaml:33:5: offers[0].title: required field is missing"],
        id="missing-title",
    ),
    pytest.param(
        ("    lever: 2\n", "    lever: 2\n    colour: red\n"),
        ["c.yaml:52:5: offers[2].colour: unknown field"],
        id="unknown-field",
    ),
    pytest.param(
        ("    events: [cart_abandoned]\n", ""),
        ["c.yaml:24:5: campaigns[1].events: a trigger campaign must list the events that fire it"],
        id="trigger-without-events",
    ),
    pytest.param(
        ("rule: 'churn_risk >= 0.5'", "rule: 'churn_rsk >= 0.5'"),
        ['c.yaml:17:5: segments.at_risk.rule: col 1: unknown feature "churn_rsk"; did you mean "churn_risk"?'],
        id="rule-unknown-feature",
    ),
    pytest.param(
        ("'tier == \"A\"'", "'tier == \"Z\"'"),
        ['c.yaml:14:5: segments.vip.rule: col 9: unknown level "Z" for tier (levels: A, B, C)'],
        id="rule-unknown-level",
    ),
    pytest.param(
        ("context.cart_value >= 30", "context.basket >= 30"),
        ['c.yaml:43:5: offers[1].eligibility: col 1: unknown context key "basket"'],
        id="rule-unknown-context",
    ),
    pytest.param(
        ("id: o_trig", "id: o_adhoc"),
        ['c.yaml:39:5: offers[1].id: duplicate offer id "o_adhoc"'],
        id="duplicate-offer",
    ),
    pytest.param(
        ("consent: {web: consent_web,", "consent: {web: consent_wbe,"),
        ['c.yaml:4:11: consent.web: unknown feature "consent_wbe"; did you mean "consent_web"?'],
        id="unknown-consent-feature",
    ),
    pytest.param(
        ("    priority: 90\n", "    priority: 90\n    start: 2026-12-01\n    end: 2026-11-01\n"),
        ["c.yaml:23:5: campaigns[0].end: end must be after start"],
        id="end-before-start",
    ),
    pytest.param(
        (
            "channels: [web]\n    events",
            "channels: [web, call_centre]\n    events: [x]\n    holdout: 1.5\n    x_events",
        ),
        [
            "c.yaml:29:5: campaigns[1].holdout: must be < 1.0, got 1.5",
            "c.yaml:30:5: campaigns[1].x_events: unknown field",
        ],
        id="several-errors-at-once",
    ),
    pytest.param(
        ("    cost: 1\n", "    cost: 1\n    budget: {total_awards: 10, pacing: {over: day}}\n"),
        ["c.yaml:38:32: offers[0].budget.pacing: pacing over the day needs daily_awards"],
        id="day-pacing-without-daily-cap",
    ),
    pytest.param(
        (
            "    priority: 90\n",
            "    priority: 90\n    budget:\n      total_awards: 100\n      pacing: {over: window}\n",
        ),
        ["c.yaml:24:7: campaigns[0].budget.pacing: pacing over the window needs the campaign's start and end"],
        id="window-pacing-without-window",
    ),
    pytest.param(
        ("    cost: 1\n", "    cost: 1\n    budget: {daily_awards: 10, pacing: {over: week}}\n"),
        ['c.yaml:38:41: offers[0].budget.pacing.over: must be "day" or "window", got "week"'],
        id="unknown-pacing-period",
    ),
    pytest.param(
        ("campaigns:\n", "channels:\n  fax: {capacity_per_hour: 3}\ncampaigns:\n"),
        ['c.yaml:19:3: channels.fax: unknown channel "fax" (channels: call_centre, web, mobile_app, email)'],
        id="capacity-of-unknown-channel",
    ),
    pytest.param(
        ("    cost: 1\n", "    cost: 1\n    budget: {total_awards: -1, per_customer: 0.5}\n"),
        [
            "c.yaml:38:14: offers[0].budget.total_awards: must be >= 0, got -1",
            "c.yaml:38:32: offers[0].budget.per_customer: must be a whole number, got 0.5",
        ],
        id="negative-and-fractional-budgets",
    ),
    pytest.param(
        ("    cost: 1\n", "    cost: 1\n    max_value: 99\n"),
        ["c.yaml:38:5: offers[0].max_value: must be >= the offer's value (100), got 99"],
        id="max-value-below-value",
    ),
    pytest.param(
        ("    cost: 1\n", "    cost: 1\n    max_value: -1\n"),
        ["c.yaml:38:5: offers[0].max_value: must be >= 0.0, got -1"],
        id="negative-max-value",
    ),
    pytest.param(
        ("campaigns:\n", "arbitration: {value: profit}\nbandit: {cross_tier: maybe}\ncampaigns:\n"),
        [
            "c.yaml:18:15: arbitration.value: must be 'value' or 'margin', got 'profit'",
            "c.yaml:19:10: bandit.cross_tier: must be true or false, got 'maybe'",
        ],
        id="arbitration-value-and-cross-tier",
    ),
    pytest.param(
        ("campaigns:\n", "campaigns: [\n"),
        ["c.yaml:19:3: (yaml): expected the node content, but found '-'"],
        id="yaml-syntax",
    ),
]


@pytest.mark.parametrize(("edit", "expected"), INVALID)
def test_invalid_catalogs_report_every_error_with_its_line(edit: tuple[str, str], expected: list[str]) -> None:
    old, new = edit
    assert old in BASE
    assert errors_of(BASE.replace(old, new, 1)) == expected


def test_offer_channel_outside_its_campaign_is_an_error() -> None:
    text = BASE.replace("channels: [web]\n    channel_weight", "channels: [email]\n    channel_weight")
    assert errors_of(text) == [
        'c.yaml:49:16: offers[2].channels[0]: channel "email" is not a channel of campaign "life"'
    ]


def test_budgets_capacity_and_pacing_compile_into_limits() -> None:
    text = BASE.replace(
        "    cost: 1\n",
        "    cost: 1.25\n    budget: {total_awards: 10, daily_awards: 4, total_spend: 99.99, pacing: {over: day}}\n",
    ).replace(
        "    priority: 90\n",
        "    priority: 90\n    start: 2027-01-01\n    end: 2027-01-31\n"
        "    budget: {total_spend: 500, per_customer: 2, pacing: {over: window, slack: 0.1}}\n",
    )
    text = text.replace("campaigns:\n", "channels: {call_centre: {capacity_per_hour: 40}}\ncampaigns:\n")
    catalog = parse_catalog(text, SCHEMA)
    offer = catalog.offers[catalog.offer_index["o_adhoc"]]
    assert offer.limits == Limits(10, 4, 9999, None, Pacing(PaceOver.DAY, 0.02))
    assert catalog.campaigns[0].limits == Limits(None, None, 50000, 2, Pacing(PaceOver.WINDOW, 0.1))
    assert catalog.campaigns[1].limits is None
    assert catalog.channel_capacity == {Channel.CALL_CENTRE: 40}
    period = Period.at(datetime(2027, 1, 16, 6, tzinfo=UTC).timestamp(), catalog.timezone)  # a quarter of a day
    checks = reservation(catalog, offer, Channel.CALL_CENTRE, datetime(2027, 1, 16, 6, tzinfo=UTC).timestamp(), period)
    assert checks is not None
    assert [(c.key, c.field, c.limit, c.incr) for c in checks.checks] == [
        (TOTAL, "o:o_adhoc:n", 10, 1),
        (TOTAL, "o:o_adhoc:spend", 9999, 125),
        (DAY, "o:o_adhoc:n", 2, 1),  # paced: floor(4 x 0.25 + max(0.02 x 4, 1))
        (DAY, "o:o_adhoc:spend", -1, 125),
        (TOTAL, "c:adhoc:n", -1, 1),
        (TOTAL, "c:adhoc:spend", 29596, 125),  # paced: floor(50000 x 15.25/31 + 5000)
        (DAY, "c:adhoc:n", -1, 1),
        (DAY, "c:adhoc:spend", -1, 125),
        (HOUR, "ch:call_centre:n", 40, 1),
    ]
    assert per_customer_caps(catalog, offer) == (-1, 2)


def test_pacing_allows_the_even_share_plus_slack_never_more_than_the_cap() -> None:
    pacing = Pacing(PaceOver.DAY, 0.05)
    assert [pacing.allowed(100, f) for f in (-0.5, 0.0, 0.1, 0.5, 0.96, 1.0, 2.0)] == [5, 5, 15, 55, 100, 100, 100]
    assert Pacing(PaceOver.DAY, 0.0).allowed(10, 0.0) == 1  # at least one award ahead of the line
    assert Pacing(PaceOver.DAY, 0.0).allowed(0, 0.5) == 0
