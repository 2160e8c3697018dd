"""A small, safe expression language for segment rules and offer eligibility.

Rules are compiled once (when a catalog is loaded) against the feature schema and the catalog's
context keys, with every name, level and type checked then; a compiled `Rule` is a tree of
nested Python closures, so evaluating it on the hot path does no parsing, no dispatch on node
types and no string work. Nothing is ever passed to `eval`.

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

import difflib
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TypeAlias

from server.features.schema import FeatureSchema, FeatureSpec

__all__ = ["Now", "Rule", "RuleError", "compile_rule"]

_NAN = math.nan
_MAX_NESTING = 50  # parentheses, "not", unary minus and call arguments, nested
_MAX_DEPTH = 100  # depth of the compiled closure tree (bounds recursion at evaluation time)


class RuleError(Exception):
    """A rule that does not compile; `column` is the 1-based offset where the problem starts."""

    message: str
    column: int

    def __init__(self, message: str, column: int) -> None:
        super().__init__(message, column)
        self.message = message
        self.column = column

    def __str__(self) -> str:
        return f"col {self.column}: {self.message}"


@dataclass(frozen=True, slots=True)
class Now:
    """The parts of the decision time a rule can read."""

    hour: int  # 0-23
    weekday: int  # 0 = Monday .. 6 = Sunday
    month: int  # 1-12
    day: int  # 1-31

    @classmethod
    def from_datetime(cls, dt: datetime) -> Now:
        return cls(hour=dt.hour, weekday=dt.weekday(), month=dt.month, day=dt.day)


NumFn: TypeAlias = Callable[[Sequence[float], Mapping[str, float], Now], float]
BoolFn: TypeAlias = Callable[[Sequence[float], Mapping[str, float], Now], bool]


@dataclass(frozen=True)
class Rule:
    """A compiled rule: call it with a feature list, the request context and the time."""

    source: str
    features: frozenset[str]  # feature names referenced
    context_keys: frozenset[str]  # context keys referenced
    _fn: BoolFn = field(repr=False, compare=False)

    def __call__(self, features: Sequence[float], context: Mapping[str, float], now: Now) -> bool:
        return self._fn(features, context, now)


def compile_rule(source: str, schema: FeatureSchema, context_keys: Collection[str]) -> Rule:
    """Compile `source` against `schema` and the allowed context keys; raise RuleError."""
    if not source.strip():
        raise RuleError("empty rule", 1)
    parser = _Parser(source, schema, context_keys)
    expr = parser.parse()
    if not isinstance(expr, _Bool):
        raise RuleError(f"rule must be true/false, got {_describe(expr)}", expr.col)
    return Rule(source, frozenset(parser.features), frozenset(parser.context_used), expr.fn)


# -- compiled nodes -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Num:
    """A numeric value, or a categorical feature (`cat` set) whose value is a level index."""

    fn: NumFn
    col: int
    depth: int = 1
    const: float | None = None
    feature: int | None = None  # set when the node is a plain feature reference
    ctx: str | None = None  # set when the node is a plain context reference
    cat: FeatureSpec | None = None


@dataclass(frozen=True, slots=True)
class _Bool:
    fn: BoolFn
    col: int
    depth: int = 1
    const: bool | None = None


@dataclass(frozen=True, slots=True)
class _Str:
    text: str
    col: int


_Expr: TypeAlias = _Num | _Bool | _Str
_NOW0 = Now(0, 0, 1, 1)


def _describe(e: _Expr) -> str:
    if isinstance(e, _Bool):
        return "true/false"
    if isinstance(e, _Str):
        return "a string"
    return "a number" if e.cat is None else f"categorical feature {e.cat.name}"


def _depth(col: int, children: Sequence[_Num | _Bool]) -> int:
    depth = 1 + max((c.depth for c in children), default=0)
    if depth > _MAX_DEPTH:
        raise RuleError("rule is too deeply nested", col)
    return depth


def _num(fn: NumFn, col: int, *children: _Num | _Bool) -> _Num:
    """A numeric node; folded to a constant when all its children are constants."""
    if children and all(c.const is not None for c in children):
        value = fn((), {}, _NOW0)
        return _Num(lambda f, c, n: value, col, const=value)
    return _Num(fn, col, _depth(col, children))


def _bool(fn: BoolFn, col: int, *children: _Num | _Bool) -> _Bool:
    """A true/false node; folded to a constant when all its children are constants."""
    if children and all(c.const is not None for c in children):
        return _bool_const(fn((), {}, _NOW0), col)
    return _Bool(fn, col, _depth(col, children))


def _bool_const(value: bool, col: int) -> _Bool:
    return _Bool((lambda f, c, n: True) if value else (lambda f, c, n: False), col, const=value)


# -- closure factories ----------------------------------------------------------------------------
_FLIP = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def _cmp_feature_const(op: str, i: int, k: float) -> BoolFn:
    if op == "==":
        return lambda f, c, n: f[i] == k
    if op == "!=":
        return lambda f, c, n: f[i] != k
    if op == "<":
        return lambda f, c, n: f[i] < k
    if op == "<=":
        return lambda f, c, n: f[i] <= k
    if op == ">":
        return lambda f, c, n: f[i] > k
    return lambda f, c, n: f[i] >= k


def _cmp_context_const(op: str, key: str, k: float) -> BoolFn:
    if op == "==":
        return lambda f, c, n: c.get(key, _NAN) == k
    if op == "!=":
        return lambda f, c, n: c.get(key, _NAN) != k
    if op == "<":
        return lambda f, c, n: c.get(key, _NAN) < k
    if op == "<=":
        return lambda f, c, n: c.get(key, _NAN) <= k
    if op == ">":
        return lambda f, c, n: c.get(key, _NAN) > k
    return lambda f, c, n: c.get(key, _NAN) >= k


def _cmp_fn_const(op: str, a: NumFn, k: float) -> BoolFn:
    if op == "==":
        return lambda f, c, n: a(f, c, n) == k
    if op == "!=":
        return lambda f, c, n: a(f, c, n) != k
    if op == "<":
        return lambda f, c, n: a(f, c, n) < k
    if op == "<=":
        return lambda f, c, n: a(f, c, n) <= k
    if op == ">":
        return lambda f, c, n: a(f, c, n) > k
    return lambda f, c, n: a(f, c, n) >= k


def _cmp_fn_fn(op: str, a: NumFn, b: NumFn) -> BoolFn:
    if op == "==":
        return lambda f, c, n: a(f, c, n) == b(f, c, n)
    if op == "!=":
        return lambda f, c, n: a(f, c, n) != b(f, c, n)
    if op == "<":
        return lambda f, c, n: a(f, c, n) < b(f, c, n)
    if op == "<=":
        return lambda f, c, n: a(f, c, n) <= b(f, c, n)
    if op == ">":
        return lambda f, c, n: a(f, c, n) > b(f, c, n)
    return lambda f, c, n: a(f, c, n) >= b(f, c, n)


def _compare(op: str, left: _Num, right: _Num, col: int) -> _Bool:
    if left.const is not None and right.const is None:
        left, right, op = right, left, _FLIP[op]
    if right.const is not None and left.const is None:
        k = right.const
        if left.feature is not None:
            return _bool(_cmp_feature_const(op, left.feature, k), col, left)
        if left.ctx is not None:
            return _bool(_cmp_context_const(op, left.ctx, k), col, left)
        return _bool(_cmp_fn_const(op, left.fn, k), col, left)
    return _bool(_cmp_fn_fn(op, left.fn, right.fn), col, left, right)


def _member(left: _Num, values: frozenset[float], negate: bool, col: int) -> _Bool:
    if len(values) == 1:
        (k,) = values
        return _compare("!=" if negate else "==", left, _Num(lambda f, c, n: k, col, const=k), col)
    s = values
    i, key, a = left.feature, left.ctx, left.fn
    fn: BoolFn
    if i is not None:
        fn = (lambda f, c, n: f[i] not in s) if negate else (lambda f, c, n: f[i] in s)
    elif key is not None:
        fn = (lambda f, c, n: c.get(key, _NAN) not in s) if negate else (lambda f, c, n: c.get(key, _NAN) in s)
    else:
        fn = (lambda f, c, n: a(f, c, n) not in s) if negate else (lambda f, c, n: a(f, c, n) in s)
    return _bool(fn, col, left)


def _arith(op: str, left: _Num, right: _Num, col: int) -> _Num:
    a, b = left.fn, right.fn
    fn: NumFn
    if right.const is not None and left.const is None:
        k = right.const
        if op == "+":
            fn = lambda f, c, n: a(f, c, n) + k  # noqa: E731
        elif op == "-":
            fn = lambda f, c, n: a(f, c, n) - k  # noqa: E731
        elif op == "*":
            fn = lambda f, c, n: a(f, c, n) * k  # noqa: E731
        elif not k:  # divisor zero: always missing
            fn = lambda f, c, n: _NAN  # noqa: E731
        elif op == "/":
            fn = lambda f, c, n: a(f, c, n) / k  # noqa: E731
        else:
            fn = lambda f, c, n: a(f, c, n) % k  # noqa: E731
        return _num(fn, col, left)
    if op == "+":
        fn = lambda f, c, n: a(f, c, n) + b(f, c, n)  # noqa: E731
    elif op == "-":
        fn = lambda f, c, n: a(f, c, n) - b(f, c, n)  # noqa: E731
    elif op == "*":
        fn = lambda f, c, n: a(f, c, n) * b(f, c, n)  # noqa: E731
    elif op == "/":

        def fn(f: Sequence[float], c: Mapping[str, float], n: Now) -> float:
            d = b(f, c, n)
            return a(f, c, n) / d if d else _NAN

    else:

        def fn(f: Sequence[float], c: Mapping[str, float], n: Now) -> float:
            d = b(f, c, n)
            return a(f, c, n) % d if d else _NAN

    return _num(fn, col, left, right)


def _all(parts: Sequence[BoolFn]) -> BoolFn:
    if len(parts) == 2:
        p, q = parts
        return lambda f, c, n: p(f, c, n) and q(f, c, n)
    if len(parts) == 3:
        p, q, r = parts
        return lambda f, c, n: p(f, c, n) and q(f, c, n) and r(f, c, n)
    if len(parts) == 4:
        p, q, r, s = parts
        return lambda f, c, n: p(f, c, n) and q(f, c, n) and r(f, c, n) and s(f, c, n)
    ps = tuple(parts)

    def fn(f: Sequence[float], c: Mapping[str, float], n: Now) -> bool:
        return all(p(f, c, n) for p in ps)

    return fn


def _any(parts: Sequence[BoolFn]) -> BoolFn:
    if len(parts) == 2:
        p, q = parts
        return lambda f, c, n: p(f, c, n) or q(f, c, n)
    if len(parts) == 3:
        p, q, r = parts
        return lambda f, c, n: p(f, c, n) or q(f, c, n) or r(f, c, n)
    if len(parts) == 4:
        p, q, r, s = parts
        return lambda f, c, n: p(f, c, n) or q(f, c, n) or r(f, c, n) or s(f, c, n)
    ps = tuple(parts)

    def fn(f: Sequence[float], c: Mapping[str, float], n: Now) -> bool:
        return any(p(f, c, n) for p in ps)

    return fn


def _minmax(fns: Sequence[NumFn], is_max: bool) -> NumFn:
    first, rest = fns[0], tuple(fns[1:])
    if is_max:

        def fn(f: Sequence[float], c: Mapping[str, float], n: Now) -> float:
            r = first(f, c, n)
            for g in rest:
                v = g(f, c, n)
                if v > r:
                    r = v
                elif not v <= r:  # one of them is NaN
                    return _NAN
            return r

        return fn

    def fn_min(f: Sequence[float], c: Mapping[str, float], n: Now) -> float:
        r = first(f, c, n)
        for g in rest:
            v = g(f, c, n)
            if v < r:
                r = v
            elif not v >= r:  # one of them is NaN
                return _NAN
        return r

    return fn_min


# -- tokens -----------------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<str>"[^"]*"|'[^']*')
    | (?P<op>==|!=|<=|>=|[<>+\-*/%()\[\],.])
    """,
    re.VERBOSE | re.ASCII,
)
_KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false"})
_CMP_OPS = frozenset(_FLIP)
_HINTS = {"=": '; use "==" to compare', "!": '; use "not" or "!="', "&": '; use "and"', "|": '; use "or"'}


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # num, str, name, kw, op, end
    text: str
    col: int


