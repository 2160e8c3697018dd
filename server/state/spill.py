"""A local file that keeps log records the writer could not get into Redis, until it can.

Each worker appends to a file of its own (`<dir>/<host>-<pid>-<n>.spill`, JSON lines) and holds
an exclusive `flock` on it while it lives. Any worker replays files nobody holds: its own once
Redis answers again, and those a dead or stopped worker left behind (at start-up and after
every successful write), after renaming them to a claimed name so two workers never replay
the same file. A record may reach Redis twice (a batch that was partly written before the
outage, then spilled); every log reader de-duplicates by decision or event id.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

SUFFIX = ".spill"
CLAIMED = ".replaying"


def encode_item(stream: str, fields: dict[Any, Any], replay: tuple[Any, ...] | None) -> str:
    """One JSON line: stream, its fields (text, or {"b64": ...} for binary) and the replay payload
    (bytes as base64)."""
    rp = None
    if replay is not None:
        decision_key, payload, request_key, decision_id, request_ttl, decision_ttl = replay
        rp = [decision_key, base64.b64encode(payload).decode(), request_key, decision_id, request_ttl, decision_ttl]
    text_fields = {_text(k): _field(v) for k, v in fields.items()}
    return json.dumps({"s": stream, "f": text_fields, "rp": rp}, separators=(",", ":"))


def decode_item(line: str) -> tuple[str, dict[str, str | bytes], tuple[Any, ...] | None]:
    data = json.loads(line)
    for name, value in data["f"].items():
        if isinstance(value, dict):
            data["f"][name] = base64.b64decode(value["b64"])
    rp = data["rp"]
    replay = None
    if rp is not None:
        replay = (rp[0], base64.b64decode(rp[1]), rp[2], rp[3], rp[4], rp[5])
    return data["s"], data["f"], replay


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _field(value: Any) -> str | dict[str, str]:
    """Text as text; bytes that are not UTF-8 (a compressed record) as base64: Redis receives the
    same bytes either way."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode()}
    return str(value)


class SpillDir:
    """The spill files of every worker sharing one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._file: IO[str] | None = None
        self._count = 0

    def append(self, lines: list[str]) -> None:
        """Append records to this worker's file (flushed and fsynced: the point is surviving)."""
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._count += 1
            name = f"{socket.gethostname()}-{os.getpid()}-{self._count}{SUFFIX}"
            self._file = (self.directory / name).open("a", encoding="utf-8")
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._file.write("".join(line + "\n" for line in lines))
        self._file.flush()
        os.fsync(self._file.fileno())

    def release(self) -> None:
        """Close this worker's file so it can be replayed (by this worker or any other)."""
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None

    def claim(self) -> list[Path]:
        """Files nobody holds, renamed so no other worker replays them too."""
        if not self.directory.is_dir():
            return []
        claimed = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            if self._file is not None and Path(self._file.name) == path:
                continue
            target = self._claim_one(path)
            if target is not None:
                claimed.append(target)
        # files a worker claimed and then died replaying: nobody will rename them again
        for path in sorted(self.directory.glob(f"*{CLAIMED}")):
            if _unlocked(path) and path not in claimed:
                claimed.append(path)
        return claimed

    def _claim_one(self, path: Path) -> Path | None:
        if not _unlocked(path):
            return None  # a live worker is still writing it
        target = path.with_name(f"{path.stem}.{os.getpid()}{CLAIMED}")
        try:
            os.rename(path, target)
        except FileNotFoundError:  # another worker claimed it first
            return None
        return target

    @staticmethod
    def open_claimed(path: Path) -> IO[str] | None:
        """The claimed file, locked for as long as it is open (None: another worker has it)."""
        try:
            f = path.open(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        return f

    @staticmethod
    def read_lines(f: IO[str], n: int) -> list[str]:
        """Up to n complete records from an open spill file."""
        out = []
        for line in f:
            # a line cut short by a crash mid-write is the only kind that can be incomplete
            if line.endswith("\n"):
                out.append(line[:-1])
            else:
                log.error("spill file %s ends with an incomplete record; it is skipped", f.name)
            if len(out) >= n:
                break
        return out


def _unlocked(path: Path) -> bool:
    try:
        with path.open("a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except BlockingIOError:
        return False
    except FileNotFoundError:
        return False
    return True
