"""The rule language's tokens (see server.catalog.rules)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from dataclasses import dataclass

from server.catalog.rule_base import RuleError

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
