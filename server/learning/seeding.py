"""The random stream of one decision, seeded by the policy seed and the decision id.

`server.learning.bandit.decision_rng` is the definition: a fresh
`numpy.random.default_rng([seed, decision_key(seed, decision_id)])`, so replicas and replays
(training/ope_policies.py) draw the same numbers. Building a Generator per decision costs more
than a small decision's draws, so the server re-seeds one Generator per thread instead
(`decision_stream`): SeedSequence's output becomes the PCG64 state the way PCG64's constructor
makes it, and the state is written into the thread's bit generator. The stream is the same,
number for number (tests/unit/test_bandit.py compares the two on many seeds and ids).
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np

_M32 = 0xFFFFFFFF
_M128 = (1 << 128) - 1
_PCG_MULTIPLIER = 0x2360ED051FC65DA44385DF649FCCF645  # PCG_DEFAULT_MULTIPLIER_128 (numpy's pcg64.h)


def decision_key(seed: int, decision_id: str) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{decision_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class _Stream(threading.local):
    def __init__(self) -> None:
        self.bits = np.random.PCG64(0)
        self.generator = np.random.Generator(self.bits)


_STREAM = _Stream()


def decision_stream(seed: int, decision_id: str) -> np.random.Generator:
    """The calling thread's Generator, re-seeded to draw exactly what `decision_rng(seed,
    decision_id)` draws. Valid until this thread's next call: use it at once, keep no reference."""
    words = _words(seed) + _words(decision_key(seed, decision_id))  # SeedSequence's entropy for [seed, key]
    w = np.random.SeedSequence(np.array(words, dtype=np.uint32)).generate_state(8).tolist()
    # PCG64(seed_sequence): 128-bit initstate and sequence from four little-endian 64-bit words,
    # then pcg_setseq_128_srandom_r: inc = 2 * seq + 1, state = ((0 * M + inc) + initstate) * M + inc
    initstate = w[1] << 96 | w[0] << 64 | w[3] << 32 | w[2]
    inc = (w[5] << 96 | w[4] << 64 | w[7] << 32 | w[6]) << 1 & _M128 | 1
    state = (inc + initstate) * _PCG_MULTIPLIER + inc & _M128
    stream = _STREAM
    stream.bits.state = {
        "bit_generator": "PCG64",
        "state": {"state": state, "inc": inc},
        "has_uint32": 0,
        "uinteger": 0,
    }
    return stream.generator


def _words(value: int) -> list[int]:
    """An int as SeedSequence reads it: 32-bit words, least significant first, [0] for 0."""
    if value < 0:
        raise ValueError(f"a seed must be non-negative, got {value}")
    words = [value & _M32]
    value >>= 32
    while value:
        words.append(value & _M32)
        value >>= 32
    return words
