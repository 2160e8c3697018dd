"""Deterministic control-group assignment: a salted hash of the customer id.

The same customer and salt always land in the same group, on every replica and after restarts;
rotating the salt re-draws the group.
"""

from __future__ import annotations

import hashlib

_SCALE = float(2**64)


def bucket(salt: str, customer_id: str) -> float:
    """A uniform number in [0, 1) fixed by salt and customer id."""
    digest = hashlib.blake2b(f"{salt}\x00{customer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def in_holdout(salt: str, customer_id: str, fraction: float) -> bool:
    return fraction > 0.0 and bucket(salt, customer_id) < fraction
