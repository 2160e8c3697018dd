"""Arm inputs: the catalog's declaration, the numbers drawn with, the arms' stored layout and the
contextual posterior."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.catalog.compiler import parse_catalog
from server.catalog.exploration import ArmInput, BanditPolicy
from server.catalog.spec import CatalogInvalid
from server.learning.arm_inputs import decode_inputs, encode_inputs, input_rows
from server.learning.posterior import Arm, Arms, decode_arm, encode_arm, posterior_at
from tests.unit.catalog_fixtures import BASE, SCHEMA

POLICY = BanditPolicy(
    enabled=True,
    inputs=(
        ArmInput("feature", "tenure_months", 24.0, 12.0, 1),
        ArmInput("context", "cart_value", 50.0, 25.0),
        ArmInput("model", "logit", -2.0, 1.0),
    ),
    input_prior_sd=0.5,
)


def with_inputs(lines: str) -> str:
    return BASE.replace("campaigns:\n", f"bandit:\n  inputs:\n{lines}campaigns:\n", 1)


def test_the_catalog_declares_inputs_and_names_them_with_a_signature() -> None:
    policy = parse_catalog(
        with_inputs("    - {feature: tenure_months, center: 24, scale: 12}\n    - {context: cart_value}\n"), SCHEMA
    ).bandit
    assert policy.inputs == (ArmInput("feature", "tenure_months", 24.0, 12.0, 1), ArmInput("context", "cart_value"))
    assert len(policy.signature) == 8
    # another center is another declaration: weights learned under one mean nothing under the other
    other = parse_catalog(
        with_inputs("    - {feature: tenure_months, center: 25, scale: 12}\n    - {context: cart_value}\n"), SCHEMA
    )
    assert other.bandit.signature != policy.signature
    assert parse_catalog(BASE, SCHEMA).bandit.signature == ""


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            "    - {feature: tenure}\n",
            'bandit.inputs[0].feature: unknown feature "tenure"; did you mean "tenure_months"?',
        ),
        (
            "    - {feature: tier}\n",
            'bandit.inputs[0].feature: feature "tier" is categorical; an arm input must be numeric',
        ),
        ("    - {context: basket}\n", 'bandit.inputs[0].context: "basket" is not one of the catalog\'s context_keys'),
        ("    - {feature: churn_risk, context: cart_value}\n", "bandit.inputs[0]: an input names exactly one of"),
        ("    - {model: logit}\n    - {model: logit}\n", "bandit.inputs[1]: model:logit is declared twice"),
        ("    - {model: probability}\n", "bandit.inputs[0].model: must be 'logit'"),
        ("    - {context: cart_value, scale: 0}\n", "bandit.inputs[0].scale: must be > 0.0, got 0"),
    ],
)
def test_bad_inputs_are_refused_with_their_place(lines: str, message: str) -> None:
    with pytest.raises(CatalogInvalid) as info:
        parse_catalog(with_inputs(lines), SCHEMA)
    assert any(message in e.format("c.yaml") for e in info.value.errors), [
        e.format("c.yaml") for e in info.value.errors
    ]


def test_inputs_are_standardised_clipped_and_missing_counts_as_the_center() -> None:
    vector = np.array([0, 48, 0.2, 1, 1], dtype=np.float32)
    rows = input_rows(POLICY, vector, {"cart_value": 1000.0}, np.array([0.5, 1 / (1 + math.e**2)]))
    # tenure (48 - 24) / 12; cart (1000 - 50) / 25 = 38, clipped to 5; logit(p) + 2
    np.testing.assert_allclose(rows, [[2.0, 5.0, 2.0], [2.0, 5.0, 0.0]], atol=1e-12)
    missing = input_rows(POLICY, None, {}, np.array([0.5]))
    np.testing.assert_allclose(missing, [[0.0, 0.0, 2.0]], atol=1e-12)
    nan = np.array([0, np.nan, 0.2, 1, 1], dtype=np.float32)
    assert input_rows(POLICY, nan, {"cart_value": math.nan}, np.array([0.5]))[0, :2].tolist() == [0.0, 0.0]


def test_inputs_and_arms_round_trip_as_stored() -> None:
    text = encode_inputs("ab12cd34", np.array([0.5, -1.25, 0.1]))
    assert decode_inputs(text) == ("ab12cd34", (0.5, -1.25, 0.1))
    assert decode_inputs("") == ("", ())
    arm = Arm(0.25, 40.0, 12, "ab12cd34", (0.5, -0.1), (9.0, 5.5))
    assert decode_arm(encode_arm(arm)) == arm
    assert decode_arm("0.1,4.0,3") == Arm(0.1, 4.0, 3)  # as stored before inputs existed
    assert decode_arm(encode_arm(Arm(0.1, 4.0, 3))) == Arm(0.1, 4.0, 3)
    with pytest.raises(ValueError):
        decode_arm("0.1,4.0,3,sig,0.5")


def test_the_contextual_posterior_is_the_sum_of_the_weights_draws() -> None:
    offer_ids = ("a", "b", "c")
    arms = Arms(
        3,
        {
            "a|web": Arm(0.2, 25.0, 10, POLICY.signature, (0.4, 0.0, -0.1), (16.0, 4.0, 100.0)),
            "b|web": Arm(-0.1, 4.0, 2, "0ther5ig", (9.0, 9.0, 9.0), (1.0, 1.0, 1.0)),  # another declaration
        },
    )
    x = np.array([[1.0, 2.0, 0.5], [1.0, 2.0, -0.5], [0.0, 0.0, 0.0]])
    at = np.array([0, 1, 2], dtype=np.intp)
    mean, sd, prior = posterior_at(POLICY, arms, "web", offer_ids, at, np.array([True, True, False]), x)
    prior_var = 0.5**2
    assert mean.tolist() == pytest.approx([0.2 + 0.4 - 0.05, -0.1, 0.0])
    assert sd.tolist() == pytest.approx(
        [
            math.sqrt(1 / 25 + 1 / 16 + 4 / 4 + 0.25 / 100),
            math.sqrt(1 / 4 + prior_var * (1 + 4 + 0.25)),  # its weights were learned under other inputs
            1.5,  # unlearned, no model: the new-offer prior, and inputs of 0 add nothing
        ]
    )
    assert prior.tolist() == [0.5, 0.5, 1.5]
    # without inputs the intercept alone, as before
    plain = posterior_at(POLICY, arms, "web", offer_ids, at, np.array([True, True, False]))
    assert plain[0].tolist() == [0.2, -0.1, 0.0]
