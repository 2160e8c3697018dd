"""The one reader of the decision, outcome and conversion logs, for the offline users of the log.

`nbo export`, `nbo budgets reconcile` and `nbo simulate` read a whole stream, oldest first, as
typed records (server.state.records). The streams are at least once: the log writer appends a
batch again when a write may have half failed, so an entry can appear twice. The reader yields
each decision (by decision id) and each outcome (by event id) once and counts the repeats, and
skips entries it cannot read (another record version, a malformed record), counting them and
keeping the first one's reason. Streams are read in chunks (XRANGE ... COUNT), so a long log
never comes back as one reply. The ids already read are kept in memory by default; a reader of
logs larger than memory (`nbo export`) passes `seen=` a store that keeps them elsewhere.

The consumers on the hot path (the learner) read through consumer groups instead
(server.state.streams); this reader holds no group and acknowledges nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import redis

from server.state.conversions import CONVERSION_RECORD_VERSION, ConversionRecord, decode_conversion_record
from server.state.keys import Keys
from server.state.records import (
    DECISION_VERSIONS,
    RECORD_VERSION,
    DecisionRecord,
    Fields,
    OutcomeRecord,
    RecordError,
    decode_decision_record,
    decode_outcome_record,
)

CHUNK = 5000  # entries per XRANGE: bounded replies however long the stream is
Entry = tuple[bytes, dict[bytes, bytes]]
R = TypeVar("R", DecisionRecord, OutcomeRecord, ConversionRecord)


class SeenIds(Protocol):
    """The record ids one iteration of a stream has read."""

    def first(self, key: str) -> bool:
        """True the first time `key` is offered, False on every later time."""
        ...


class MemorySeen:
    """SeenIds in a set: memory grows with the stream (every id read stays)."""

    def __init__(self) -> None:
        self._ids: set[str] = set()

    def first(self, key: str) -> bool:
        if key in self._ids:
            return False
        self._ids.add(key)
        return True


@dataclass(slots=True)
class ReadStats:
    """What reading one stream skipped."""

    entries: int = 0
    duplicates: int = 0  # entries of a record already read (the writer's retries)
    unreadable: int = 0
    first_unreadable: str = ""  # "<entry id>: <why>"


def stream_entries(client: redis.Redis, stream: str, chunk: int = CHUNK) -> Iterator[Entry]:
    """Every entry of a stream, oldest first, `chunk` at a time."""
    start = "-"
    while True:
        entries: Any = client.xrange(stream, min=start, max="+", count=chunk)
        yield from entries
        if len(entries) < chunk:
            return
        start = "(" + entries[-1][0].decode()


def _record_version(fields: Fields) -> str | None:
    for name, value in fields.items():
        if name in (b"v", "v"):
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _version_checked(decode: Callable[[Fields], R], versions: tuple[str, ...]) -> Callable[[Fields], R]:
    """`decode`, refusing entries of another record version (whose fields may mean other things)."""

    def read(fields: Fields) -> R:
        version = _record_version(fields)
        if version not in versions:
            known = ", ".join(repr(v) for v in versions)
            raise RecordError(f"record version {version!r}; this reader reads version {known}")
        return decode(fields)

    return read


class LogReader:
    """The decision and outcome logs of one deployment (its key prefix), each record once.

    Each iteration reads its stream afresh, with a new `seen()`, and resets that stream's `ReadStats`.
    """

    def __init__(
        self, client: redis.Redis, keys: Keys, *, chunk: int = CHUNK, seen: Callable[[], SeenIds] = MemorySeen
    ) -> None:
        self.client = client
        self.keys = keys
        self.chunk = chunk
        self.seen = seen
        self.decision_stats = ReadStats()
        self.outcome_stats = ReadStats()
        self.conversion_stats = ReadStats()

    def decisions(self) -> Iterator[DecisionRecord]:
        self.decision_stats = ReadStats()
        read = _version_checked(decode_decision_record, DECISION_VERSIONS)
        yield from self._read(self.keys.decision_stream, read, lambda r: r.decision_id, self.decision_stats)

    def outcomes(self) -> Iterator[OutcomeRecord]:
        self.outcome_stats = ReadStats()
        read = _version_checked(decode_outcome_record, (RECORD_VERSION,))
        yield from self._read(self.keys.outcome_stream, read, lambda r: r.event_id, self.outcome_stats)

    def conversions(self) -> Iterator[ConversionRecord]:
        """Recorded once per event id by their script; the check here costs little and keeps the
        reader's promise the same for every stream."""
        self.conversion_stats = ReadStats()
        read = _version_checked(decode_conversion_record, (CONVERSION_RECORD_VERSION,))
        yield from self._read(self.keys.conversion_stream, read, lambda r: r.event_id, self.conversion_stats)

    def _read(
        self, stream: str, decode: Callable[[Fields], R], identity: Callable[[R], str], stats: ReadStats
    ) -> Iterator[R]:
        seen = self.seen()
        for entry_id, fields in stream_entries(self.client, stream, self.chunk):
            stats.entries += 1
            try:
                record = decode(fields)
            except RecordError as err:
                stats.unreadable += 1
                if not stats.first_unreadable:
                    stats.first_unreadable = f"{entry_id.decode()}: {err}"
                continue
            if not seen.first(identity(record)):
                stats.duplicates += 1
                continue
            yield record
