"""The rule language: evaluation semantics, compile-time errors with columns, referenced names."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from datetime import datetime

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.catalog.rules import Now, Rule, RuleError, compile_rule
from server.features.schema import FeatureSchema, FeatureSpec, decode_vector, encode_vector

NAN = math.nan
SCHEMA = FeatureSchema(
    1,
    (
        FeatureSpec("tier", "categorical", ("A", "B", "C")),
        FeatureSpec("tenure", "numeric"),
        FeatureSpec("churn_risk", "numeric"),
        FeatureSpec("balance", "numeric"),
        FeatureSpec("channel", "categorical", ("web", "mobile_app", "store")),
    ),
)
CONTEXT_KEYS = frozenset({"cart_value", "page_views"})
# Friday 17 May 2024, 13:45
NOW = Now.from_datetime(datetime(2024, 5, 17, 13, 45))


def features(
    tier: str | None = "B",
    tenure: float = 24.0,
    churn_risk: float = 0.2,
    balance: float = 100.0,
    channel: str | None = "web",
) -> list[float]:
    """A feature list as the decision pipeline builds it; None is a missing level."""
    levels = SCHEMA.features[0].levels, SCHEMA.features[4].levels
    return [
        NAN if tier is None else float(levels[0].index(tier)),
        tenure,
        churn_risk,
        balance,
        NAN if channel is None else float(levels[1].index(channel)),
    ]


def compile_(source: str) -> Rule:
    return compile_rule(source, SCHEMA, CONTEXT_KEYS)


# (rule, features, context, now, expected)
VALID: list[tuple[str, list[float], dict[str, float], Now, bool]] = [
    # literals and constants
    ("true", features(), {}, NOW, True),
    ("false", features(), {}, NOW, False),
    ("1 < 2", features(), {}, NOW, True),
    ("2 + 3 * 4 == 14", features(), {}, NOW, True),
    ("(2 + 3) * 4 == 20", features(), {}, NOW, True),
    ("1e3 == 1000 and 0.5 == .5 and 12. == 12", features(), {}, NOW, True),
    ("-2 * -3 == 6", features(), {}, NOW, True),
    ("- - 4 == 4", features(), {}, NOW, True),
    ("10 - 4 - 3 == 3", features(), {}, NOW, True),  # left associative
    ("24 / 4 / 2 == 3", features(), {}, NOW, True),
    ("7 % 3 == 1", features(), {}, NOW, True),
    ("-7 % 3 == 2", features(), {}, NOW, True),  # Python's floored modulo
    # numeric comparisons on features
    ("tenure >= 12", features(tenure=12), {}, NOW, True),
    ("tenure >= 12", features(tenure=11.5), {}, NOW, False),
    ("tenure > 12", features(tenure=12), {}, NOW, False),
    ("tenure < 12", features(tenure=11), {}, NOW, True),
    ("tenure <= 12", features(tenure=12), {}, NOW, True),
    ("tenure == 24", features(tenure=24), {}, NOW, True),
    ("tenure != 24", features(tenure=24), {}, NOW, False),
    ("12 <= tenure", features(tenure=12), {}, NOW, True),  # constant on the left
    ("12 > tenure", features(tenure=12), {}, NOW, False),
    ("tenure > balance", features(tenure=24, balance=10), {}, NOW, True),
    ("tenure > balance", features(tenure=24, balance=100), {}, NOW, False),
    # arithmetic
    ("balance / tenure > 4", features(tenure=24, balance=100), {}, NOW, True),
    ("balance - tenure * 2 == 52", features(tenure=24, balance=100), {}, NOW, True),
    ("(balance - tenure) * 2 == 152", features(tenure=24, balance=100), {}, NOW, True),
    ("tenure % 12 == 0", features(tenure=36), {}, NOW, True),
    ("-tenure < 0", features(tenure=1), {}, NOW, True),
    ("balance + context.cart_value >= 150", features(balance=100), {"cart_value": 50}, NOW, True),
    # division and remainder by zero: missing, never an exception
    ("balance / 0 > 0", features(), {}, NOW, False),
    ("balance / 0 <= 0", features(), {}, NOW, False),
    ("is_missing(balance / 0)", features(), {}, NOW, True),
    ("is_missing(balance / tenure)", features(tenure=0), {}, NOW, True),
    ("is_missing(balance / tenure)", features(tenure=-0.0), {}, NOW, True),
    ("is_missing(balance % tenure)", features(tenure=0), {}, NOW, True),
    ("is_missing(balance / tenure)", features(tenure=4), {}, NOW, False),
    ("is_missing(1 / 0)", features(), {}, NOW, True),
    ("is_missing(now.hour / 0)", features(), {}, NOW, True),
    ("balance / tenure != 1", features(tenure=0), {}, NOW, True),  # != with a missing value
    # precedence: not > and > or
    ("tenure > 100 or tenure > 12 and churn_risk > 0.5", features(tenure=24, churn_risk=0.1), {}, NOW, False),
    ("tenure > 100 or tenure > 12 and churn_risk > 0.5", features(tenure=24, churn_risk=0.9), {}, NOW, True),
    ("tenure > 12 and churn_risk > 0.5 or tenure > 100", features(tenure=200, churn_risk=0.1), {}, NOW, True),
    ("(tenure > 100 or tenure > 12) and churn_risk > 0.5", features(tenure=24, churn_risk=0.1), {}, NOW, False),
    ("not tenure > 12 and churn_risk > 0.5", features(tenure=6, churn_risk=0.9), {}, NOW, True),
    ("not tenure > 12 or true", features(tenure=24), {}, NOW, True),
    ("not (tenure > 12 or true)", features(tenure=24), {}, NOW, False),
    ("not not tenure > 12", features(tenure=24), {}, NOW, True),
    ("true and true and true and true and tenure > 1", features(), {}, NOW, True),
    ("tenure > 1 and tenure > 2 and tenure > 3 and tenure > 4 and tenure > 30", features(tenure=24), {}, NOW, False),
    ("tenure > 1 and tenure > 2 and tenure > 3 and tenure > 4 and tenure > 5", features(tenure=24), {}, NOW, True),
    ("tenure < 1 or tenure < 2 or tenure < 3 or tenure < 4 or tenure < 30", features(tenure=24), {}, NOW, True),
    ("tenure < 1 or tenure < 2 or tenure < 3 or tenure < 4 or tenure < 5", features(tenure=24), {}, NOW, False),
    ("tenure < 1 or tenure < 2 or tenure < 30", features(tenure=24), {}, NOW, True),
    ("false or tenure > 1", features(), {}, NOW, True),
    ("false and tenure > 1", features(), {}, NOW, False),
    ("(tenure > 1) == (balance > 1)", features(tenure=24, balance=100), {}, NOW, True),
    ("(tenure > 1) != (balance > 1)", features(tenure=24, balance=0), {}, NOW, True),
    ("true == (tenure > 100)", features(), {}, NOW, False),
    # categorical ==, !=, in, not in
    ('tier == "A"', features(tier="A"), {}, NOW, True),
    ('tier == "A"', features(tier="B"), {}, NOW, False),
    ("tier == 'B'", features(tier="B"), {}, NOW, True),
    ('"A" == tier', features(tier="A"), {}, NOW, True),
    ('tier != "A"', features(tier="B"), {}, NOW, True),
    ('"A" != tier', features(tier="A"), {}, NOW, False),
    ('tier in ["A", "B"]', features(tier="B"), {}, NOW, True),
    ('tier in ["A", "B"]', features(tier="C"), {}, NOW, False),
    ('tier in ["C"]', features(tier="C"), {}, NOW, True),
    ('tier not in ["A", "B"]', features(tier="C"), {}, NOW, True),
    ('tier not in ["A", "B"]', features(tier="A"), {}, NOW, False),
    ('tier not in ["A"]', features(tier="A"), {}, NOW, False),
    ('not tier in ["A", "B"]', features(tier="C"), {}, NOW, True),
    ('channel in ["web", "mobile_app"]', features(channel="mobile_app"), {}, NOW, True),
    ('channel == "store"', features(channel="store"), {}, NOW, True),
    ("channel == 'mobile_app' and tier == 'A'", features(tier="A", channel="mobile_app"), {}, NOW, True),
    # numeric in / not in
    ("tenure in [1, 2, 3]", features(tenure=2), {}, NOW, True),
    ("tenure in [1, 2, 3]", features(tenure=2.5), {}, NOW, False),
    ("tenure in [12]", features(tenure=12), {}, NOW, True),
    ("tenure not in [1, 2, 3]", features(tenure=4), {}, NOW, True),
    ("tenure not in [1, 2, 3]", features(tenure=1), {}, NOW, False),
    ("tenure in [-1, 0.5, 1e3]", features(tenure=-1), {}, NOW, True),
    ("tenure in [-1, 0.5, 1e3]", features(tenure=1000), {}, NOW, True),
    ("tenure * 2 in [4, 6]", features(tenure=3), {}, NOW, True),
    ("context.page_views in [1, 2]", features(), {"page_views": 2}, NOW, True),
    ("context.page_views not in [1, 2]", features(), {"page_views": 2}, NOW, False),
    ("now.weekday in [5, 6]", features(), {}, NOW, False),
    ("now.weekday in [4, 5, 6]", features(), {}, NOW, True),
    # missing values: comparisons are false except != and not in
    ("tenure > 0", features(tenure=NAN), {}, NOW, False),
    ("tenure <= 0", features(tenure=NAN), {}, NOW, False),
    ("tenure == 0", features(tenure=NAN), {}, NOW, False),
    ("tenure != 0", features(tenure=NAN), {}, NOW, True),
    ("tenure == tenure", features(tenure=NAN), {}, NOW, False),
    ("tenure in [1, 2]", features(tenure=NAN), {}, NOW, False),
    ("tenure not in [1, 2]", features(tenure=NAN), {}, NOW, True),
    ("not tenure > 0", features(tenure=NAN), {}, NOW, True),
    ("tenure + 1 > 0", features(tenure=NAN), {}, NOW, False),
    ('tier == "A"', features(tier=None), {}, NOW, False),
    ('tier != "A"', features(tier=None), {}, NOW, True),
    ('tier in ["A", "B", "C"]', features(tier=None), {}, NOW, False),
    ('tier not in ["A", "B"]', features(tier=None), {}, NOW, True),
    # is_missing
    ("is_missing(tenure)", features(tenure=NAN), {}, NOW, True),
    ("is_missing(tenure)", features(tenure=0), {}, NOW, False),
    ("is_missing(tier)", features(tier=None), {}, NOW, True),
    ("is_missing(tier)", features(tier="A"), {}, NOW, False),
    ("is_missing(tenure + balance)", features(balance=NAN), {}, NOW, True),
    ("is_missing(context.cart_value)", features(), {}, NOW, True),
    ("is_missing(context.cart_value)", features(), {"cart_value": 0}, NOW, False),
    ("is_missing(tenure) or tenure >= 12", features(tenure=NAN), {}, NOW, True),
    ("not is_missing(tenure) and tenure < 12", features(tenure=NAN), {}, NOW, False),
    ("is_missing(1)", features(), {}, NOW, False),
    # functions
    ("abs(balance) == 5", features(balance=-5), {}, NOW, True),
    ("abs(-3) == 3", features(), {}, NOW, True),
    ("min(tenure, balance) == 24", features(tenure=24, balance=100), {}, NOW, True),
    ("max(tenure, balance) == 100", features(tenure=24, balance=100), {}, NOW, True),
    ("min(tenure, balance, 3) == 3", features(), {}, NOW, True),
    ("max(tenure, balance, 300, churn_risk) == 300", features(), {}, NOW, True),
    ("min(tenure, tenure) == 24", features(tenure=24), {}, NOW, True),
    ("min(1, 2) == 1 and max(1, 2) == 2", features(), {}, NOW, True),
    ("is_missing(min(tenure, balance))", features(tenure=NAN), {}, NOW, True),
    ("is_missing(min(balance, tenure))", features(tenure=NAN), {}, NOW, True),  # either position
    ("is_missing(max(tenure, balance, 1))", features(balance=NAN), {}, NOW, True),
    ("is_missing(max(balance, tenure))", features(tenure=NAN), {}, NOW, True),
    ("max(context.cart_value, 0) > 10", features(), {"cart_value": 20}, NOW, True),
    ("max(-tenure, abs(balance - 200)) == 100", features(tenure=24, balance=100), {}, NOW, True),
    # context keys: present and absent
    ("context.cart_value > 50", features(), {"cart_value": 80}, NOW, True),
    ("context.cart_value > 50", features(), {"cart_value": 20}, NOW, False),
    ("context.cart_value > 50", features(), {}, NOW, False),
    ("context.cart_value <= 50", features(), {}, NOW, False),
    ("context.cart_value != 50", features(), {}, NOW, True),
    ("50 < context.cart_value", features(), {"cart_value": 80}, NOW, True),
    ("context.cart_value > context.page_views", features(), {"cart_value": 8, "page_views": 3}, NOW, True),
    ("context.cart_value * 2 >= 100", features(), {"cart_value": 50}, NOW, True),
    ("context . cart_value == 1", features(), {"cart_value": 1}, NOW, True),  # spaces around the dot
    ("context.cart_value > 50", features(), {"cart_value": 80, "other": 1}, NOW, True),
    # now parts (Friday 17 May 2024, 13:45)
    ("now.hour == 13", features(), {}, NOW, True),
    ("now.hour >= 9 and now.hour < 18", features(), {}, NOW, True),
    ("now.hour >= 9 and now.hour < 18", features(), {}, Now(hour=18, weekday=0, month=1, day=1), False),
    ("now.weekday == 4", features(), {}, NOW, True),
    ("now.weekday < 5", features(), {}, Now(hour=0, weekday=6, month=1, day=1), False),
    ("now.month == 5", features(), {}, NOW, True),
    ("now.day == 17", features(), {}, NOW, True),
    ("now.day % 2 == 1", features(), {}, NOW, True),
    ("now.month == 12 and now.day >= 20", features(), {}, Now(hour=0, weekday=0, month=12, day=24), True),
    ("tenure == now.month", features(tenure=5), {}, NOW, True),
    # the example from the catalog
    (
        'tier in ["A","B"] and tenure >= 12 and context.cart_value > 50',
        features("A", 12),
        {"cart_value": 51},
        NOW,
        True,
    ),
    (
        'tier in ["A","B"] and tenure >= 12 and context.cart_value > 50',
        features("C", 12),
        {"cart_value": 51},
        NOW,
        False,
    ),
    (
        'tier in ["A","B"] and tenure >= 12 and context.cart_value > 50',
        features("A", 11),
        {"cart_value": 51},
        NOW,
        False,
    ),
    ('tier in ["A","B"] and tenure >= 12 and context.cart_value > 50', features("A", 12), {}, NOW, False),
    # whitespace and layout
    ("  tenure>=12\n and\ttier=='A'  ", features("A", 12), {}, NOW, True),
]


@pytest.mark.parametrize(("source", "feats", "context", "now", "expected"), VALID)
def test_evaluates(source: str, feats: list[float], context: dict[str, float], now: Now, expected: bool) -> None:
    rule = compile_(source)
    result = rule(feats, context, now)
    assert type(result) is bool
    assert result is expected


# (rule, str(RuleError))
INVALID: list[tuple[str, str]] = [
    # empty
    ("", "col 1: empty rule"),
    ("   \n\t", "col 1: empty rule"),
    # unknown names
    ("tenur >= 12", 'col 1: unknown feature "tenur"; did you mean "tenure"?'),
    ("tenure > 1 and churnrisk > 0.5", 'col 16: unknown feature "churnrisk"; did you mean "churn_risk"?'),
    ("zzz > 1", 'col 1: unknown feature "zzz"'),
    ("cart_value > 1", 'col 1: unknown feature "cart_value"; did you mean "context.cart_value"?'),
    ("tenure > 1 AND true", 'col 12: unexpected "AND"'),
    ("True", 'col 1: unknown feature "True"; did you mean "true"?'),
    ("context > 1", 'col 1: unknown feature "context"; write context.<key>'),
    ("now > 1", 'col 1: unknown feature "now"; write now.<part>'),
    ("context.cartvalue > 50", 'col 1: unknown context key "cartvalue"; did you mean "cart_value"?'),
    ("tenure > 1 or context.basket > 50", 'col 15: unknown context key "basket"'),
    ("now.hours == 1", 'col 5: unknown part "hours" of now (use now.hour, now.weekday, now.month or now.day)'),
    ("tier.x == 1", 'col 1: unknown name "tier.x"; only context.<key> and now.<part> contain a dot'),
    ("context.", 'col 9: expected a name after "."'),
    ("context.(1)", 'col 9: expected a name after "."'),
    # functions
    ("foo(1)", 'col 1: unknown function "foo"'),
    ("ismissing(tenure)", 'col 1: unknown function "ismissing"; did you mean "is_missing"?'),
    ("abs(1, 2) > 0", "col 1: abs() takes 1 argument, got 2"),
    ("is_missing()", "col 1: is_missing() takes 1 argument, got 0"),
    ("min(tenure) > 0", "col 1: min() takes at least 2 arguments, got 1"),
    ("true and max() > 0", "col 10: max() takes at least 2 arguments, got 0"),
    ("abs(tier) > 1", "col 5: abs() needs numbers, got categorical feature tier"),
    ("max(1, tenure > 1) > 1", "col 8: max() needs numbers, got true/false"),
    ('is_missing("A")', "col 12: is_missing() needs a number or a feature, got a string"),
    ("is_missing(tenure > 1)", "col 12: is_missing() needs a number or a feature, got true/false"),
    ("abs(1", 'col 6: expected ")"'),
    ("min(1 2)", 'col 7: expected ")"'),
    # categorical features
    ('tier == "Z"', 'col 9: unknown level "Z" for tier (levels: A, B, C)'),
    ('tier in ["A", "Z"]', 'col 15: unknown level "Z" for tier (levels: A, B, C)'),
    ("tier == 'a'", 'col 9: unknown level "a" for tier (levels: A, B, C)'),
    ("tier < 3", "col 8: categorical feature tier must be compared with a quoted level, got a number"),
    ("tier == 1", "col 9: categorical feature tier must be compared with a quoted level, got a number"),
    ("3 > tier", "col 1: categorical feature tier must be compared with a quoted level, got a number"),
    ('tier < "B"', 'col 6: "<" is not defined for categorical feature tier; use ==, !=, in or not in'),
    ('"B" >= tier', 'col 5: ">=" is not defined for categorical feature tier; use ==, !=, in or not in'),
    (
        "tier == channel",
        "col 9: categorical feature tier must be compared with a quoted level, got categorical feature channel",
    ),
    ('tier in ["A", 1]', "col 15: categorical feature tier must be compared with a quoted level, got a number"),
    ("tier + 1 > 2", 'col 1: "+" needs numbers, got categorical feature tier'),
    ("-tier == 1", 'col 2: "-" needs numbers, got categorical feature tier'),
    ("tier", "col 1: rule must be true/false, got categorical feature tier"),
    # strings
    ('tenure == "A"', "col 11: a string can only be compared with a categorical feature"),
    ('"A" == "A"', "col 1: a string can only be compared with a categorical feature"),
    ('tenure in [1, "A"]', "col 15: a string can only be compared with a categorical feature"),
    ('"x" + 1 > 0', 'col 1: "+" needs numbers, got a string'),
    ('1 * "x" > 0', 'col 5: "*" needs numbers, got a string'),
    ('"x"', "col 1: rule must be true/false, got a string"),
    ('"x" and true', 'col 1: "and" needs true/false, got a string'),
    # true/false where a number is needed, and the reverse
    ("tenure and true", 'col 1: "and" needs true/false, got a number'),
    ("true or tenure", 'col 9: "or" needs true/false, got a number'),
    ("not tenure", 'col 5: "not" needs true/false, got a number'),
    ("not tier", 'col 5: "not" needs true/false, got categorical feature tier'),
    ("tenure", "col 1: rule must be true/false, got a number"),
    ("tenure + 1", "col 1: rule must be true/false, got a number"),
    ("(tenure * 2)", "col 1: rule must be true/false, got a number"),
    ("context.cart_value", "col 1: rule must be true/false, got a number"),
    ("now.hour", "col 1: rule must be true/false, got a number"),
    ("min(1, 2)", "col 1: rule must be true/false, got a number"),
    ("1", "col 1: rule must be true/false, got a number"),
    ("true + 1 > 0", 'col 1: "+" needs numbers, got true/false'),
    ("(tenure > 1) * 2 > 0", 'col 1: "*" needs numbers, got true/false'),
    ("true < false", 'col 1: "<" needs numbers, got true/false'),
    ("true == 1", "col 6: cannot compare true/false with a number"),
    ("tenure == (balance > 1)", "col 8: cannot compare true/false with a number"),
    ("(tenure > 1) in [1]", 'col 14: "in" needs a number or a categorical feature on its left, got true/false'),
    ('"A" not in ["A"]', 'col 5: "not in" needs a number or a categorical feature on its left, got a string'),
    # syntax
    ("(tenure > 1", 'col 12: expected ")"'),
    ("((tenure > 1) and true", 'col 23: expected ")"'),
    ("tenure > 1)", 'col 11: unexpected ")"'),
    ("tenure > 1 and", "col 15: unexpected end of rule"),
    ("and tenure > 1", 'col 1: unexpected "and"'),
    ("tenure > 1 and and tier == 'A'", 'col 16: unexpected "and"'),
    ("tenure >", "col 9: unexpected end of rule"),
    ("tenure > > 1", 'col 10: unexpected ">"'),
    ("tenure > 1 tenure", 'col 12: unexpected "tenure"'),
    ("tenure > 1 'x'", "col 12: unexpected string 'x'"),
    ("1 2", 'col 3: unexpected "2"'),
    ("()", 'col 2: unexpected ")"'),
    ("tenure > 1 < 2", 'col 12: comparisons cannot be chained; combine them with "and"'),
    ("1 < tenure < 2", 'col 12: comparisons cannot be chained; combine them with "and"'),
    ("tenure not 1", 'col 8: unexpected "not"'),
    ("tier in", 'col 8: expected "["'),
    ('tier in "A"', 'col 9: expected "["'),
    ("tier in []", "col 10: expected a number or a quoted string"),
    ('tier in ["A",]', "col 14: expected a number or a quoted string"),
    ('tier in ["A" "B"]', 'col 14: expected "," or "]"'),
    ('tier in ["A"', 'col 13: expected "," or "]"'),
    ("tenure in [tenure]", "col 12: expected a number or a quoted string"),
    ("tenure in [true]", "col 12: expected a number or a quoted string"),
    # tokens
    ("tenure $ 1", 'col 8: unexpected character "$"'),
    ("tenure = 1", 'col 8: unexpected character "="; use "==" to compare'),
    ("tenure > 1 && true", 'col 12: unexpected character "&"; use "and"'),
    ("tenure > 1 || true", 'col 12: unexpected character "|"; use "or"'),
    ("!(tenure > 1)", 'col 1: unexpected character "!"; use "not" or "!="'),
    ('tier == "A', "col 9: unterminated string"),
    ("tier == 'A\"", "col 9: unterminated string"),
    ("tenure > 12abc", 'col 10: invalid number "12abc"'),
    ("tenure > 1e", 'col 10: invalid number "1e"'),
    ("tenure > 1_000", 'col 10: invalid number "1_000"'),
    ("tenure > \u0661", 'col 10: unexpected character "\u0661"'),  # an Arabic-Indic digit: ASCII only
    ("t\u00e9nure > 1", 'col 2: unexpected character "\u00e9"'),
    # limits
    ("(" * 60 + "true" + ")" * 60, "col 51: rule is too deeply nested"),
    ("not " * 60 + "true", "col 201: rule is too deeply nested"),
    (" + ".join(["tenure"] * 120) + " > 0", "col 1: rule is too deeply nested"),
]


@pytest.mark.parametrize(("source", "message"), INVALID)
def test_rejects(source: str, message: str) -> None:
    with pytest.raises(RuleError) as info:
        compile_(source)
    assert str(info.value) == message


def test_rule_error_fields() -> None:
    with pytest.raises(RuleError) as info:
        compile_('tier == "Z"')
    err = info.value
    assert err.column == 9
    assert err.message == 'unknown level "Z" for tier (levels: A, B, C)'
    assert str(err) == f"col 9: {err.message}"


@pytest.mark.parametrize(
    ("source", "feature_names", "context_keys"),
    [
        ("true", set(), set()),
        ("tenure > 1", {"tenure"}, set()),
        ('tier in ["A"] and tenure >= 12 and context.cart_value > 50', {"tier", "tenure"}, {"cart_value"}),
        ("tenure > balance or tenure < 0", {"tenure", "balance"}, set()),
        ("is_missing(context.page_views) or context.cart_value > 1", set(), {"page_views", "cart_value"}),
        ("now.hour > 9 and now.weekday < 5", set(), set()),
        ("max(churn_risk, 0) > 0 and channel != 'web'", {"churn_risk", "channel"}, set()),
        ("is_missing(tenure) or true", {"tenure"}, set()),  # referenced, even though folded away
    ],
)
def test_referenced_names(source: str, feature_names: set[str], context_keys: set[str]) -> None:
    rule = compile_(source)
    assert rule.source == source
    assert rule.features == frozenset(feature_names)
    assert rule.context_keys == frozenset(context_keys)


def test_context_keys_can_be_any_collection() -> None:
    for keys in (["cart_value"], ("cart_value",), {"cart_value": 1.0}, frozenset({"cart_value"})):
        rule = compile_rule("context.cart_value > 1", SCHEMA, keys)
        assert rule([], {"cart_value": 2.0}, NOW)
    with pytest.raises(RuleError, match="unknown context key"):
        compile_rule("context.cart_value > 1", SCHEMA, ())


def test_constant_rules_ignore_their_inputs() -> None:
    assert compile_("1 < 2 and not false")([], {}, NOW) is True
    assert compile_("tenure > 1 and false")([], {}, NOW) is False  # folded: no feature is read
    assert compile_("tenure > 1 or 2 > 1")([], {}, NOW) is True


def test_now_from_datetime() -> None:
    assert Now.from_datetime(datetime(2024, 12, 29, 23, 59)) == Now(hour=23, weekday=6, month=12, day=29)
    assert Now.from_datetime(datetime(2024, 1, 1, 0, 0)) == Now(hour=0, weekday=0, month=1, day=1)


def test_features_from_a_decoded_vector() -> None:
    """The pipeline passes `vector.tolist()` of a float32 vector decoded from Redis."""
    values = np.array([2.0, 12.0, np.nan, 55.5, 1.0], dtype=np.float32)
    _, vector = decode_vector(encode_vector(1, values))
    feats = vector.tolist()
    assert compile_('tier == "C" and channel == "mobile_app" and tenure >= 12 and balance > 55')(feats, {}, NOW)
    assert compile_("is_missing(churn_risk) and churn_risk != 0.5")(feats, {}, NOW)


def test_rule_is_reusable_and_comparable() -> None:
    rule = compile_("tenure >= 12")
    assert [rule(features(tenure=t), {}, NOW) for t in (11, 12, 13, NAN)] == [False, True, True, False]
    assert rule == compile_("tenure >= 12")
    assert "tenure >= 12" in repr(rule)


# -- properties ------------------------------------------------------------------------------------
PAIR_SCHEMA = FeatureSchema(1, (FeatureSpec("x", "numeric"), FeatureSpec("y", "numeric")))
COMPARE: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1.0, NAN]))


@given(x=floats, y=floats, op=st.sampled_from(sorted(COMPARE)))
def test_comparisons_follow_python_floats(x: float, y: float, op: str) -> None:
    expected = COMPARE[op](x, y)
    assert compile_rule(f"x {op} y", PAIR_SCHEMA, ())([x, y], {}, NOW) is expected
    assert compile_rule(f"context.a {op} y", PAIR_SCHEMA, {"a"})([NAN, y], {"a": x}, NOW) is expected
    if math.isfinite(y):
        assert compile_rule(f"x {op} {y!r}", PAIR_SCHEMA, ())([x, NAN], {}, NOW) is expected
        assert compile_rule(f"x * 1 {op} {y!r}", PAIR_SCHEMA, ())([x, NAN], {}, NOW) is (COMPARE[op](x * 1, y))
    if math.isfinite(x):
        assert compile_rule(f"{x!r} {op} y", PAIR_SCHEMA, ())([NAN, y], {}, NOW) is expected


ARITH: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": lambda a, b: a / b if b else NAN,
    "%": lambda a, b: a % b if b else NAN,
}


@given(x=floats, y=floats, op=st.sampled_from(sorted(ARITH)), k=st.floats(-1e6, 1e6))
def test_arithmetic_never_raises_and_matches_python(x: float, y: float, op: str, k: float) -> None:
    expected = ARITH[op](x, y)
    feats: Mapping[str, float] = {}
    rule = compile_rule(f"x {op} y > {k!r}", PAIR_SCHEMA, ())
    assert rule([x, y], feats, NOW) is (expected > k)
    missing = compile_rule(f"is_missing(x {op} y)", PAIR_SCHEMA, ())
    assert missing([x, y], feats, NOW) is math.isnan(expected)
