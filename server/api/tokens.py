"""The API tokens file: one line per token, `<client name> <roles> <sha256 hex of the token>`.

Only the token's SHA-256 is kept server-side, so the file can be read by anyone who may read the
configuration without handing out a credential; a token is shown once, by `nbo tokens add`.
A client may have several lines (one per token, for rotation). `#` starts a comment.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

ROLES = ("decide", "report", "admin")
# a name starts with a letter or digit: `@`-names are the anonymous callers' rate buckets
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
DIGEST_RE = re.compile(r"[0-9a-f]{64}")
TOKEN_PREFIX = "nbo_"  # lets secret scanners (and people) recognise a leaked token


class TokenFileError(ValueError):
    """A line of the tokens file that cannot be read; the message names file, line and column."""


@dataclass(frozen=True, slots=True)
class TokenEntry:
    name: str
    roles: frozenset[str]
    digest: bytes  # SHA-256 of the token


def new_token() -> str:
    """A fresh token: 256 random bits, URL-safe, with a recognisable prefix."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def format_line(name: str, roles: frozenset[str], digest: bytes) -> str:
    return f"{name} {','.join(r for r in ROLES if r in roles)} {digest.hex()}"


def parse_roles(text: str) -> frozenset[str]:
    """The roles of a comma-separated list; ValueError naming the first unknown one."""
    roles = [r.strip() for r in text.split(",")]
    for role in roles:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    return frozenset(roles)


def name_problem(name: str) -> str | None:
    if NAME_RE.fullmatch(name):
        return None
    return f"client name {name!r}: 1-64 letters, digits and _ . @ -, starting with a letter or digit"


def parse_tokens(text: str, source: str) -> list[TokenEntry]:
    """Every entry of a tokens file's text; TokenFileError at the first bad line."""
    entries: list[TokenEntry] = []
    seen: dict[bytes, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = [(m.start() + 1, m.group()) for m in re.finditer(r"\S+", raw.split("#", 1)[0])]
        if not fields:
            continue
        try:
            entry = _entry(fields, seen)
        except _BadField as err:
            raise TokenFileError(f"{source}:{number}:{err.column}: {err.message}") from None
        seen[entry.digest] = number
        entries.append(entry)
    return entries


class _BadField(Exception):
    def __init__(self, column: int, message: str) -> None:
        self.column, self.message = column, message


def _entry(fields: list[tuple[int, str]], seen: dict[bytes, int]) -> TokenEntry:
    """The entry of one line's (column, text) fields; _BadField at the first bad one."""
    if len(fields) != 3:
        raise _BadField(1, f"expected '<client name> <roles> <sha256 hex>', got {len(fields)} field(s)")
    (name_col, name), (roles_col, roles_text), (digest_col, digest_hex) = fields
    if problem := name_problem(name):
        raise _BadField(name_col, problem)
    try:
        roles = parse_roles(roles_text)
    except ValueError as err:
        raise _BadField(roles_col, str(err)) from None
    if not DIGEST_RE.fullmatch(digest_hex):
        raise _BadField(digest_col, "expected the token's SHA-256 as 64 lowercase hex digits (never the token)")
    digest = bytes.fromhex(digest_hex)
    if digest in seen:
        raise _BadField(digest_col, f"the same token hash as line {seen[digest]}")
    return TokenEntry(name, roles, digest)


def read_tokens(path: Path) -> list[TokenEntry]:
    try:
        text = path.read_text()
    except OSError as err:
        raise TokenFileError(f"{path}: cannot read the tokens file: {err.strerror or err}") from None
    return parse_tokens(text, str(path))
