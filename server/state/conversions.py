"""Conversion records: business results of a customer not tied to one decision (a purchase, a
sign-up), reported by RecordConversion or imported from CSV (`nbo conversions import`).

They are what lift is measured on: customers in a control group were sent nothing, so no
outcome of theirs can be reported, but their purchases can. Each is kept once per event id in
the conversion stream (`keys.conversion_stream`, entries `v` = "1" and `r` = the JSON record) by
conversion.lua, which sets the event key and appends the record in one step. `nbo report`
attributes them to the decisions and holdouts the customer was in within a window.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis

from server.state.keys import Keys
from server.state.records import Fields, RecordError, record_data
from server.state.script_client import LuaScript

CONVERSION_RECORD_VERSION = "1"
SOURCES = ("grpc", "http", "import")
SCRIPT = LuaScript.load("conversion.lua")


@dataclass(frozen=True, slots=True)
class ConversionRecord:
    event_id: str
    customer_id: str
    kind: str
    value: float
    ts: float  # when the conversion happened, Unix seconds
    recorded: float  # when the server (or the import) recorded it
    source: str  # one of SOURCES

    def to_fields(self) -> dict[str, str]:
        return {"v": CONVERSION_RECORD_VERSION, "r": json.dumps(asdict(self), separators=(",", ":"))}


def decode_conversion_record(fields: Fields) -> ConversionRecord:
    d = record_data(fields, "conversion")
    try:
        return ConversionRecord(
            event_id=str(d["event_id"]),
            customer_id=str(d["customer_id"]),
            kind=str(d["kind"]),
            value=float(d["value"]),
            ts=float(d["ts"]),
            recorded=float(d["recorded"]),
            source=str(d.get("source") or ""),
        )
    except KeyError as err:
        raise RecordError(f"conversion record without {err.args[0]!r}") from None
    except (TypeError, ValueError) as err:
        raise RecordError(f"malformed conversion record {d.get('event_id')!r}: {err}") from None


def event_digest(event_id: str) -> str:
    """The event key's suffix: fixed length whatever the caller's id."""
    return hashlib.blake2b(event_id.encode(), digest_size=16).hexdigest()


def remember_seconds(record: ConversionRecord, window: int) -> int:
    """How long the event id is kept: until `window` seconds after the conversion happened, so that
    a repeat of any conversion not older than the window is recognised (older ones are refused
    before they reach the script: server.pipeline.conversion)."""
    return max(1, math.ceil(record.ts + window - record.recorded))


def script_call(keys: Keys, record: ConversionRecord, fingerprint: str, window: int) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of conversion.lua for `record`."""
    entry = [part for pair in record.to_fields().items() for part in pair]
    return (
        [keys.conversion_event(event_digest(record.event_id)), keys.conversion_stream],
        [fingerprint, str(remember_seconds(record, window)), *entry],
    )


def record_batch(
    client: redis.Redis,
    keys: Keys,
    batch: Sequence[tuple[ConversionRecord, str]],
    window: int,
) -> list[tuple[int, str]]:
    """Record (conversion, fingerprint) pairs in one pipeline (for imports, off the server): per
    pair (status, stored fingerprint) as conversion.lua answers. Each script runs on its own:
    a failure part way leaves every earlier conversion recorded once, and a rerun skips them."""
    script = client.register_script(SCRIPT.source)
    pipe = client.pipeline(transaction=False)
    for record, fingerprint in batch:
        script_keys, args = script_call(keys, record, fingerprint, window)
        script(keys=script_keys, args=args, client=pipe)
    return [_status(raw) for raw in pipe.execute()]


def _status(raw: Sequence[Any]) -> tuple[int, str]:
    status = int(raw[0])
    stored = raw[1] if len(raw) > 1 else b""
    return status, stored.decode() if isinstance(stored, bytes) else str(stored)
