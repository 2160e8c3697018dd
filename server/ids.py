"""Identifiers: validation of those that become parts of Redis keys, and decision ids.

A decision id must lead an outcome to the customer's Redis keys (one Cluster slot per customer)
without telling whoever holds it who the customer is, and must not be forgeable. So the customer
id is sealed into it with a server secret (`DecisionIds`); see docs/operations.md, "Decision ids".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets

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


_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # the 1,024 two-digit numbers
_ULID_MASK = (1 << 5 * ULID_LENGTH) - 1


def new_ulid(now: float) -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, so ids sort by time."""
    return ulid_text((int(now * 1000) << 80) | int.from_bytes(os.urandom(10), "big"))


def ulid_text(value: int) -> str:
    """A ULID's 26 characters: the Crockford base32 of the lowest 130 bits of `value`."""
    return _crockford(value & _ULID_MASK, ULID_LENGTH)


def _crockford(value: int, digits: int) -> str:
    """The `digits` (even) lowest base-32 digits of `value`, most significant first, ten bits at a
    time: the Crockford base32 of a byte string of 5 x digits / 8 bytes read as one number."""
    return "".join([_PAIRS[value >> shift & 0x3FF] for shift in range(5 * digits - 10, -1, -10)])


class MalformedDecisionId(ValueError):
    """Not shaped like any decision id this server hands out (INVALID_ARGUMENT)."""


_TAG_BYTES = 10  # 80 bits: a forged id passes with probability 2**-80 per try
_BLOCK = 10  # the customer id is zero-padded to a multiple of this: ids tell its length only to 10 bytes
_B32_STANDARD = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_FROM_CROCKFORD = str.maketrans(_CROCKFORD, _B32_STANDARD)
_SEALED_MIN = (_BLOCK + _TAG_BYTES) * 8 // 5
_SEALED_MAX = (-(-MAX_ID_LENGTH // _BLOCK) * _BLOCK + _TAG_BYTES) * 8 // 5


class DecisionIds:
    """Seals a customer id into an opaque decision id with a server secret, and opens it again.

    id = ULID (26 characters: 48 bits of milliseconds, 80 random bits) followed by the Crockford
    base32 of `ciphertext || tag`, where
        ciphertext = customer id, zero-padded to a multiple of 10 bytes, XOR keystream
        keystream  = HMAC-SHA256(k_enc, ulid || block number), block after block
        tag        = HMAC-SHA256(k_mac, ulid || ciphertext), first 10 bytes
        k_enc, k_mac = HMAC-SHA256(secret, purpose) for two fixed purposes.
    The ULID is the nonce: its 80 random bits make keystreams unique and ids unguessable. The id
    shows neither the customer id nor anything that links two of the customer's decisions
    (except its length, to a multiple of 10 bytes); changing any character fails the tag, so a
    changed id never opens to another customer. Standard library only (hmac, hashlib).
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("a decision id secret needs at least 16 bytes")
        self._enc = _Hmac(hmac.digest(secret, b"nbo decision id keystream", hashlib.sha256))
        self._mac = _Hmac(hmac.digest(secret, b"nbo decision id tag", hashlib.sha256))

    @classmethod
    def random(cls) -> DecisionIds:
        """A codec with a fresh secret: for one process only (tests, benchmarks)."""
        return cls(secrets.token_bytes(32))

    def new(self, customer_id: str, now: float) -> str:
        """A fresh decision id for `customer_id` at time `now`."""
        return self.seal(new_ulid(now), customer_id)

    def seal(self, ulid: str, customer_id: str) -> str:
        """The decision id of `customer_id` under `ulid` (fixed ulids give fixed ids, for tests)."""
        plain = customer_id.encode()
        plain = plain.ljust(-(-len(plain) // _BLOCK) * _BLOCK, b"\0")  # '\0' is in no valid id
        nonce = ulid.encode()
        cipher = _xor(plain, self._keystream(nonce, len(plain)))
        sealed = cipher + self._tag(nonce, cipher)
        return ulid + _crockford(int.from_bytes(sealed, "big"), len(sealed) * 8 // 5)

    def open(self, decision_id: str) -> str | None:
        """The customer id sealed in `decision_id`; None when the tag does not verify (tampered,
        made up, or sealed with another secret). Raises MalformedDecisionId for a string no
        secret could have produced."""
        ulid, sealed = decision_id[:ULID_LENGTH], decision_id[ULID_LENGTH:]
        if (
            len(ulid) != ULID_LENGTH
            or not _SEALED_MIN <= len(sealed) <= _SEALED_MAX
            or len(sealed) % 16
            or any(ch not in _CROCKFORD for ch in decision_id)
        ):
            raise MalformedDecisionId(decision_id)
        raw = base64.b32decode(sealed.translate(_FROM_CROCKFORD))
        cipher, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
        nonce = ulid.encode()
        if not hmac.compare_digest(tag, self._tag(nonce, cipher)):
            return None
        plain = _xor(cipher, self._keystream(nonce, len(cipher)))
        customer_id = plain.rstrip(b"\0").decode("ascii", errors="replace")
        return customer_id if id_problem(customer_id) is None else None

    def _keystream(self, nonce: bytes, n: int) -> bytes:
        return b"".join([self._enc.digest(nonce + bytes([i])) for i in range(-(-n // 32))])[:n]

    def _tag(self, nonce: bytes, cipher: bytes) -> bytes:
        return self._mac.digest(nonce + cipher)[:_TAG_BYTES]


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


class _Hmac:
    """HMAC-SHA256 under one key (RFC 2104), the key's two padded blocks hashed once: hmac.digest
    hashes them again on every call, which is most of the work for a message this short."""

    def __init__(self, key: bytes) -> None:
        block = key.ljust(64, b"\0")  # keys of up to one SHA-256 block (ours are 32 bytes)
        if len(block) != 64:
            raise ValueError("an HMAC key longer than a SHA-256 block would be hashed first")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def digest(self, message: bytes) -> bytes:
        inner, outer = self._inner.copy(), self._outer.copy()
        inner.update(message)
        outer.update(inner.digest())
        return outer.digest()
