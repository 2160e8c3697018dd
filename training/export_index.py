"""What `nbo export` must remember while it streams the log, kept on disk (SQLite) instead of memory.

Two things outlive one chunk of the log: the ids already read (the streams are at least once,
and a spilled batch is replayed after an outage, so a repeat can come any distance after its
original) and the rewarding outcomes (an outcome is logged up to the reward window after its
decision, and a replayed one even later, so no look-ahead of bounded length finds them all).
Both go into one SQLite file in a temporary directory; its page cache (`CACHE_KIB`) is all the
memory they take, whatever the length of the log. Lookups are by primary key or index.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

CACHE_KIB = 16_384  # SQLite page cache: the memory the index takes however long the log
_BATCH = 5000  # rewards per INSERT batch


class ExportIndex:
    """Seen ids per stream iteration and rewards per (decision, offer), in one SQLite file."""

    def __init__(self, path: Path) -> None:
        # one transaction for the whole export, never committed: a scratch file deleted afterwards,
        # so no journal, fsync or per-insert commit is worth paying for (one commit per id is 9x slower)
        self._db = sqlite3.connect(str(path))
        self._db.executescript(
            f"PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-{CACHE_KIB};"
            "PRAGMA temp_store=FILE;"
            "CREATE TABLE rewards (decision_id TEXT NOT NULL, offer_id TEXT NOT NULL, ts REAL, value REAL);"
        )
        self._iterations = 0

    def close(self) -> None:
        self._db.close()

    def seen_ids(self) -> DiskSeen:
        """A fresh SeenIds (server.state.log_reader) for one iteration of a stream."""
        self._iterations += 1
        table = f"seen{self._iterations}"
        self._db.execute(f"CREATE TABLE {table} (id TEXT PRIMARY KEY) WITHOUT ROWID")
        return DiskSeen(self._db, table)

    def add_rewards(self, rewards: Iterable[tuple[str, str, float, float]]) -> None:
        """Store (decision id, offer id, ts, value) rows, then index them by decision."""
        batch: list[tuple[str, str, float, float]] = []
        for reward in rewards:
            batch.append(reward)
            if len(batch) >= _BATCH:
                self._db.executemany("INSERT INTO rewards VALUES (?, ?, ?, ?)", batch)
                batch.clear()
        self._db.executemany("INSERT INTO rewards VALUES (?, ?, ?, ?)", batch)
        # built once after loading: cheaper than keeping it up to date row by row
        self._db.execute("CREATE INDEX rewards_by_decision ON rewards (decision_id)")

    def rewards(self, decision_id: str) -> dict[str, list[tuple[float, float]]]:
        """(ts, value) of each rewarding outcome of the decision, by offer, in log order."""
        out: dict[str, list[tuple[float, float]]] = {}
        rows = self._db.execute(
            "SELECT offer_id, ts, value FROM rewards WHERE decision_id = ? ORDER BY rowid", (decision_id,)
        )
        for offer_id, ts, value in rows:
            out.setdefault(offer_id, []).append((ts, value))
        return out


class DiskSeen:
    """SeenIds in a SQLite table: one INSERT OR IGNORE per id, nothing kept in memory."""

    def __init__(self, db: sqlite3.Connection, table: str) -> None:
        self._db = db
        self._insert = f"INSERT OR IGNORE INTO {table} VALUES (?)"

    def first(self, key: str) -> bool:
        return self._db.execute(self._insert, (key,)).rowcount == 1
