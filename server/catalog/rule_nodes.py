"""Compiled nodes of the rule language and the closure factories that build them (see
server.catalog.rules): each node holds a nested Python closure, folded to a constant when its
children are constants."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from server.catalog.rule_base import BoolFn, Now, NumFn, RuleError
from server.features.schema import FeatureSpec

_NAN = math.nan
_MAX_DEPTH = 100  # depth of the compiled closure tree (bounds recursion at evaluation time)


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


_NOW_FNS: dict[str, NumFn] = {
    "hour": lambda f, c, n: n.hour,
    "weekday": lambda f, c, n: n.weekday,
    "month": lambda f, c, n: n.month,
    "day": lambda f, c, n: n.day,
}


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
