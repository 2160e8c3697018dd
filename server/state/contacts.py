"""A customer's contact history as the decision reads it from the customer's hash in Redis.

Fields: per offer, the time of the last decline (`d:<offer>`), the end of a suppression
(`s:<offer>`) and awards so far (`a:o:<offer>`, `a:c:<campaign>`) for per-customer caps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ContactHistory:
    declined_at: Mapping[str, float]
    suppressed_until: Mapping[str, float]
    sent_in_window: int
    awards: Mapping[str, int] = field(default_factory=dict)  # "o:<offer>" / "c:<campaign>" -> count

    @classmethod
    def from_hash(cls, fields: Mapping[bytes, bytes], sent_in_window: int) -> ContactHistory:
        declined: dict[str, float] = {}
        suppressed: dict[str, float] = {}
        awards: dict[str, int] = {}
        for raw_key, raw_value in fields.items():
            key = raw_key.decode()
            if key.startswith("d:"):
                declined[key[2:]] = float(raw_value)
            elif key.startswith("s:"):
                suppressed[key[2:]] = float(raw_value)
            elif key.startswith("a:"):
                awards[key[2:]] = int(raw_value)
        return cls(declined, suppressed, sent_in_window, awards)


EMPTY_HISTORY = ContactHistory({}, {}, 0)
