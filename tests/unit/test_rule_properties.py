"""Properties of the two compilers fed untrusted text: the rule language and the catalog YAML.

A rule either compiles or raises RuleError (with a column inside the text), and a compiled rule
evaluates to a bool on any feature list, context and time without raising; a catalog either
parses or raises CatalogInvalid. Inputs are arbitrary text plus text built from each language's
own tokens, so most examples get past the tokenizer and reach the parser and the type checks.
"""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.catalog.compiler import parse_catalog
from server.catalog.rules import Now, Rule, RuleError, compile_rule
from server.catalog.spec import CatalogInvalid
from tests.unit.catalog_fixtures import BASE, SCHEMA

CONTEXT_KEYS = frozenset({"cart_value", "page_views"})
# derandomized: the same examples on every run, so a failure here is reproducible by rerunning
PROPERTY = settings(max_examples=1000, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- rules ------------------------------------------------------------------------------------------
FEATURES = SCHEMA.names
LEVELS = [f'"{level}"' for spec in SCHEMA.features for level in spec.levels]
NAMES = [*FEATURES, "context.cart_value", "context.page_views", "context.nope", "now.hour", "now.day", "now.year"]
NUMBERS = ["0", "1", "-1", "2.5", ".5", "1e3", "1e999", "0.0", "12.", "3e-400"]
STRINGS = [*LEVELS, '"Z"', "'A'", '""', '"unterminated', "'x"]
TOKENS = [
    *NAMES,
    *NUMBERS,
    *STRINGS,
    *("and", "or", "not", "in", "true", "false", "TRUE", "context", "now"),
    *("==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "%", "(", ")", "[", "]", ",", "."),
    *("abs", "is_missing", "min", "max", "log", "=", "!", "&", "|", "1x", "é", "\u00a0", "\t"),
]

token_soup = st.lists(st.sampled_from(TOKENS), max_size=24).flatmap(
    lambda toks: st.sampled_from([" ", ""]).map(lambda sep: sep.join(toks))
)


def _expressions() -> st.SearchStrategy[str]:
    """Mostly well-formed expressions, typed or mistyped, so compilation reaches the type checks."""
    leaf = st.sampled_from([*NAMES, *NUMBERS, *LEVELS, "true", "false"])

    def combine(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        binary = st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "%", "and", "or"])
        literal_list = st.lists(st.sampled_from([*NUMBERS, *LEVELS]), min_size=1, max_size=4).map(", ".join)
        return st.one_of(
            st.tuples(inner, binary, inner).map(" ".join),
            inner.map(lambda e: f"not {e}"),
            inner.map(lambda e: f"-{e}"),
            inner.map(lambda e: f"({e})"),
            st.tuples(st.sampled_from(["abs", "is_missing", "min", "max"]), st.lists(inner, max_size=3)).map(
                lambda call: f"{call[0]}({', '.join(call[1])})"
            ),
            st.tuples(inner, st.sampled_from(["in", "not in"]), literal_list).map(lambda m: f"{m[0]} {m[1]} [{m[2]}]"),
        )

    return st.recursive(leaf, combine, max_leaves=12)


def _typed_rules() -> st.SearchStrategy[str]:
    """Well-typed rules (numbers compared, levels matched, true/false combined): they compile, so
    their evaluation gets tested on NaN, infinities and zero divisors."""
    numeric = [s.name for s in SCHEMA.features if s.kind == "numeric"]
    categorical = [s for s in SCHEMA.features if s.kind == "categorical"]
    nums = st.recursive(
        st.sampled_from([*numeric, "context.cart_value", "context.page_views", "now.hour", "now.month", *NUMBERS]),
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "%"]), inner).map(" ".join),
            inner.map(lambda e: f"-({e})"),
            st.tuples(st.sampled_from(["min", "max"]), st.lists(inner, min_size=2, max_size=3)).map(
                lambda call: f"{call[0]}({', '.join(call[1])})"
            ),
            inner.map(lambda e: f"abs({e})"),
        ),
        max_leaves=6,
    )
    levels = st.sampled_from(categorical).flatmap(
        lambda spec: st.tuples(st.just(spec.name), st.lists(st.sampled_from(spec.levels), min_size=1, max_size=3))
    )
    atoms = st.one_of(
        st.tuples(nums, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), nums).map(" ".join),
        levels.map(lambda lv: f'{lv[0]} == "{lv[1][0]}"'),
        levels.map(lambda lv: f"{lv[0]} not in [{', '.join(repr(x) for x in lv[1])}]"),
        st.tuples(nums, st.lists(st.sampled_from(["1", "-2", "0.5", "1e999"]), min_size=1, max_size=3)).map(
            lambda m: f"{m[0]} in [{', '.join(m[1])}]"
        ),
        nums.map(lambda e: f"is_missing({e})"),
        st.sampled_from(["true", "false"]),
    )
    return st.recursive(
        atoms,
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["and", "or", "==", "!="]), inner).map(
                lambda b: f"({b[0]}) {b[1]} ({b[2]})"
            ),
            inner.map(lambda e: f"not ({e})"),
        ),
        max_leaves=5,
    )


