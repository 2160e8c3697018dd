"""The plaintext health port (`health_port`) of a mutual-TLS server, as Kubernetes' `grpc:` probes
see it: no TLS, no client certificate, only grpc.health.v1. And `nbo serve` configured as
deploy/k8s/deployment.yaml configures it passes that Deployment's probes.

It answers the health service with the statuses of the gRPC port (SERVING while up, NOT_SERVING
once draining), and no other service: a Decide sent to it is UNIMPLEMENTED, so the port gives
nothing away that the mutual-TLS port guards.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.api import servicers as grpc_api
from server.api.tokens import format_line, new_token, token_digest
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.gen.nbo.v1 import decisioning_pb2_grpc as pb_grpc
from server.state.embedded_redis import EmbeddedRedis, free_port
from tests.certs import Certs
from tests.deploy_files import deployment_container, deployment_env
from tests.integration.harness import Clock, Harness
from tests.integration.test_cli import NBO

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(channel: grpc.aio.Channel, service: str) -> int:
    answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(answer.status)


async def test_health_port_answers_probes_without_tls(redis_url: str, certs: Certs) -> None:
    tls = {"tls_cert_file": certs.server_cert, "tls_key_file": certs.server_key, "tls_client_ca_file": certs.ca}
    nbo = Harness(redis_url, Clock(), health_port=0, **tls)
    await nbo.worker.start()
    port = nbo.worker.health_port
    assert port is not None and port not in (0, nbo.worker.port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert [await _status(channel, name) for name in ("", grpc_api.SERVICE_NAME)] == [SERVING, SERVING]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.DecisioningStub(channel).Decide(pb.DecideRequest(customer_id="c", channel=pb.WEB), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # draining: the first shutdown step turns every service NOT_SERVING, seen on this port
        await nbo.worker.health.enter_graceful_shutdown()
        assert await _status(channel, "") == NOT_SERVING
    await nbo.worker.stop(grace=0.5)


async def test_no_health_port_unless_set(redis_url: str) -> None:
    # redis_url, not the session's redis_server: a model an earlier test left would be compiled
    nbo = Harness(redis_url, Clock())
    await nbo.worker.start()
    try:
        assert nbo.worker.health_server is None and nbo.worker.health_port is None
    finally:
        await nbo.worker.stop(grace=0.5)


def test_nbo_serve_with_the_deployments_settings_passes_its_probes(
    redis_server: EmbeddedRedis, certs: Certs, tmp_path: Path
) -> None:
    """`nbo serve` with deploy/k8s/deployment.yaml's variables (files, Redis and ports made local)
    answers SERVING to each of its probes, called as the kubelet does: plaintext, no credentials."""
    health = free_port()
    local = {
        "NBO_PORT": "0",
        "NBO_HTTP_PORT": "0",
        "NBO_METRICS_PORT": "",  # off: worker ports next to a fixed one could be taken here
        "NBO_HEALTH_PORT": str(health),
        "NBO_TLS_CERT_FILE": str(certs.server_cert),
        "NBO_TLS_KEY_FILE": str(certs.server_key),
        "NBO_AUTH_TOKENS_FILE": str(tmp_path / "tokens"),
        "NBO_DATA_DIR": str(tmp_path),
        "NBO_MODEL_CACHE_DIR": str(tmp_path / "models"),
        "NBO_LOG_SPILL_DIR": str(tmp_path / "spill"),
        "NBO_REDIS_URL": redis_server.url,
        "NBO_DECISION_ID_SECRET": "a test secret of 32 characters!!",
    }
    (tmp_path / "tokens").write_text(format_line("crm", frozenset({"decide"}), token_digest(new_token())) + "\n")
    deployed = deployment_env()
    assert set(local) - {"NBO_REDIS_URL", "NBO_DECISION_ID_SECRET"} <= set(deployed)  # only these are replaced
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("NBO_") and k != "REDIS_URL"}
    env = {**inherited, **deployed, **local}
    proc = subprocess.Popen([*NBO, "serve"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert f"with TLS with {deployed['NBO_WORKERS']} worker(s)" in banner, banner
        probes = [deployment_container()[kind]["grpc"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")]
        with grpc.insecure_channel(f"127.0.0.1:{health}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            statuses = [check(health_pb2.HealthCheckRequest(service=p.get("service", "")), timeout=5) for p in probes]
        assert [s.status for s in statuses] == [SERVING] * 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