def _tokenize(source: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None:
            ch = source[pos]
            if ch in "\"'":
                raise RuleError("unterminated string", pos + 1)
            raise RuleError(f'unexpected character "{ch}"' + _HINTS.get(ch, ""), pos + 1)
        kind, text = m.lastgroup or "", m.group()
        if kind == "num" and m.end() < len(source) and (source[m.end()].isalnum() or source[m.end()] == "_"):
            bad = re.match(r"[\w.]+", source[pos:])
            raise RuleError(f'invalid number "{bad.group() if bad else text}"', pos + 1)
        if kind != "space":
            toks.append(_Tok("kw" if kind == "name" and text in _KEYWORDS else kind, text, pos + 1))
        pos = m.end()
    toks.append(_Tok("end", "", len(source) + 1))
    return toks


def _did_you_mean(name: str, options: Collection[str]) -> str:
    match = difflib.get_close_matches(name, sorted(options), n=1)
    return f'; did you mean "{match[0]}"?' if match else ""


# -- parser (compiles as it parses) -----------------------------------------------------------------
_NOW_PARTS = ("hour", "weekday", "month", "day")
_NOW_FNS: dict[str, NumFn] = {
    "hour": lambda f, c, n: n.hour,
    "weekday": lambda f, c, n: n.weekday,
    "month": lambda f, c, n: n.month,
    "day": lambda f, c, n: n.day,
}
_FUNCTIONS = ("abs", "is_missing", "max", "min")


class _Parser:
    def __init__(self, source: str, schema: FeatureSchema, context_keys: Collection[str]) -> None:
        self.toks = _tokenize(source)
        self.pos = 0
        self.schema = schema
        self.context_keys = frozenset(context_keys)
        self.features: set[str] = set()
        self.context_used: set[str] = set()
        self.nesting = 0

    # token helpers
    def peek(self, ahead: int = 0) -> _Tok:
        return self.toks[min(self.pos + ahead, len(self.toks) - 1)]

    def advance(self) -> _Tok:
        tok = self.toks[self.pos]
        if tok.kind != "end":
            self.pos += 1
        return tok

    def at(self, kind: str, text: str) -> bool:
        tok = self.toks[self.pos]
        return tok.kind == kind and tok.text == text

    def expect(self, text: str) -> _Tok:
        if not self.at("op", text):
            raise RuleError(f'expected "{text}"', self.peek().col)
        return self.advance()

    @staticmethod
    def unexpected(tok: _Tok) -> RuleError:
        if tok.kind == "end":
            return RuleError("unexpected end of rule", tok.col)
        if tok.kind == "str":
            return RuleError(f"unexpected string {tok.text}", tok.col)
        return RuleError(f'unexpected "{tok.text}"', tok.col)

    def nest(self, col: int) -> None:
        self.nesting += 1
        if self.nesting > _MAX_NESTING:
            raise RuleError("rule is too deeply nested", col)

    # grammar
    def parse(self) -> _Expr:
        expr = self.expr()
        tok = self.peek()
        if tok.kind != "end":
            if tok.kind == "op" and tok.text in _CMP_OPS:
                raise RuleError('comparisons cannot be chained; combine them with "and"', tok.col)
            raise self.unexpected(tok)
        return expr

    def expr(self) -> _Expr:
        return self.logical("or")

    def logical(self, op: str) -> _Expr:
        sub = self.not_expr if op == "and" else (lambda: self.logical("and"))
        first = sub()
        if not self.at("kw", op):
            return first
        parts = [first]
        while self.at("kw", op):
            self.advance()
            parts.append(sub())
        preds: list[_Bool] = []
        for p in parts:
            if not isinstance(p, _Bool):
                raise RuleError(f'"{op}" needs true/false, got {_describe(p)}', p.col)
            preds.append(p)
        col = first.col
        decisive = op == "or"  # the constant that decides the result on its own
        if any(p.const is decisive for p in preds):
            return _bool_const(decisive, col)
        live = [p for p in preds if p.const is None]
        if not live:
            return _bool_const(not decisive, col)
        if len(live) == 1:
            return replace(live[0], col=col)
        fns = [p.fn for p in live]
        return _Bool(_any(fns) if decisive else _all(fns), col, _depth(col, live))

    def not_expr(self) -> _Expr:
        if not self.at("kw", "not"):
            return self.comparison()
        tok = self.advance()
        self.nest(tok.col)
        operand = self.not_expr()
        self.nesting -= 1
        if not isinstance(operand, _Bool):
            raise RuleError(f'"not" needs true/false, got {_describe(operand)}', operand.col)
        p = operand.fn
        return _bool(lambda f, c, n: not p(f, c, n), tok.col, operand)

    def comparison(self) -> _Expr:
        left = self.sum()
        tok = self.peek()
        if tok.kind == "op" and tok.text in _CMP_OPS:
            self.advance()
            return self.compare(tok, left, self.sum())
        if self.at("kw", "in"):
            self.advance()
            return self.membership(left, negate=False, col=tok.col)
        if self.at("kw", "not") and self.peek(1).kind == "kw" and self.peek(1).text == "in":
            self.advance()
            self.advance()
            return self.membership(left, negate=True, col=tok.col)
        return left

    def compare(self, tok: _Tok, left: _Expr, right: _Expr) -> _Bool:
        op, col = tok.text, left.col
        if isinstance(left, _Str) and isinstance(right, _Num) and right.cat is not None:
            left, right, op = right, left, _FLIP[op]
        if isinstance(left, _Num) and left.cat is not None:
            spec = left.cat
            if not isinstance(right, _Str):
                raise RuleError(
                    f"categorical feature {spec.name} must be compared with a quoted level, got {_describe(right)}",
                    right.col,
                )
            if op not in ("==", "!="):
                raise RuleError(
                    f'"{tok.text}" is not defined for categorical feature {spec.name}; use ==, !=, in or not in',
                    tok.col,
                )
            k = self.level(spec, right)
            return _compare(op, left, _Num(lambda f, c, n: k, right.col, const=k), col)
        if isinstance(right, _Num) and right.cat is not None:
            raise RuleError(
                f"categorical feature {right.cat.name} must be compared with a quoted level, got {_describe(left)}",
                left.col,
            )
        for side in (left, right):
            if isinstance(side, _Str):
                raise RuleError("a string can only be compared with a categorical feature", side.col)
        if isinstance(left, _Bool) and isinstance(right, _Bool):
            if op not in ("==", "!="):
                raise RuleError(f'"{op}" needs numbers, got true/false', left.col)
            p, q = left.fn, right.fn
            fn: BoolFn = (
                (lambda f, c, n: p(f, c, n) == q(f, c, n)) if op == "==" else (lambda f, c, n: p(f, c, n) != q(f, c, n))
            )
            return _bool(fn, col, left, right)
        if isinstance(left, _Bool) or isinstance(right, _Bool):
            raise RuleError("cannot compare true/false with a number", tok.col)
        assert isinstance(left, _Num) and isinstance(right, _Num)
        return _compare(op, left, right, col)

    def level(self, spec: FeatureSpec, s: _Str) -> float:
        i = spec.level_index(s.text)
        if i is None:
            raise RuleError(f'unknown level "{s.text}" for {spec.name} (levels: {", ".join(spec.levels)})', s.col)
        return float(i)

    def membership(self, left: _Expr, *, negate: bool, col: int) -> _Bool:
        word = "not in" if negate else "in"
        if not isinstance(left, _Num):
            raise RuleError(f'"{word}" needs a number or a categorical feature on its left, got {_describe(left)}', col)
        values: set[float] = set()
        self.expect("[")
        while True:
            tok = self.advance()
            if tok.kind == "str":
                if left.cat is None:
                    raise RuleError("a string can only be compared with a categorical feature", tok.col)
                values.add(self.level(left.cat, _Str(tok.text[1:-1], tok.col)))
            elif tok.kind == "num" or (tok.kind == "op" and tok.text == "-" and self.peek().kind == "num"):
                if left.cat is not None:
                    raise RuleError(
                        f"categorical feature {left.cat.name} must be compared with a quoted level, got a number",
                        tok.col,
                    )
                values.add(float(tok.text) if tok.kind == "num" else -float(self.advance().text))
            else:
                raise RuleError("expected a number or a quoted string", tok.col)
            sep = self.advance()
            if sep.kind == "op" and sep.text == "]":
                break
            if not (sep.kind == "op" and sep.text == ","):
                raise RuleError('expected "," or "]"', sep.col)
        return _member(left, frozenset(values), negate, left.col)

    def arith_operand(self, op: str, e: _Expr) -> _Num:
        if not isinstance(e, _Num) or e.cat is not None:
            raise RuleError(f'"{op}" needs numbers, got {_describe(e)}', e.col)
        return e

    def sum(self) -> _Expr:
        left = self.term()
        while (tok := self.peek()).kind == "op" and tok.text in ("+", "-"):
            self.advance()
            right = self.term()
            a, b = self.arith_operand(tok.text, left), self.arith_operand(tok.text, right)
            left = _arith(tok.text, a, b, left.col)
        return left

    def term(self) -> _Expr:
        left = self.unary()
        while (tok := self.peek()).kind == "op" and tok.text in ("*", "/", "%"):
            self.advance()
            right = self.unary()
            a, b = self.arith_operand(tok.text, left), self.arith_operand(tok.text, right)
            left = _arith(tok.text, a, b, left.col)
        return left

    def unary(self) -> _Expr:
        if not self.at("op", "-"):
            return self.primary()
        tok = self.advance()
        self.nest(tok.col)
        operand = self.arith_operand("-", self.unary())
        self.nesting -= 1
        a = operand.fn
        return _num(lambda f, c, n: -a(f, c, n), tok.col, operand)

    def primary(self) -> _Expr:
        tok = self.peek()
        if tok.kind == "num":
            self.advance()
            k = float(tok.text)
            return _Num(lambda f, c, n: k, tok.col, const=k)
        if tok.kind == "str":
            self.advance()
            return _Str(tok.text[1:-1], tok.col)
        if tok.kind == "kw" and tok.text in ("true", "false"):
            self.advance()
            return _bool_const(tok.text == "true", tok.col)
        if tok.kind == "op" and tok.text == "(":
            self.advance()
            self.nest(tok.col)
            inner = self.expr()
            self.nesting -= 1
            self.expect(")")
            return replace(inner, col=tok.col)
        if tok.kind == "name":
            self.advance()
            if self.at("op", "("):
                return self.call(tok)
            if self.at("op", "."):
                self.advance()
                part = self.peek()
                if part.kind not in ("name", "kw"):
                    raise RuleError('expected a name after "."', part.col)
                self.advance()
                return self.dotted(tok, part)
            return self.feature(tok)
        raise self.unexpected(tok)

    def feature(self, tok: _Tok) -> _Num:
        index = self.schema.index(tok.text)
        if index is None:
            if tok.text in ("context", "now"):
                what = "<key>" if tok.text == "context" else "<part>"
                raise RuleError(f'unknown feature "{tok.text}"; write {tok.text}.{what}', tok.col)
            if tok.text in self.context_keys:
                hint = f'; did you mean "context.{tok.text}"?'
            elif tok.text.lower() in _KEYWORDS:
                hint = f'; did you mean "{tok.text.lower()}"?'
            else:
                hint = _did_you_mean(tok.text, self.schema.names)
            raise RuleError(f'unknown feature "{tok.text}"{hint}', tok.col)
        i = index
        spec = self.schema.features[i]
        self.features.add(spec.name)
        return _Num(lambda f, c, n: f[i], tok.col, feature=i, cat=spec if spec.kind == "categorical" else None)

    def dotted(self, head: _Tok, part: _Tok) -> _Num:
        if head.text == "context":
            key = part.text
            if key not in self.context_keys:
                raise RuleError(f'unknown context key "{key}"' + _did_you_mean(key, self.context_keys), head.col)
            self.context_used.add(key)
            return _Num(lambda f, c, n: c.get(key, _NAN), head.col, ctx=key)
        if head.text == "now":
            fn = _NOW_FNS.get(part.text)
            if fn is None:
                raise RuleError(
                    f'unknown part "{part.text}" of now (use now.hour, now.weekday, now.month or now.day)', part.col
                )
            return _Num(fn, head.col)
        raise RuleError(
            f'unknown name "{head.text}.{part.text}"; only context.<key> and now.<part> contain a dot', head.col
        )

    def call(self, name: _Tok) -> _Expr:
        fname = name.text
        if fname not in _FUNCTIONS:
            raise RuleError(f'unknown function "{fname}"' + _did_you_mean(fname, _FUNCTIONS), name.col)
        self.advance()  # "("
        self.nest(name.col)
        args: list[_Expr] = []
        if not self.at("op", ")"):
            args.append(self.expr())
            while self.at("op", ","):
                self.advance()
                args.append(self.expr())
        self.nesting -= 1
        self.expect(")")
        col = name.col
        if fname in ("abs", "is_missing") and len(args) != 1:
            raise RuleError(f"{fname}() takes 1 argument, got {len(args)}", col)
        if fname in ("min", "max") and len(args) < 2:
            raise RuleError(f"{fname}() takes at least 2 arguments, got {len(args)}", col)
        if fname == "is_missing":
            (arg,) = args
            if not isinstance(arg, _Num):
                raise RuleError(f"is_missing() needs a number or a feature, got {_describe(arg)}", arg.col)
            return _bool(_is_missing(arg), col, arg)
        nums: list[_Num] = []
        for arg in args:
            if not isinstance(arg, _Num) or arg.cat is not None:
                raise RuleError(f"{fname}() needs numbers, got {_describe(arg)}", arg.col)
            nums.append(arg)
        if fname == "abs":
            a = nums[0].fn
            return _num(lambda f, c, n: abs(a(f, c, n)), col, nums[0])
        return _num(_minmax([x.fn for x in nums], is_max=fname == "max"), col, *nums)


def _is_missing(arg: _Num) -> BoolFn:
    i, a = arg.feature, arg.fn
    if i is not None:

        def feature_missing(f: Sequence[float], c: Mapping[str, float], n: Now) -> bool:
            v = f[i]
            return v != v  # noqa: PLR0124 -- NaN is the only value unequal to itself

        return feature_missing

    def missing(f: Sequence[float], c: Mapping[str, float], n: Now) -> bool:
        v = a(f, c, n)
        return v != v  # noqa: PLR0124 -- NaN is the only value unequal to itself

    return missing