expressions = _expressions()
typed_rules = _typed_rules()
deep = st.tuples(st.sampled_from(["(", "not ", "-", "abs(", "tenure_months + "]), st.integers(40, 120)).map(
    lambda d: d[0] * d[1] + "tenure_months"
)
rule_texts = st.one_of(st.text(max_size=60), token_soup, expressions, typed_rules, deep)

feature_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1.0, 2.0, math.nan])
)
vectors = st.lists(feature_values, min_size=len(FEATURES), max_size=len(FEATURES))
contexts = st.dictionaries(st.sampled_from(sorted(CONTEXT_KEYS)), feature_values)
nows = st.builds(Now, st.integers(0, 23), st.integers(0, 6), st.integers(1, 12), st.integers(1, 31))


def compiled_or_rule_error(source: str) -> Rule | None:
    """The rule, or None after checking the RuleError points inside the text."""
    try:
        return compile_rule(source, SCHEMA, CONTEXT_KEYS)
    except RuleError as err:
        assert err.message
        assert 1 <= err.column <= len(source) + 1, (source, err.column)
        return None


@PROPERTY
@given(source=rule_texts, inputs=st.lists(st.tuples(vectors, contexts, nows), min_size=1, max_size=3))
def test_any_text_compiles_or_raises_rule_error_and_evaluation_never_raises(
    source: str, inputs: list[tuple[list[float], dict[str, float], Now]]
) -> None:
    rule = compiled_or_rule_error(source)
    if rule is None:
        return
    assert rule.features <= set(FEATURES) and rule.context_keys <= CONTEXT_KEYS
    for vector, context, now in inputs:
        assert type(rule(vector, context, now)) is bool


@PROPERTY
@given(source=typed_rules, vector=vectors, context=contexts, now=nows)
def test_well_typed_rules_compile_and_name_what_they_read(
    source: str, vector: list[float], context: dict[str, float], now: Now
) -> None:
    """No false rejections: the typed strategy only builds rules the grammar and types allow."""
    rule = compile_rule(source, SCHEMA, CONTEXT_KEYS)
    assert rule.features == {name for name in FEATURES if re.search(rf"\b{name}\b", source)}
    assert rule.context_keys == {key for key in CONTEXT_KEYS if f"context.{key}" in source}
    assert type(rule(vector, context, now)) is bool


# -- catalog YAML -----------------------------------------------------------------------------------
YAML_VALUES = [
    "1",
    "-1",
    "0.5",
    "x",
    "web",
    "[web]",
    "{}",
    "[]",
    "null",
    "~",
    "true",
    "2027-01-15",
    "2027-02-30",
    "2027-01-15T10:00:00+99:00",
    "!!bool maybe",
    "!!int 0x",
    "!!float x",
    "!!timestamp 2027-13-01",
    "!!set {a: null}",
    "!!binary x",
    "!!python/name:os.system",
    "&a [*a]",
    "*undefined",
    '"tier == \\"A\\""',
    "'tier >'",
    "|\n  multi",
    "[[[[1]]]]",
    "{[1]: 2}",
]
YAML_KEYS = ["name", "timezone", "campaigns", "offers", "segments", "budget", "id", "start", "? [1]", "x", "- id"]
BASE_LINES = BASE.splitlines()

yaml_line = st.one_of(
    st.tuples(st.sampled_from(YAML_KEYS), st.sampled_from(YAML_VALUES)).map(lambda kv: f"{kv[0]}: {kv[1]}"),
    st.sampled_from(YAML_VALUES),
    st.text(max_size=20),
)


@st.composite
def catalog_texts(draw: st.DrawFn) -> str:
    """The shared catalog with a few lines replaced or inserted (indented like their neighbour)."""
    lines = list(BASE_LINES)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(lines) - 1))
        indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
        new = indent + draw(yaml_line)
        if draw(st.booleans()):
            lines[at] = new
        else:
            lines.insert(at, new)
    return "\n".join(lines) + "\n"


@PROPERTY
@given(text=st.one_of(st.text(max_size=80), yaml_line, catalog_texts()))
def test_any_catalog_text_parses_or_raises_catalog_invalid(text: str) -> None:
    try:
        parse_catalog(text, SCHEMA)
    except CatalogInvalid as err:
        assert err.errors and all(e.line >= 1 and e.column >= 1 and e.message for e in err.errors)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: 2027-02-30\n", "day is out of range for month"),
        ("? [1]\n: 2\n", "a mapping key must be a plain value"),
        ("? !!set {a: null}\n: 2\n", "a mapping key must be a plain value"),
        ("name: &a [*a]\n", "a value that contains itself"),
        ("name: !!bool maybe\n", "invalid bool value"),
        ("name: !!int 0x\n", "invalid int value"),
        ("[" * 5000, "nested too deeply"),
    ],
)
def test_yaml_the_constructor_rejects_is_catalog_invalid(text: str, message: str) -> None:
    """Found by the property above: these escaped parse_catalog as ValueError, TypeError,
    KeyError or RecursionError before yaml_positions turned them into YAML errors."""
    with pytest.raises(CatalogInvalid, match=message) as caught:
        parse_catalog(text, SCHEMA)
    assert [e.path for e in caught.value.errors] == ["(yaml)"]
