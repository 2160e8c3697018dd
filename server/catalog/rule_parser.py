"""The rule language's parser, which compiles as it parses (see server.catalog.rules)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

from server.catalog.rule_base import BoolFn, RuleError
from server.catalog.rule_lexer import _KEYWORDS, _did_you_mean, _Tok, _tokenize
from server.catalog.rule_nodes import (
    _FLIP,
    _NAN,
    _NOW_FNS,
    _all,
    _any,
    _arith,
    _Bool,
    _bool,
    _bool_const,
    _compare,
    _depth,
    _describe,
    _Expr,
    _is_missing,
    _member,
    _minmax,
    _Num,
    _num,
    _Str,
)
from server.features.schema import FeatureSchema, FeatureSpec

_MAX_NESTING = 50  # parentheses, "not", unary minus and call arguments, nested
_CMP_OPS = frozenset(_FLIP)
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
