"""Validation of identifiers that become parts of Redis keys."""

from __future__ import annotations

import re

MAX_ID_LENGTH = 64
# No '{', '}' (Redis Cluster hash tags) and no ':' (our key separator) may reach a key.
_ID_RE = re.compile(r"[A-Za-z0-9_.@-]+")


def id_problem(value: str, max_length: int = MAX_ID_LENGTH) -> str | None:
    """Return why `value` is not a valid id, or None when it is."""
    if not value:
        return "must not be empty"
    if len(value) > max_length:
        return f"must be at most {max_length} characters, got {len(value)}"
    if not _ID_RE.fullmatch(value):
        bad = next(ch for ch in value if not _ID_RE.fullmatch(ch))
        return f"contains {bad!r}; allowed are letters, digits and _ . @ -"
    return None
