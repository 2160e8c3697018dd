"""The decision-id codec: customer ids sealed with a server secret (server.ids.DecisionIds)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random

import pytest

from server.ids import _CROCKFORD, ULID_LENGTH, DecisionIds, MalformedDecisionId, ulid_text

SECRET = b"a fixed test secret"
IDS = DecisionIds(SECRET)
ULID = "01JBQ00000000000000000000A"


def test_a_fixed_secret_and_ulid_give_an_exact_id() -> None:
    # pinned: a change to the format would make every outstanding id unknown after a deploy
    assert IDS.seal(ULID, "C0000042") == "01JBQ00000000000000000000APC7AE3QWYSRZ6RYVXAM7XTEX1NBSFDV5"


@pytest.mark.parametrize("customer_id", ["c", "C0000042", "ten_chars_", "a" * 11, "x.y@z-_1" * 8])
def test_every_valid_customer_id_round_trips(customer_id: str) -> None:
    decision_id = IDS.new(customer_id, 1_800_000_000.0)
    assert IDS.open(decision_id) == customer_id
    assert len(customer_id) < 4 or customer_id.lower() not in decision_id.lower()
    assert all(ch in _CROCKFORD for ch in decision_id)  # safe in a Redis key, a URL and a log line


def test_ids_are_opaque_and_unlinkable() -> None:
    first, second = IDS.new("C0000042", 1_800_000_000.0), IDS.new("C0000042", 1_800_000_000.0)
    assert first != second
    # nothing but the time part is shared by two ids of one customer made in the same millisecond
    assert first[:10] == second[:10] and first[ULID_LENGTH:] != second[ULID_LENGTH:]
    # customer ids of up to 10 characters all give ids of the same length
    assert {len(IDS.new(c, 0.0)) for c in ("a", "C0000042", "abcdefghij")} == {58}
    assert len(IDS.new("abcdefghijk", 0.0)) == 74


def test_any_changed_character_or_another_secret_is_unknown_never_another_customer() -> None:
    decision_id = IDS.seal(ULID, "C0000042")
    for at in range(len(decision_id)):
        for ch in "0Z":
            if decision_id[at] != ch:
                assert IDS.open(decision_id[:at] + ch + decision_id[at + 1 :]) is None, at
    assert DecisionIds(b"another secret, same length").open(decision_id) is None
    # the sealed part moved under another ULID (the keystream's and the tag's nonce) does not open
    assert IDS.open("01JBQ00000000000000000000B" + decision_id[ULID_LENGTH:]) is None


@pytest.mark.parametrize(
    "decision_id",
    [
        "",
        "garbage",
        "01KAAAAAAAAAAAAAAAAAAAAAAA.vip",  # the format before ids were sealed
        ULID,  # a bare ULID
        IDS.seal(ULID, "C0000042")[:-1],  # one character short
        IDS.seal(ULID, "C0000042").lower(),
        IDS.seal(ULID, "C0000042")[:-1] + "U",  # not in the alphabet
        IDS.seal(ULID, "x" * 64) + "0" * 16,  # longer than any customer id gives
    ],
)
def test_strings_no_secret_could_produce_are_malformed(decision_id: str) -> None:
    with pytest.raises(MalformedDecisionId):
        IDS.open(decision_id)


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        DecisionIds(b"short")


def reference_seal(secret: bytes, ulid: str, customer_id: str) -> str:
    """The codec as first written (hmac.digest per block, base64), the definition `seal` keeps."""
    enc = hmac.digest(secret, b"nbo decision id keystream", hashlib.sha256)
    mac = hmac.digest(secret, b"nbo decision id tag", hashlib.sha256)
    plain = customer_id.encode()
    plain = plain.ljust(-(-len(plain) // 10) * 10, b"\0")
    blocks = (hmac.digest(enc, ulid.encode() + bytes([i]), hashlib.sha256) for i in range(-(-len(plain) // 32)))
    cipher = bytes(a ^ b for a, b in zip(plain, b"".join(blocks)[: len(plain)], strict=True))
    tag = hmac.digest(mac, ulid.encode() + cipher, hashlib.sha256)[:10]
    standard = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    return ulid + base64.b32encode(cipher + tag).decode().translate(str.maketrans(standard, _CROCKFORD))


def reference_ulid_text(value: int) -> str:
    out = []
    for _ in range(ULID_LENGTH):
        value, digit = divmod(value, 32)
        out.append(_CROCKFORD[digit])
    return "".join(reversed(out))


def test_ids_and_ulids_match_their_reference_on_random_inputs() -> None:
    r = random.Random(3)
    alphabet = "abcXYZ019_.@-"
    for _ in range(500):
        secret = r.randbytes(r.choice([16, 32, 100]))
        ulid = "".join(r.choice(_CROCKFORD) for _ in range(ULID_LENGTH))
        customer_id = "".join(r.choice(alphabet) for _ in range(r.randint(1, 64)))
        ids = DecisionIds(secret)
        assert ids.seal(ulid, customer_id) == reference_seal(secret, ulid, customer_id)
        assert ids.open(ids.seal(ulid, customer_id)) == customer_id
        value = r.getrandbits(r.choice([128, 130, 140]))
        assert ulid_text(value) == reference_ulid_text(value)
