"""Validation of identifiers that become parts of Redis keys."""

from __future__ import annotations

import os
import re

MAX_ID_LENGTH = 64
# No '{', '}' (Redis Cluster hash tags) and no ':' (our key separator) may reach a key.
ID_RE = re.compile(r"[A-Za-z0-9_.@-]+")


def id_problem(value: str, max_length: int = MAX_ID_LENGTH) -> str | None:
    """Return why `value` is not a valid id, or None when it is."""
    if not value:
        return "must not be empty"
    if len(value) > max_length:
        return f"must be at most {max_length} characters, got {len(value)}"
    if not ID_RE.fullmatch(value):
        bad = next(ch for ch in value if not ID_RE.fullmatch(ch))
        return f"contains {bad!r}; allowed are letters, digits and _ . @ -"
    return None


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ULID_LENGTH = 26


def new_ulid(now: float) -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, so ids sort by time."""
    value = (int(now * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    out = []
    for _ in range(ULID_LENGTH):
        value, digit = divmod(value, 32)
        out.append(_CROCKFORD[digit])
    return "".join(reversed(out))


def new_decision_id(customer_id: str, now: float) -> str:
    """`<ulid>.<customer id>`: the customer part lets an outcome find the customer's Redis slot."""
    return f"{new_ulid(now)}.{customer_id}"


def split_decision_id(decision_id: str) -> tuple[str, str] | None:
    """(ulid, customer id) of a well-formed decision id, else None."""
    ulid, dot, customer_id = decision_id[:ULID_LENGTH], decision_id[ULID_LENGTH : ULID_LENGTH + 1], decision_id[27:]
    if dot != "." or len(ulid) != ULID_LENGTH or any(ch not in _CROCKFORD for ch in ulid):
        return None
    if id_problem(customer_id) is not None:
        return None
    return ulid, customer_id
