"""A small, safe expression language for segment rules and offer eligibility.

Rules are compiled once (when a catalog is loaded) against the feature schema and the catalog's
context keys, with every name, level and type checked then; a compiled `Rule` is a tree of
nested Python closures, so evaluating it on the hot path does no parsing, no dispatch on node
types and no string work. Nothing is ever passed to `eval`.

This module is the language's public face (`compile_rule`, `Rule`); the rest is split by role:
server.catalog.rule_base (the error, `Now`, function types), rule_lexer (tokens), rule_nodes
(compiled nodes and the closure factories) and rule_parser (which compiles as it parses).

Grammar (EBNF; keywords are lower case; whitespace is free between tokens)::

    expr       = or_expr ;
    or_expr    = and_expr , { "or" , and_expr } ;
    and_expr   = not_expr , { "and" , not_expr } ;
    not_expr   = "not" , not_expr | comparison ;
    comparison = sum , [ ( "==" | "!=" | "<" | "<=" | ">" | ">=" ) , sum
                       | [ "not" ] , "in" , "[" , literal , { "," , literal } , "]" ] ;
    sum        = term , { ( "+" | "-" ) , term } ;
    term       = unary , { ( "*" | "/" | "%" ) , unary } ;
    unary      = "-" , unary | primary ;
    primary    = NUMBER | STRING | "true" | "false" | call | name | "(" , expr , ")" ;
    name       = IDENT , [ "." , IDENT ] ;     (* feature, context.<key> or now.<part> *)
    call       = IDENT , "(" , expr , { "," , expr } , ")" ;
    literal    = [ "-" ] , NUMBER | STRING ;
    NUMBER     = digits , [ "." , [ digits ] ] , [ exponent ] | "." , digits , [ exponent ] ;
    STRING     = '"' , { any character but '"' } , '"' | "'" , { any character but "'" } , "'" ;
    IDENT      = ( letter | "_" ) , { letter | digit | "_" } ;   (* ASCII *)

Comparisons do not chain (``a < b < c`` is an error: write ``a < b and b < c``).

Names:
  * ``tenure`` -- a customer feature of the schema;
  * ``context.cart_value`` -- a real-time value sent with the request; the key must be one of
    the catalog's context keys; a key the request does not send is missing (NaN);
  * ``now.hour`` (0-23), ``now.weekday`` (0 = Monday .. 6), ``now.month`` (1-12),
    ``now.day`` (1-31) -- the decision time in the catalog's time zone.

Functions: ``is_missing(x)``; ``abs(x)``; ``min(a, b, ...)`` and ``max(a, b, ...)`` (missing if
any argument is missing).

Types (checked at compile time): numbers, true/false, categorical features and string literals.
A categorical feature can only be compared, with ``==``, ``!=``, ``in`` or ``not in``, with
quoted strings that are levels of that feature (``tier in ["A", "B"]``); it is compiled to a
comparison of the stored level index. Arithmetic and ordering need numbers; ``and``, ``or``
and ``not`` need true/false; the whole rule must be true/false.

Missing values (NaN) follow IEEE float semantics: every comparison with a missing value is
false except ``!=`` (and ``not in``), which is true; arithmetic on a missing value is missing.
Use ``is_missing(x)`` to test for one explicitly. Division or remainder by zero gives a missing
value; evaluation never raises. ``%`` is Python's floored modulo (``-7 % 3 == 2``).

Strings have no escapes: quote a level containing ``"`` with ``'`` and vice versa. Numbers in
``in [...]`` lists may carry a minus sign. Constant sub-expressions are folded at compile time.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from server.catalog.rule_base import BoolFn, Now, NumFn, RuleError
from server.catalog.rule_nodes import _Bool, _describe
from server.catalog.rule_parser import _Parser
from server.features.schema import FeatureSchema

__all__ = ["BoolFn", "Now", "NumFn", "Rule", "RuleError", "compile_rule"]


@dataclass(frozen=True)
class Rule:
    """A compiled rule: call it with a feature list, the request context and the time."""

    source: str
    features: frozenset[str]  # feature names referenced
    context_keys: frozenset[str]  # context keys referenced
    _fn: BoolFn = field(repr=False, compare=False)

    def __call__(self, features: Sequence[float], context: Mapping[str, float], now: Now) -> bool:
        return self._fn(features, context, now)

    @property
    def fn(self) -> BoolFn:
        """The compiled function itself: a caller evaluating many rules per decision saves the
        extra call through __call__."""
        return self._fn


def compile_rule(source: str, schema: FeatureSchema, context_keys: Collection[str]) -> Rule:
    """Compile `source` against `schema` and the allowed context keys; raise RuleError."""
    if not source.strip():
        raise RuleError("empty rule", 1)
    parser = _Parser(source, schema, context_keys)
    expr = parser.parse()
    if not isinstance(expr, _Bool):
        raise RuleError(f"rule must be true/false, got {_describe(expr)}", expr.col)
    return Rule(source, frozenset(parser.features), frozenset(parser.context_used), expr.fn)
