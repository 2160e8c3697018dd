"""The plaintext health port (`health_port`) of a mutual-TLS server, as Kubernetes' `grpc:` probes
see it: no TLS, no client certificate, only grpc.health.v1.

It answers the health service with the statuses of the gRPC port (SERVING while up, NOT_SERVING
once draining), and no other service: a Decide sent to it is UNIMPLEMENTED, so the port gives
nothing away that the mutual-TLS port guards.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.api import servicers as grpc_api
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.gen.nbo.v1 import decisioning_pb2_grpc as pb_grpc
from server.state.embedded_redis import EmbeddedRedis
from tests.certs import Certs
from tests.integration.harness import Clock, Harness

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(channel: grpc.aio.Channel, service: str) -> int:
    answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(answer.status)


async def test_health_port_answers_probes_without_tls(redis_server: EmbeddedRedis, certs: Certs) -> None:
    tls = {"tls_cert_file": certs.server_cert, "tls_key_file": certs.server_key, "tls_client_ca_file": certs.ca}
    nbo = Harness(redis_server.url, Clock(), health_port=0, **tls)
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


async def test_no_health_port_unless_set(redis_server: EmbeddedRedis) -> None:
    nbo = Harness(redis_server.url, Clock())
    await nbo.worker.start()
    try:
        assert nbo.worker.health_server is None and nbo.worker.health_port is None
    finally:
        await nbo.worker.stop(grace=0.5)
