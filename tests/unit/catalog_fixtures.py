"""A small valid catalog and feature schema shared by the unit tests."""

from server.features.schema import FeatureSchema, FeatureSpec

SCHEMA = FeatureSchema(
    1,
    (
        FeatureSpec("tier", "categorical", ("A", "B", "C")),
        FeatureSpec("tenure_months", "numeric"),
        FeatureSpec("churn_risk", "numeric"),
        FeatureSpec("consent_web", "numeric"),
        FeatureSpec("consent_call", "numeric"),
    ),
)

BASE = """\
name: unit
timezone: UTC
context_keys: [cart_value]
consent: {web: consent_web, call_centre: consent_call}
min_expected_value: 0.5
contact_policy:
  window_hours: 24
  max_per_window: {web: 2}
  decline_cooldown_days: 30
  max_presented_without_response: 3
  suppression_days: 14
segments:
  vip:
    rule: 'tier == "A"'
    description: VIP
  at_risk:
    rule: 'churn_risk >= 0.5'
campaigns:
  - id: adhoc
    type: ad_hoc
    priority: 90
    channels: [web, call_centre]
    target: [vip]
  - id: trig
    type: trigger
    priority: 80
    channels: [web]
    events: [cart_abandoned]
  - id: life
    type: lifecycle
    channels: [web, call_centre]
offers:
  - id: o_adhoc
    campaign: adhoc
    title: Ad hoc
    value: 100
    cost: 1
    prior_propensity: 0.1
  - id: o_trig
    campaign: trig
    title: Trigger
    value: 20
    eligibility: 'context.cart_value >= 30'
    prior_propensity: 0.3
  - id: o_life
    campaign: life
    title: Lifecycle
    value: 10
    channels: [web]
    channel_weight: {web: 1.5}
    lever: 2
    prior_propensity: 0.2
"""
