"""TLS and mutual TLS on the gRPC and HTTP ports: real servers, real channels and connections, and
certificates made by the tests (tests/certs.py).

A TLS server answers a client that trusts its CA, and no plaintext client, nor one that trusts
another CA. A mutual-TLS server also refuses a client without a certificate and one whose
certificate another CA signed. And `nbo serve` with two workers on one port says "serving" once
they serve mutual TLS, and `nbo decide` with its TLS flags gets a decision from it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import redis

from server.api.aio_client import AsyncNboClient
from server.api.tls import ClientTls
from server.config import Settings
from server.state.embedded_redis import EmbeddedRedis
from tests.certs import Certs
from tests.integration.harness import Clock, Harness, load_customers, publish_text
from tests.integration.test_cli import NBO
from tests.unit.catalog_fixtures import BASE

CUSTOMER = {"vip": {"tier": "A", "tenure_months": 40, "churn_risk": 0.1, "consent_web": 1, "consent_call": 1}}
JSON = {"Content-Type": "application/json"}


def _seed(url: str, tmp: Path) -> None:
    with redis.Redis.from_url(url) as client:
        client.flushall()
    load_customers(url, CUSTOMER, tmp)
    publish_text(url, BASE)


async def _server(redis_url: str, certs: Certs, *, mutual: bool) -> Harness:
    tls: dict[str, Any] = {"tls_cert_file": certs.server_cert, "tls_key_file": certs.server_key}
    if mutual:
        tls["tls_client_ca_file"] = certs.ca
    nbo = Harness(redis_url, Clock(), http_port=0, **tls)
    await nbo.start()
    return nbo


@pytest.fixture(scope="module")
async def servers(
    redis_server: EmbeddedRedis, certs: Certs, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Harness]]:
    """A TLS server and a mutual-TLS one, on one seeded Redis."""
    _seed(redis_server.url, tmp_path_factory.mktemp("tls"))
    started = {
        mode: await _server(redis_server.url, certs, mutual=mode == "mutual TLS") for mode in ("TLS", "mutual TLS")
    }
    yield started
    for nbo in started.values():
        await nbo.stop()


def _clients(certs: Certs) -> dict[str, ClientTls | None]:
    return {
        "plaintext": None,
        "trusts another CA": ClientTls(certs.other_ca),
        "no client certificate": ClientTls(certs.ca),
        "client certificate of another CA": ClientTls(certs.ca, certs.other_client_cert, certs.other_client_key),
        "client certificate": ClientTls(certs.ca, certs.client_cert, certs.client_key),
    }


async def _grpc_decide(nbo: Harness, tls: ClientTls | None) -> str:
    """'OK' with a decision, else the status code's name."""
    client = AsyncNboClient(f"127.0.0.1:{nbo.worker.port}", timeout=5, tls=tls)
    try:
        response = await client.decide("vip", "web")
        assert response.decision_id, response
        return "OK"
    except grpc.aio.AioRpcError as err:
        return str(err.code().name)
    finally:
        await client.close()


async def _http_decide(nbo: Harness, tls: ClientTls | None) -> str:
    """'OK' with a decision, else the error that ended the connection."""
    scheme, ssl = ("http", False) if tls is None else ("https", tls.ssl_context())
    url = f"{scheme}://127.0.0.1:{nbo.worker.http_port}/v1/decide"
    try:
        async with aiohttp.ClientSession() as session:
            body = b'{"customerId": "vip", "channel": "WEB"}'
            async with session.post(url, data=body, headers=JSON, ssl=ssl) as r:
                answer = await r.json()
                assert r.status == 200 and answer["decisionId"], answer
                return "OK"
    except aiohttp.ClientError as err:
        return "refused: " + type(err).__name__


# (server, client, served)
CASES = [
    ("TLS", "plaintext", False),
    ("TLS", "trusts another CA", False),
    ("TLS", "no client certificate", True),
    ("mutual TLS", "plaintext", False),
    ("mutual TLS", "no client certificate", False),
    ("mutual TLS", "client certificate of another CA", False),
    ("mutual TLS", "client certificate", True),
]


@pytest.mark.parametrize("transport", ["grpc", "http"])
@pytest.mark.parametrize(("server", "client", "served"), CASES)
async def test_a_tls_port_answers_only_the_clients_it_should(
    servers: dict[str, Harness], certs: Certs, transport: str, server: str, client: str, served: bool
) -> None:
    nbo, tls = servers[server], _clients(certs)[client]
    if transport == "grpc":
        assert await _grpc_decide(nbo, tls) == ("OK" if served else "UNAVAILABLE")
    else:
        outcome = await _http_decide(nbo, tls)
        assert (outcome == "OK") == served, outcome


def test_nbo_serve_with_workers_on_mutual_tls_and_nbo_decide_over_it(
    redis_server: EmbeddedRedis, certs: Certs, tmp_path: Path
) -> None:
    _seed(redis_server.url, tmp_path)
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "NBO_TLS_CERT_FILE": str(certs.server_cert),
        "NBO_TLS_KEY_FILE": str(certs.server_key),
        "NBO_TLS_CLIENT_CA_FILE": str(certs.ca),
    }
    serve = [*NBO, "serve", "--workers", "2", "--port", "0", "--http-port", "0"]
    proc = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline() + proc.stdout.readline()
        match = re.search(r"serving on (\S+) with mutual TLS with 2 worker\(s\)", banner)
        assert match, banner
        assert re.search(r"HTTP/JSON on https://127\.0\.0\.1:\d+", banner), banner
        tls_flags = ["--tls-ca-file", str(certs.ca)]
        tls_flags += ["--tls-client-cert-file", str(certs.client_cert), "--tls-client-key-file", str(certs.client_key)]
        decide = [*NBO, "decide", "vip", "--target", match.group(1)]
        ok = subprocess.run(
            [*decide, *tls_flags], check=False, capture_output=True, text=True, timeout=30, cwd=tmp_path
        )
        assert ok.returncode == 0, ok.stderr
        assert "decision" in ok.stdout
        refused = subprocess.run(decide, check=False, capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert refused.returncode == 1
        assert refused.stderr.startswith("error: UNAVAILABLE"), refused.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


SETTINGS_ERRORS = [
    ({"tls_cert_file": "server.crt"}, "tls_cert_file and tls_key_file go together: set both or neither"),
    ({"tls_client_ca_file": "ca.crt"}, "tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file"),
    ({"tls_cert_file": "missing.crt", "tls_key_file": "server.key"}, "cannot read {dir}/missing.crt: No such file"),
    ({"tls_cert_file": "server.key", "tls_key_file": "server.key"}, "{dir}/server.key is not a PEM certificate"),
    ({"tls_cert_file": "server.crt", "tls_key_file": "ca.crt"}, "{dir}/ca.crt is not a PEM private key"),
    ({"tls_cert_file": "server.crt", "tls_key_file": "client.key"}, "tls_key_file {dir}/client.key is not the key"),
    ({"redis_tls_ca_file": "ca.crt"}, "redis_tls_ca_file is set but redis_url is not a rediss:// URL"),
]


@pytest.mark.parametrize(("files", "message"), SETTINGS_ERRORS)
def test_tls_settings_are_checked_at_start_up(certs: Certs, files: dict[str, str], message: str) -> None:
    folder = certs.ca.parent
    with pytest.raises(ValueError, match=re.escape(message.format(dir=folder))):
        Settings(**{name: folder / file for name, file in files.items()})
